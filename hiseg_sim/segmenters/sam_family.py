"""The path shared by the SAM family: one :class:`PromptDecoder`, run in PyTorch or in ONNX Runtime.

``runtime`` (per segmenter, see :func:`hiseg_sim.segmenters.build`):

- ``"torch"``: :class:`~hiseg_sim.segmenters.prompt_decoder.PromptDecoder` and the image encoder
  in PyTorch;
- ``"onnx"``: their ONNX exports (cached on disk, checked against PyTorch when made) in ONNX
  Runtime; the image encoder only where :attr:`SamFamilySegmenter.onnx_encoder` says it pays;
- ``"auto"`` (default): ``"onnx"`` whenever ``onnxruntime`` imports and the export passes its check.
  ONNX Runtime was the faster of the two in every run of
  :func:`hiseg_sim.segmenters.perf.decoder_bench` on two shared AMD EPYC cores (34-39 ms
  against 59-82 ms for a LiteMedSAM decode; figures in ``perf.py``), so ``auto`` does not time
  both at start-up.

Without ``onnxruntime``, or if an export fails its check, the segmenter falls back to PyTorch with
one :class:`RuntimeFallbackWarning` per reason and process.

The embedding cache key leaves the runtime out, so both runtimes share cached embeddings. The ONNX
image encoder's features differ from PyTorch's by float rounding only (about 3e-6 for LiteMedSAM;
an export is refused above 1e-3), far below what moves a mask pixel.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch

from hiseg_sim.segmenters.base import Segmenter, SegmenterError
from hiseg_sim.segmenters.prompt_decoder import INPUT_NAMES, PromptDecoder, pack_prompt

__all__ = ["RUNTIMES", "RuntimeFallbackWarning", "SamFamilySegmenter", "reference_decode"]

RUNTIMES = ("auto", "onnx", "torch")

_warned: set[str] = set()


class RuntimeFallbackWarning(UserWarning):
    """The ONNX runtime was asked for (or ``auto``) but cannot be used; PyTorch decodes instead."""


def _fallback(reason: str) -> None:
    if reason not in _warned:
        _warned.add(reason)
        warnings.warn(
            f"hiseg-sim: running PyTorch instead of ONNX Runtime: {reason}", RuntimeFallbackWarning, stacklevel=4
        )


def _np(t: torch.Tensor | None) -> np.ndarray | None:
    """A batch-of-one tensor from :meth:`Segmenter.decode` → its single item as numpy."""
    return None if t is None else t[0].numpy()


def reference_decode(net: Any, features, coords, labels, box, mask_in) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's own ``prompt_encoder`` + ``mask_decoder`` calls, as before :class:`PromptDecoder`.

    Same arguments and result as :meth:`Segmenter._decode_tensor`; kept as the reference the tests
    and the benchmark compare both runtimes with.
    """
    points = (coords, labels) if coords is not None else None
    sparse, dense = net.prompt_encoder(points=points, boxes=box, masks=mask_in)
    return net.mask_decoder(
        image_embeddings=features,
        image_pe=net.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=False,
    )


class SamFamilySegmenter(Segmenter):
    """A segmenter whose ``self.net`` has a SAM ``image_encoder``, ``prompt_encoder`` and ``mask_decoder``.

    Subclasses load ``self.net`` and ``self.weights_sha256``, call :meth:`_setup_decoder`, and run
    their encoder through :meth:`_run_image_encoder`.

    Attributes:
        runtime: the runtime in use, ``"torch"`` or ``"onnx"``.
        requested_runtime: what was asked for (``"auto"``, ``"onnx"`` or ``"torch"``).
        onnx_path: the exported decoder, or ``None`` if none was loaded.
        onnx_encoder: whether the ``"onnx"`` runtime also runs the image encoder in ONNX Runtime
            (exported at the first cache miss). Set per model from a measurement: see the subclass.
    """

    runtime: str = "torch"
    onnx_path = None
    onnx_encoder: bool = False
    #: the loaded SAM-family network, read by attribute (``image_encoder``, ``prompt_encoder``, ...)
    net: Any
    _ort_decoder: Any = None
    _ort_encoder: Any = None

    def _setup_decoder(self, runtime: str = "auto", onnx_dir: str | os.PathLike | None = None) -> None:
        if runtime not in RUNTIMES:
            raise SegmenterError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
        self.prompt_decoder = PromptDecoder(self.net.prompt_encoder, self.net.mask_decoder).eval()
        self.requested_runtime = runtime
        self.onnx_dir = onnx_dir
        self._ort_decoder = self._ort_encoder = None
        self.runtime, self.onnx_path = "torch", None
        if runtime != "torch":
            self.set_runtime("onnx")

    def set_runtime(self, runtime: str) -> str:
        """Switch to ``"onnx"`` or ``"torch"`` (``"auto"`` = ``"onnx"`` if usable); returns the runtime in use.

        The ONNX session is made once (export or cached file) and kept, so switching back is free.
        """
        if runtime not in RUNTIMES:
            raise SegmenterError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
        if runtime != "torch" and self._ort_decoder is None:
            from hiseg_sim.segmenters import onnx_decoder, onnx_export

            reason = onnx_export.onnxruntime_missing()
            if reason is None:
                try:
                    path = onnx_decoder.decoder_onnx(self.prompt_decoder, self.name, self.weights_sha256, self.onnx_dir)
                    self._ort_decoder, self.onnx_path = onnx_decoder.OrtPromptDecoder(path), path
                except Exception as exc:  # noqa: BLE001 - any export/session failure falls back the same way
                    reason = f"the ONNX export of the decoder failed ({type(exc).__name__}: {str(exc)[:200]})"
            if reason is not None:
                _fallback(reason)
        self.runtime = "onnx" if runtime != "torch" and self._ort_decoder is not None else "torch"
        return self.runtime

    def _run_image_encoder(self, x: torch.Tensor) -> torch.Tensor:
        """``x (1, 3, S, S)`` → image embedding ``(1, C, h, w)``, in ONNX Runtime when the runtime says so."""
        if self.runtime == "onnx" and self.onnx_encoder:
            if self._ort_encoder is None:
                from hiseg_sim.segmenters import onnx_decoder

                try:
                    path = onnx_decoder.encoder_onnx(
                        self.net.image_encoder, self.input_size, self.name, self.weights_sha256, self.onnx_dir
                    )
                    self._ort_encoder = onnx_decoder.OrtImageEncoder(path)
                except Exception as exc:  # noqa: BLE001
                    _fallback(
                        f"the ONNX export of the {self.name} image encoder failed "
                        f"({type(exc).__name__}: {str(exc)[:200]})"
                    )
                    self._ort_encoder = False
            if self._ort_encoder:
                return self._ort_encoder(x)
        return self.net.image_encoder(x)

    def _decode_tensor(self, features, coords, labels, box, mask_in):
        prompt = pack_prompt(_np(coords), _np(labels), _np(box), _np(mask_in), self.prompt_decoder.mask_size)
        if self.runtime == "onnx":
            low, iou = self._ort_decoder(features.numpy(), prompt)
            return torch.from_numpy(low), torch.from_numpy(iou)
        return self.prompt_decoder(features, *(torch.from_numpy(prompt[k]) for k in INPUT_NAMES[1:]))
