"""Per-slice state of an episode, the bad-action codes, and the propagation box: small and pure.

A slice's state is a stack of immutable :class:`SliceState` entries: a prompt pushes one, undo
pops one, so undo restores exactly what was there before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["INVALID_CODES", "ResetNeeded", "SliceState", "mask_box"]

#: Codes of ``info["invalid_action"]`` ("" when the action ran exactly as given).
#: "executed" codes still ran (after the stated fix); "no-op" codes changed nothing but time.
INVALID_CODES = {
    "edge_point": "executed: the click lies on the viewport's border pixels",
    "reversed_box": "executed: corners given right-to-left or bottom-to-top, sorted into XYXY",
    "zero_area_box": "no-op: the box is less than one pixel wide or high (the drag did not move)",
    "nothing_to_undo": "no-op: no prompt on this slice to take back",
    "nothing_to_accept": "no-op: no prompt given in the episode (or all undone): nothing to accept",
    "no_slice_there": "no-op: next/previous/propagate past the first or last slice of the slab",
    "nothing_to_propagate": "no-op: the slice in view holds no (or an empty) mask",
    "prompt_rejected": "no-op: the segmenter raised PromptError on the prompt",
}


class ResetNeeded(RuntimeError):
    """``step`` called before ``reset`` or after the episode ended."""


@dataclass(frozen=True, eq=False)
class SliceState:
    """The prompts on one slice and the mask they produced (immutable; a stack entry).

    Attributes:
        points: ``(x, y, label)`` clicks, label 1 positive / 0 negative, viewport pixels.
        box: ``(x0, y0, x1, y1)`` or ``None``.
        mask: ``bool`` ``(H, W)``.
        low_res_logits: ``float32`` ``(256, 256)`` (fed back as a mask prompt).
        iou_pred: the model's predicted IoU.
        inter, pred: overlap with the ground truth and mask size, pixels.
        source: ``"point"``, ``"box"`` or ``"propagate"``.
    """

    points: tuple
    box: tuple | None
    mask: np.ndarray
    low_res_logits: np.ndarray
    iou_pred: float
    inter: int
    pred: int
    source: str


def mask_box(mask: np.ndarray, margin: int, size: int) -> tuple[float, float, float, float]:
    """Bounding box ``XYXY`` of a non-empty mask, grown by ``margin`` px and clipped; at least 1 px wide."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    x0, x1 = max(0, xs[0] - margin), min(size - 1, xs[-1] + margin)
    y0, y1 = max(0, ys[0] - margin), min(size - 1, ys[-1] + margin)
    if x1 <= x0:
        x0, x1 = (x0 - 1, x1) if x0 > 0 else (x0, x1 + 1)
    if y1 <= y0:
        y0, y1 = (y0 - 1, y1) if y0 > 0 else (y0, y1 + 1)
    return float(x0), float(y0), float(x1), float(y1)
