"""The two ONNX parts of a SAM-family segmenter: the prompt decoder and the image encoder.

- :func:`decoder_onnx` / :class:`OrtPromptDecoder`: :class:`PromptDecoder` with a dynamic number of
  prompt points, checked at export on a box, a click and a box + clicks + mask prompt
  (max |logit difference| ≤ :data:`DECODER_TOLERANCE`).
- :func:`encoder_onnx` / :class:`OrtImageEncoder`: the image encoder on the model's padded input
  ``(1, 3, S, S)``, checked at export on a random image (max |feature difference| ≤
  :data:`ENCODER_TOLERANCE`). The windowing, normalisation and padding stay in PyTorch.
- :func:`encoder_onnx_int8`: that export with its MatMuls dynamically quantised to int8
  (``onnxruntime.quantization.quantize_dynamic``), checked against the float32 export within
  :data:`INT8_TOLERANCE`; :class:`OvImageEncoder`: the float32 export in OpenVINO. Both opt-in
  (:mod:`hiseg_sim.segmenters.sam_family`).

Files and their cache: :mod:`hiseg_sim.segmenters.onnx_export`.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import numpy as np
import torch

from hiseg_sim.segmenters import onnx_export
from hiseg_sim.segmenters import prompt_decoder as _pd_module
from hiseg_sim.segmenters.onnx_export import DEFAULT_OPT_LEVEL, ExportMismatch
from hiseg_sim.segmenters.prompt_decoder import INPUT_NAMES, OUTPUT_NAMES, PromptDecoder, pack_prompt
from hiseg_sim.segmenters.threads import get_threads

__all__ = [
    "DECODER_TOLERANCE",
    "ENCODER_TOLERANCE",
    "INT8_TOLERANCE",
    "OrtImageEncoder",
    "OvImageEncoder",
    "OrtPromptDecoder",
    "decoder_onnx",
    "encoder_onnx",
    "encoder_onnx_int8",
]

#: Max |logit| difference between a decoder export and its PyTorch module on the check prompts.
DECODER_TOLERANCE = 1e-3
#: Max |feature| difference between an encoder export and its PyTorch module on a random image.
ENCODER_TOLERANCE = 1e-3
#: Max |feature| difference between the int8 encoder and the float32 export on a random image: a
#: check that the quantised graph is the network (LiteMedSAM: about 0.3 on phantom slices), not a
#: bound on how far its masks move.
INT8_TOLERANCE = 2.0


# ---- prompt decoder -------------------------------------------------------------------------
def _decoder_example(module: PromptDecoder) -> tuple[torch.Tensor, ...]:
    pe = module.prompt_encoder
    s = float(pe.input_image_size[1])
    emb = torch.randn(1, pe.embed_dim, *pe.image_embedding_size, generator=torch.Generator().manual_seed(0))
    p = pack_prompt(
        np.array([[0.4, 0.5]], np.float32) * s,
        np.array([1]),
        np.array([0.3, 0.3, 0.6, 0.7], np.float32) * s,
        None,
        module.mask_size,
    )
    return (emb,) + tuple(torch.from_numpy(p[k]) for k in INPUT_NAMES[1:])


def _check_prompts(module: PromptDecoder) -> list[dict[str, np.ndarray]]:
    s = float(module.prompt_encoder.input_image_size[1])
    mask = np.random.default_rng(0).normal(0, 4, (module.mask_size, module.mask_size)).astype(np.float32)
    box = np.array([0.3, 0.3, 0.6, 0.7], np.float32) * s
    pts, lab = np.array([[0.45, 0.5], [0.2, 0.8]], np.float32) * s, np.array([1, 0])
    size = module.mask_size
    return [
        pack_prompt(None, None, box, None, size),
        pack_prompt(pts[:1], lab[:1], None, None, size),
        pack_prompt(pts, lab, box, mask, size),
    ]


def check_decoder(path: Path, module: PromptDecoder) -> float:
    """Max |difference| of logits and IoU between the export at ``path`` and ``module``."""
    sess = onnx_export.session(path, shared=False)
    emb = _decoder_example(module)[0]
    worst = 0.0
    with torch.inference_mode():
        for p in _check_prompts(module):
            ref, ref_iou = module(emb, *(torch.from_numpy(p[k]) for k in INPUT_NAMES[1:]))
            low, iou = sess.run(list(OUTPUT_NAMES), {"image_embeddings": emb.numpy(), **p})
            worst = max(worst, float(np.abs(low - ref.numpy()).max()), float(np.abs(iou - ref_iou.numpy()).max()))
    if not worst <= DECODER_TOLERANCE:
        raise ExportMismatch(f"ONNX decoder {path.name} differs from PyTorch by {worst:.3g} (> {DECODER_TOLERANCE})")
    return worst


def decoder_onnx(
    module: PromptDecoder, name: str, weights_sha256: str, onnx_dir: str | os.PathLike | None = None
) -> Path:
    """The cached ONNX export of ``module`` (network ``name``, weights ``weights_sha256``)."""
    key = onnx_export.export_key(weights_sha256, [_pd_module.__file__])
    return onnx_export.cached_export(
        f"{name}-decoder",
        key,
        make=lambda: onnx_export.export_bytes(
            module,
            _decoder_example(module),
            INPUT_NAMES,
            OUTPUT_NAMES,
            {"point_coords": {1: "num_points"}, "point_labels": {1: "num_points"}},
        ),
        check=lambda p: check_decoder(p, module),
        onnx_dir=onnx_dir,
        meta={"network": name, "part": "decoder", "weights_sha256": weights_sha256},
    )


class _OrtRunner:
    """An ONNX Runtime session of one exported file that follows the process's thread setting.

    With ``threads=None`` the session is remade when :func:`~hiseg_sim.segmenters.threads.get_threads`
    changes (``set_threads`` called after the segmenter was built) and in a forked child (a pool
    worker), so a worker's thread rule applies to segmenters built before the fork.
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, opt_level: str = DEFAULT_OPT_LEVEL) -> None:
        self.path, self.fixed_threads, self.opt_level = Path(path), threads, opt_level
        self._made_for: tuple | None = None
        self._session = None

    @property
    def session(self):
        want = (os.getpid(), self.fixed_threads or get_threads())
        if want != self._made_for:
            self._session = onnx_export.session(self.path, want[1], self.opt_level)
            self._made_for = want
        return self._session

    def __getstate__(self) -> dict:  # a session does not pickle; the worker reopens the file
        return {**self.__dict__, "_session": None, "_made_for": None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


class OrtPromptDecoder(_OrtRunner):
    """ONNX Runtime session of an exported :class:`PromptDecoder`."""

    def __call__(self, image_embeddings: np.ndarray, prompt: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``image_embeddings (1, C, h, w)`` and :func:`pack_prompt`'s dict → ``(logits (1, 1, 256, 256), iou (1, 1))``."""
        low, iou = self.session.run(list(OUTPUT_NAMES), {"image_embeddings": image_embeddings, **prompt})
        return low, iou

    def __repr__(self) -> str:
        return f"OrtPromptDecoder({str(self.path)!r})"


# ---- image encoder --------------------------------------------------------------------------
def check_encoder(path: Path, encoder: torch.nn.Module, input_size: int) -> float:
    """Max |feature difference| between the encoder export at ``path`` and ``encoder`` on a random image."""
    x = torch.rand(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = encoder(x).numpy()
    out = onnx_export.session(path, shared=False).run(None, {"image": x.numpy()})[0]
    worst = float(np.abs(out - ref).max())
    if not worst <= ENCODER_TOLERANCE:
        raise ExportMismatch(f"ONNX encoder {path.name} differs from PyTorch by {worst:.3g} (> {ENCODER_TOLERANCE})")
    return worst


def encoder_onnx(
    encoder: torch.nn.Module, input_size: int, name: str, weights_sha256: str, onnx_dir: str | os.PathLike | None = None
) -> Path:
    """The cached ONNX export of ``encoder`` on ``(1, 3, input_size, input_size)`` inputs."""
    key = onnx_export.export_key(weights_sha256, [p for p in [inspect.getsourcefile(type(encoder))] if p])
    example = (torch.rand(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0)),)
    return onnx_export.cached_export(
        f"{name}-encoder",
        key,
        make=lambda: onnx_export.export_bytes(encoder, example, ["image"], ["image_embeddings"]),
        check=lambda p: check_encoder(p, encoder, input_size),
        onnx_dir=onnx_dir,
        meta={"network": name, "part": "encoder", "weights_sha256": weights_sha256, "input_size": input_size},
    )


class OrtImageEncoder(_OrtRunner):
    """ONNX Runtime session of an exported image encoder: ``(1, 3, S, S)`` → ``(1, C, h, w)``."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(image.numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {"image": x})[0])


def _check_int8(path: Path, fp32_path: Path, input_size: int) -> float:
    x = torch.rand(1, 3, input_size, input_size, generator=torch.Generator().manual_seed(0)).numpy()
    ref = onnx_export.session(fp32_path, shared=False).run(None, {"image": x})[0]
    out = onnx_export.session(path, shared=False).run(None, {"image": x})[0]
    worst = float(np.abs(out - ref).max())
    if not worst <= INT8_TOLERANCE:
        raise ExportMismatch(f"int8 encoder {path.name} differs from float32 by {worst:.3g} (> {INT8_TOLERANCE})")
    return worst


def _quantize_bytes(fp32_path: Path) -> bytes:
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="hiseg-int8-") as tmp:
        out = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(fp32_path), str(out), op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8)
        return out.read_bytes()


def encoder_onnx_int8(
    fp32_path: str | os.PathLike, name: str, weights_sha256: str, onnx_dir: str | os.PathLike | None = None
) -> Path:
    """The cached int8 (dynamic, MatMul weights) quantisation of the float32 encoder at ``fp32_path``."""
    import onnxruntime

    fp32_path = Path(fp32_path)
    key = onnx_export.export_key(f"{weights_sha256}:onnxruntime-{onnxruntime.__version__}", [fp32_path])
    meta = json.loads(fp32_path.with_suffix(".json").read_text()) if fp32_path.with_suffix(".json").exists() else {}
    size = int(meta.get("input_size", 256))
    return onnx_export.cached_export(
        f"{name}-encoder-int8",
        key,
        make=lambda: _quantize_bytes(fp32_path),
        check=lambda p: _check_int8(p, fp32_path, size),
        onnx_dir=onnx_dir,
        meta={"network": name, "part": "encoder", "quantisation": "dynamic int8, MatMul", "input_size": size},
    )


class OvImageEncoder:
    """An exported image encoder compiled by OpenVINO for the CPU, float32, following the process's
    thread setting (recompiled after :func:`~hiseg_sim.segmenters.set_threads` or a fork)."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        self.path, self.fixed_threads = Path(path), threads
        self._made_for: tuple | None = None
        self._request = None

    @property
    def request(self):
        want = (os.getpid(), self.fixed_threads or get_threads())
        if want != self._made_for:
            import openvino as ov

            compiled = ov.Core().compile_model(
                str(self.path),
                "CPU",
                {
                    "INFERENCE_NUM_THREADS": want[1],
                    "PERFORMANCE_HINT": "LATENCY",
                    "NUM_STREAMS": 1,
                    "INFERENCE_PRECISION_HINT": "f32",
                },
            )
            self._request, self._made_for = compiled.create_infer_request(), want
        return self._request

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(image.numpy(), dtype=np.float32)
        return torch.from_numpy(np.array(self.request.infer({0: x})[0], copy=True))

    def __getstate__(self) -> dict:  # a compiled model does not pickle; the worker compiles again
        return {**self.__dict__, "_request": None, "_made_for": None}

    def __repr__(self) -> str:
        return f"OvImageEncoder({str(self.path)!r})"
