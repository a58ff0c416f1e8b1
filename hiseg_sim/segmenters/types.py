"""The values every segmenter takes and gives: prompts, embeddings, predictions, their errors.

Coordinates: every point is ``(x, y)`` and every box ``(x0, y0, x1, y1)`` in pixels of the image
that was encoded (the viewport), as Segment Anything takes them. Kept apart from
:mod:`hiseg_sim.segmenters.base` so the embedding cache (which stores :class:`Embedding`) and the
segmenter (which uses the cache) both import it and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "LOW_RES",
    "LUNG_WINDOW",
    "Embedding",
    "Prediction",
    "Prompt",
    "PromptError",
    "SegmenterError",
    "window_to_unit",
]

#: (level, width) in HU: the usual lung window (width 1500, level -600; -500 to -750 are in use).
LUNG_WINDOW: tuple[float, float] = (-600.0, 1500.0)

#: Side of the low-resolution mask logits of every SAM-family decoder.
LOW_RES = 256


class SegmenterError(RuntimeError):
    """A segmenter cannot be built or used: missing or corrupt checkpoint, misuse."""


class PromptError(ValueError):
    """A prompt that cannot be given to the model (box outside the image, bad shapes)."""


def window_to_unit(image_hu: np.ndarray, window: tuple[float, float] = LUNG_WINDOW) -> np.ndarray:
    """Map HU to ``[0, 1]`` through a display window ``(level, width)``; float32, same shape.

    >>> window_to_unit(np.array([[-1350.0, -600.0, 150.0]]))
    array([[0. , 0.5, 1. ]], dtype=float32)
    """
    level, width = float(window[0]), float(window[1])
    if not width > 0:
        raise PromptError(f"window width must be > 0 HU; got {width}")
    lo = level - width / 2.0
    return np.clip((np.asarray(image_hu, dtype=np.float32) - lo) / width, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class Prompt:
    """What a person or robot gives the model for one decode.

    Attributes:
        points: ``(N, 2)`` float ``(x, y)`` viewport pixels, or ``None``.
        labels: ``(N,)`` int, 1 = positive (inside), 0 = negative (outside); required with points.
        box: ``(4,)`` float ``(x0, y0, x1, y1)`` viewport pixels, or ``None``.
        mask_logits: ``(256, 256)`` float32 low-resolution logits of a previous
            :class:`Prediction` (its ``low_res_logits``) fed back as a mask prompt, or ``None``.
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_logits: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.points is not None:
            pts = (
                np.asarray(self.points, dtype=np.float32).reshape(-1, 2)
                if np.size(self.points)
                else np.zeros((0, 2), np.float32)
            )
            if self.labels is None:
                raise PromptError("points need labels: 1 for positive (inside), 0 for negative (outside)")
            lab = np.asarray(self.labels, dtype=np.int64).reshape(-1)
            if lab.shape[0] != pts.shape[0]:
                raise PromptError(f"{pts.shape[0]} point(s) but {lab.shape[0]} label(s)")
            if not np.isin(lab, (0, 1)).all():
                raise PromptError(f"labels must be 0 or 1; got {np.unique(lab).tolist()}")
            empty = pts.shape[0] == 0
            object.__setattr__(self, "points", None if empty else pts)
            object.__setattr__(self, "labels", None if empty else lab)
        elif self.labels is not None and np.size(self.labels):
            raise PromptError("labels given without points")
        else:
            object.__setattr__(self, "labels", None)
        if self.box is not None:
            box = np.asarray(self.box, dtype=np.float32).reshape(-1)
            if box.shape != (4,):
                raise PromptError(f"box must be 4 numbers (x0, y0, x1, y1); got shape {box.shape}")
            if not np.isfinite(box).all():
                raise PromptError(f"box has non-finite coordinates: {box.tolist()}")
            object.__setattr__(self, "box", box)
        if self.mask_logits is not None:
            m = np.asarray(self.mask_logits, dtype=np.float32)
            if m.shape != (LOW_RES, LOW_RES):
                m = m.reshape(m.shape[-2:]) if m.size == LOW_RES * LOW_RES else m
            if m.shape != (LOW_RES, LOW_RES):
                raise PromptError(f"mask_logits must be ({LOW_RES}, {LOW_RES}) low-res logits; got shape {m.shape}")
            object.__setattr__(self, "mask_logits", m)

    @property
    def is_empty(self) -> bool:
        return self.points is None and self.box is None and self.mask_logits is None


@dataclass(frozen=True)
class Embedding:
    """The image encoder's output for one windowed slice.

    Attributes:
        key: content hash of (model, weights, window, image): the cache key.
        features: ``(C, h, w)`` float32 image embedding (``(256, 64, 64)`` for the SAM family).
        image_hw: ``(H, W)`` of the encoded image (the viewport).
        resized_hw: ``(h, w)`` of that image after resizing its longest side to the input size.
    """

    key: str
    features: np.ndarray
    image_hw: tuple[int, int]
    resized_hw: tuple[int, int]


@dataclass(frozen=True)
class Prediction:
    """The decoder's answer to one prompt.

    Attributes:
        mask: ``bool`` ``(H, W)`` in viewport pixels.
        logits: ``float32`` ``(H, W)``; ``mask == logits > 0``.
        low_res_logits: ``float32`` ``(256, 256)``: feed back as ``Prompt.mask_logits``.
        iou_pred: the model's own estimate of the mask's IoU.
    """

    mask: np.ndarray
    logits: np.ndarray
    low_res_logits: np.ndarray
    iou_pred: float
