"""One interface for every promptable segmenter: encode a slice once, decode prompts many times.

Coordinates: every point is ``(x, y)`` and every box ``(x0, y0, x1, y1)`` in pixels of the image
that was encoded (the viewport), as Segment Anything takes them. The model's own input grid
(256² for LiteMedSAM, 1024² for SAM) never leaks out of this module.

Pipeline of :meth:`Segmenter.encode`:
HU ``(H, W)`` → window (level, width) → ``[0, 1]`` → resize longest side to the model's input
size → model normalisation → pad bottom/right → image encoder → :class:`Embedding` (cached).

Pipeline of :meth:`Segmenter.decode`:
prompt in viewport pixels → model grid → prompt encoder + mask decoder → low-resolution logits
``(256, 256)`` → upsample, crop the padding, resize to ``(H, W)`` → mask = logits > 0.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from hiseg_sim.segmenters.cache import EmbeddingCache
from hiseg_sim.segmenters.types import (
    LOW_RES,
    LUNG_WINDOW,
    Embedding,
    Prediction,
    Prompt,
    PromptError,
    SegmenterError,
    window_to_unit,
)

__all__ = [
    "LOW_RES",
    "LUNG_WINDOW",
    "Embedding",
    "Prediction",
    "Prompt",
    "PromptError",
    "Segmenter",
    "SegmenterError",
    "window_to_unit",
]


@dataclass
class _Counters:
    """Work done by one segmenter object; the seconds let a study set its wall time beside the
    compute it needed (:func:`hiseg_sim.experiments.compare.compare_executors`)."""

    encoder_calls: int = 0
    decoder_calls: int = 0
    cache_hits: int = 0
    encoder_s: float = 0.0
    decoder_s: float = 0.0

    def snapshot(self) -> dict:
        return {
            "encoder_calls": self.encoder_calls,
            "decoder_calls": self.decoder_calls,
            "cache_hits": self.cache_hits,
            "encoder_s": self.encoder_s,
            "decoder_s": self.decoder_s,
        }


class Segmenter(ABC):
    """Base class: input transforms, caching and validation around a model's torch core.

    Subclasses set :attr:`name`, :attr:`input_size` and :attr:`weights_sha256` and implement
    :meth:`_encode_tensor` and :meth:`_decode_tensor`.
    """

    name: str = "segmenter"
    input_size: int = 1024
    weights_sha256: str = ""
    #: What runs the prompt decoder: ``"torch"`` or ``"onnx"`` (see :mod:`hiseg_sim.segmenters.sam_family`).
    runtime: str = "torch"

    def __init__(self, cache: EmbeddingCache | None = None) -> None:
        self.cache = cache if cache is not None else EmbeddingCache()
        self.counters = _Counters()

    # ---- properties -------------------------------------------------------------------------
    @property
    def encoder_calls(self) -> int:
        """How many times the image encoder actually ran (cache misses)."""
        return self.counters.encoder_calls

    #: What runs the image encoder when its features are not those of the float32 network (an
    #: int8 model, another runtime); part of :attr:`namespace`, so such embeddings never mix with
    #: the float32 ones in a shared cache. Empty for the float32 network in PyTorch or ONNX Runtime.
    encoder_tag: str = ""

    @property
    def namespace(self) -> str:
        """What, besides the image and window, an embedding depends on."""
        base = f"{self.name}:{self.weights_sha256[:16]}"
        return f"{base}:{self.encoder_tag}" if self.encoder_tag else base

    # ---- geometry ---------------------------------------------------------------------------
    def resized_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = image_hw
        scale = self.input_size / max(h, w)
        return int(h * scale + 0.5), int(w * scale + 0.5)

    @staticmethod
    def _scale_xy(emb: Embedding) -> np.ndarray:
        (h, w), (rh, rw) = emb.image_hw, emb.resized_hw
        return np.array([rw / w, rh / h], dtype=np.float32)

    # ---- encode ----------------------------------------------------------------------------
    def embedding_key(self, image_hu: np.ndarray, window: tuple[float, float]) -> str:
        img = np.ascontiguousarray(image_hu, dtype=np.float32)
        h = hashlib.sha256()
        h.update(self.namespace.encode())
        h.update(np.asarray(window, dtype=np.float64).tobytes())
        h.update(np.asarray(img.shape, dtype=np.int64).tobytes())
        h.update(img.tobytes())
        return h.hexdigest()

    def encode(self, image_hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> Embedding:
        """Encode one slice ``(H, W)`` in HU, or return its cached embedding.

        Raises:
            PromptError: the image is not 2-D, is empty or holds NaN/inf.
        """
        img = np.asarray(image_hu)
        if img.ndim != 2 or min(img.shape) < 2:
            raise PromptError(f"encode takes one 2-D slice (H, W) of at least 2x2 pixels; got shape {img.shape}")
        if not np.isfinite(img).all():
            raise PromptError("the slice to encode holds NaN or inf values")
        key = self.embedding_key(img, window)
        cached = self.cache.get(key)
        if cached is not None:
            self.counters.cache_hits += 1
            return cached
        unit = window_to_unit(img, window)
        resized = self.resized_hw(unit.shape)
        x = torch.from_numpy(unit)[None, None]
        x = F.interpolate(x, size=resized, mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)
        t0 = time.perf_counter()
        with torch.inference_mode():
            feats = self._encode_tensor(x, resized)
        self.counters.encoder_s += time.perf_counter() - t0
        self.counters.encoder_calls += 1
        emb = Embedding(
            key=key,
            features=np.ascontiguousarray(feats, dtype=np.float32),
            image_hw=(int(img.shape[0]), int(img.shape[1])),
            resized_hw=resized,
        )
        self.cache.put(emb)
        return emb

    # ---- decode ----------------------------------------------------------------------------
    def check_prompt(self, emb: Embedding, prompt: Prompt) -> None:
        """Raise :class:`PromptError` if ``prompt`` cannot be decoded on ``emb``'s image."""
        if prompt.is_empty:
            raise PromptError("empty prompt: give at least a point, a box or a mask")
        h, w = emb.image_hw
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box.tolist()
            if not (x1 > x0 and y1 > y0):
                raise PromptError(
                    f"box {prompt.box.tolist()} has zero or negative area; expected x0 < x1 and y0 < y1 (XYXY)"
                )
            if x1 < 0 or y1 < 0 or x0 > w - 1 or y0 > h - 1:
                raise PromptError(
                    f"box {prompt.box.tolist()} lies outside the {w}x{h} image (x in [0, {w - 1}], y in [0, {h - 1}])"
                )
        if prompt.points is not None:
            p = prompt.points
            out = (p[:, 0] < 0) | (p[:, 0] > w - 1) | (p[:, 1] < 0) | (p[:, 1] > h - 1)
            if out.any():
                raise PromptError(
                    f"point(s) {p[out].tolist()} outside the {w}x{h} image (x in [0, {w - 1}], y in [0, {h - 1}])"
                )

    def decode(self, emb: Embedding, prompt: Prompt) -> Prediction:
        """Decode one prompt on an encoded slice; see the module docstring for the pipeline.

        A box that pokes partly out of the image is clipped to it; one wholly outside raises
        :class:`PromptError`, as do points outside the image and zero-area boxes.
        """
        if not isinstance(emb, Embedding):
            raise SegmenterError("decode needs an Embedding from .encode(...) of this segmenter")
        self.check_prompt(emb, prompt)
        t0 = time.perf_counter()
        h, w = emb.image_hw
        s = self._scale_xy(emb)
        coords = labels = box = mask_in = None
        if prompt.points is not None and prompt.labels is not None:
            coords = torch.from_numpy(prompt.points * s)[None]
            labels = torch.from_numpy(prompt.labels.astype(np.int64))[None]
        if prompt.box is not None:
            b = prompt.box.copy()
            b[[0, 2]] = np.clip(b[[0, 2]], 0, w - 1)
            b[[1, 3]] = np.clip(b[[1, 3]], 0, h - 1)
            box = torch.from_numpy(b.reshape(2, 2) * s).reshape(1, 4)
        if prompt.mask_logits is not None:
            mask_in = torch.from_numpy(prompt.mask_logits)[None, None]
        feats = torch.from_numpy(emb.features)[None]
        with torch.inference_mode():
            low, iou = self._decode_tensor(feats, coords, labels, box, mask_in)
            low = low.reshape(1, 1, LOW_RES, LOW_RES).float()
            if self.input_size == LOW_RES:  # a same-size bilinear resample is the identity: skip it
                up = low
            else:
                up = F.interpolate(low, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
            rh, rw = emb.resized_hw
            up = up[..., :rh, :rw]
            full = F.interpolate(up, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        self.counters.decoder_calls += 1
        self.counters.decoder_s += time.perf_counter() - t0
        logits = full.numpy().astype(np.float32, copy=False)
        iou_pred = float(iou.reshape(-1)[0])
        if not (np.isfinite(iou_pred) and np.isfinite(logits).all()):
            # NaN logits would threshold to an empty mask and look like a prompt that failed
            raise SegmenterError(f"{self.name} returned non-finite logits or IoU for this prompt; check its weights")
        return Prediction(mask=logits > 0, logits=logits, low_res_logits=low[0, 0].numpy().copy(), iou_pred=iou_pred)

    # ---- subclass hooks --------------------------------------------------------------------
    @abstractmethod
    def _encode_tensor(self, unit_image: torch.Tensor, resized_hw: tuple[int, int]) -> np.ndarray:
        """``unit_image``: ``(1, 1, h, w)`` in ``[0, 1]``; return features ``(C, h', w')``."""

    @abstractmethod
    def _decode_tensor(self, features, coords, labels, box, mask_in) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-grid prompts → (low-res logits ``(1, 1, 256, 256)``, IoU prediction ``(1, 1)``)."""

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, input_size={self.input_size}, runtime={self.runtime!r}, "
            f"cache={self.cache!r})"
        )
