"""The official Segment Anything models (ViT-B/L/H) from a checkpoint the user supplies.

Nothing is downloaded. The checkpoint is looked for at the path given, else in
``$HISEG_SAM_CHECKPOINT_DIR`` under Meta's released file name; a missing file is a
:class:`~hiseg_sim.segmenters.base.SegmenterError` that says where to put it. Weights are loaded with
``torch.load(weights_only=True)`` into the architecture of the ``segment-anything`` package, after
checking that none is NaN or infinite (:mod:`~hiseg_sim.segmenters.checks`).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hiseg_sim.segmenters.base import SegmenterError
from hiseg_sim.segmenters.cache import EmbeddingCache
from hiseg_sim.segmenters.checks import check_finite_weights
from hiseg_sim.segmenters.litemedsam import sha256_file
from hiseg_sim.segmenters.sam_family import SamFamilySegmenter

__all__ = ["SAM", "SAM_CHECKPOINT_NAMES", "resolve_sam_checkpoint"]

#: Meta's released checkpoint file names, by model type.
SAM_CHECKPOINT_NAMES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}


def resolve_sam_checkpoint(model_type: str, checkpoint: str | os.PathLike | None) -> Path:
    """Where the ``model_type`` checkpoint is, or a :class:`SegmenterError` that says where to put it."""
    if model_type not in SAM_CHECKPOINT_NAMES:
        raise SegmenterError(f"unknown SAM model type {model_type!r}; one of {sorted(SAM_CHECKPOINT_NAMES)}")
    fname = SAM_CHECKPOINT_NAMES[model_type]
    candidates = []
    if checkpoint is not None:
        candidates.append(Path(checkpoint))
    elif os.environ.get("HISEG_SAM_CHECKPOINT_DIR"):
        candidates.append(Path(os.environ["HISEG_SAM_CHECKPOINT_DIR"]) / fname)
    for c in candidates:
        if c.is_file():
            return c
    where = f" (looked at {', '.join(str(c) for c in candidates)})" if candidates else ""
    raise SegmenterError(
        f"no checkpoint for sam_{model_type}{where}. hiseg-sim never downloads weights: get {fname} from the "
        f"segment-anything release yourself and pass its path (checkpoint=... in Python, --checkpoint on the "
        f"command line) or put it in the directory named by $HISEG_SAM_CHECKPOINT_DIR"
    )


@lru_cache(maxsize=2)
def _load_sam(model_type: str, path: str):
    from hiseg_sim.segmenters._compat import import_segment_anything

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise SegmenterError(
            f"cannot read SAM checkpoint {path} as PyTorch weights (corrupt or not a .pth): {exc}"
        ) from exc
    check_finite_weights(state, path, f"sam_{model_type} checkpoint")
    sam = import_segment_anything().sam_model_registry[model_type](checkpoint=None)
    try:
        sam.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SegmenterError(f"{path} does not hold sam_{model_type} weights: {str(exc)[:300]}") from exc
    sam.eval()
    return sam, sha256_file(path)


class SAM(SamFamilySegmenter):
    """An official SAM model (``vit_b``, ``vit_l`` or ``vit_h``); input 1024², ImageNet normalisation."""

    input_size = 1024
    #: The ViT encoders stay in PyTorch: ViT-H's weights (2.5 GB) exceed the 2 GB limit of a
    #: single-file ONNX export, and no ViT encoder was timed against ONNX Runtime here.
    onnx_encoder = False

    def __init__(
        self,
        model_type: str = "vit_b",
        checkpoint: str | os.PathLike | None = None,
        cache: EmbeddingCache | None = None,
        runtime: str = "auto",
        onnx_dir: str | os.PathLike | None = None,
    ) -> None:
        super().__init__(cache)
        self.name = f"sam_{model_type}"
        self.checkpoint = resolve_sam_checkpoint(model_type, checkpoint)
        self.net, self.weights_sha256 = _load_sam(model_type, str(self.checkpoint))
        self._setup_decoder(runtime, onnx_dir)

    def _encode_tensor(self, unit_image: torch.Tensor, resized_hw: tuple[int, int]) -> np.ndarray:
        x = unit_image.repeat(1, 3, 1, 1) * 255.0
        x = (x - self.net.pixel_mean[None]) / self.net.pixel_std[None]
        h, w = resized_hw
        x = F.pad(x, (0, self.input_size - w, 0, self.input_size - h))
        return self._run_image_encoder(x)[0].numpy()
