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

``encoder`` (:meth:`SamFamilySegmenter.set_encoder`, ``build(encoder=...)`` or ``$HISEG_ENCODER``)
picks what runs the image encoder, independently of the decoder:

- ``"auto"`` (default): ONNX Runtime float32 where the runtime is ``"onnx"`` and
  :attr:`SamFamilySegmenter.onnx_encoder` says it pays, else PyTorch;
- ``"onnx"``, ``"torch"``: that runtime, float32;
- ``"openvino"``: the same float32 ONNX export in OpenVINO (``pip install openvino``): about
  0.75-0.9 x the ONNX Runtime time for LiteMedSAM on one thread, with the same masks; opt-in
  only because OpenVINO is not a dependency of hiseg-sim;
- ``"onnx-int8"``: the ONNX export with its matrix products dynamically quantised to int8, in
  ONNX Runtime. Opt-in only: on phantom slices its masks moved too far from float32's (see
  :mod:`hiseg_sim.segmenters.perf`).

The last two give features that are not the float32 network's to float rounding, so their
embeddings carry their own cache namespace (:attr:`Segmenter.encoder_tag`).

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

__all__ = ["ENCODERS", "RUNTIMES", "RuntimeFallbackWarning", "SamFamilySegmenter", "reference_decode"]

RUNTIMES = ("auto", "onnx", "torch")
#: What may run the image encoder (see the module docstring).
ENCODERS = ("auto", "onnx", "torch", "openvino", "onnx-int8")
#: Cache namespace tags of the encoders whose features are not float32 ONNX Runtime / PyTorch's.
_ENCODER_TAGS = {"openvino": "ov", "onnx-int8": "int8"}

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
    requested_encoder: str = "auto"
    _other_encoder: Any = None

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
        self.set_encoder(os.environ.get("HISEG_ENCODER", "").strip() or "auto")

    def set_encoder(self, encoder: str) -> str:
        """Pick what runs the image encoder (one of :data:`ENCODERS`); returns :attr:`encoder`.

        ``"openvino"`` and ``"onnx-int8"`` change :attr:`namespace`: their embeddings are cached
        apart from the float32 ones.
        """
        if encoder not in ENCODERS:
            raise SegmenterError(f"unknown encoder {encoder!r}; one of {', '.join(ENCODERS)}")
        if encoder == "openvino":
            try:
                import openvino  # noqa: F401
            except ImportError:
                raise SegmenterError("encoder 'openvino' needs OpenVINO: pip install openvino") from None
        if encoder != self.requested_encoder:
            self._other_encoder = None
        self.requested_encoder = encoder
        self.encoder_tag = _ENCODER_TAGS.get(encoder, "")
        return self.encoder

    @property
    def encoder(self) -> str:
        """What runs the image encoder now: ``"torch"``, ``"onnx"``, ``"openvino"`` or ``"onnx-int8"``."""
        if self.requested_encoder != "auto":
            return self.requested_encoder
        return "onnx" if self.runtime == "onnx" and self.onnx_encoder else "torch"

    def encoder_onnx_path(self):
        """The float32 ONNX export of the image encoder (made and checked on first use)."""
        from hiseg_sim.segmenters import onnx_decoder

        return onnx_decoder.encoder_onnx(
            self.net.image_encoder, self.input_size, self.name, self.weights_sha256, self.onnx_dir
        )

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
        """``x (1, 3, S, S)`` → image embedding ``(1, C, h, w)``, on the runtime :attr:`encoder` names."""
        encoder = self.encoder
        if encoder in ("openvino", "onnx-int8"):
            # asked for by name: a failure is an error, not a silent fallback to other features
            if self._other_encoder is None:
                from hiseg_sim.segmenters import onnx_decoder

                path = self.encoder_onnx_path()
                if encoder == "openvino":
                    self._other_encoder = onnx_decoder.OvImageEncoder(path)
                else:
                    int8 = onnx_decoder.encoder_onnx_int8(path, self.name, self.weights_sha256, self.onnx_dir)
                    self._other_encoder = onnx_decoder.OrtImageEncoder(int8)
            return self._other_encoder(x)
        if encoder == "onnx":
            if self._ort_encoder is None:
                from hiseg_sim.segmenters import onnx_decoder

                try:
                    self._ort_encoder = onnx_decoder.OrtImageEncoder(self.encoder_onnx_path())
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
