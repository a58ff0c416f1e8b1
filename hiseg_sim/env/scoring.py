"""Scoring from overlap counts: Dice and IoU updated per slice, never recomputed over a volume.

The environment keeps, for every slice of its slab, the predicted voxel count and its overlap with
the ground truth. A prompt changes one slice, so one ``(H, W)`` count refreshes the 3-D score:

    Dice = 2 sum(inter) / (sum(pred) + |gt|),   IoU = sum(inter) / (sum(pred) + |gt| - sum(inter))

where ``|gt|`` counts the ground truth of the whole case (slices and pixels outside the viewport
count as missed). The empty-mask policy is that of :mod:`hiseg_sim.metrics`: two empty masks
score 1.0, exactly one empty scores 0.0. ``tests/test_env_pure.py`` and ``tests/test_env.py`` check these against
:func:`hiseg_sim.metrics.dice` and :func:`hiseg_sim.metrics.iou` on full arrays.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dice_from_counts", "iou_from_counts", "overlap_counts", "per_slice_dice"]


def overlap_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """``(|pred ∩ gt|, |pred|)`` of two ``bool`` arrays of one shape."""
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred))


def dice_from_counts(inter: int | float, pred: int | float, gt: int | float) -> float:
    """``2 inter / (pred + gt)``; 1.0 when both are empty.

    >>> dice_from_counts(2, 3, 3)
    0.6666666666666666
    """
    denom = pred + gt
    return 1.0 if denom == 0 else 2.0 * inter / denom


def iou_from_counts(inter: int | float, pred: int | float, gt: int | float) -> float:
    """``inter / (pred + gt - inter)``; 1.0 when both are empty."""
    union = pred + gt - inter
    return 1.0 if union == 0 else inter / union


def per_slice_dice(
    inter: np.ndarray, pred: np.ndarray, gt: np.ndarray, length: int | None = None, fill: float = -1.0
) -> np.ndarray:
    """Dice of each slice from count arrays (same length); padded with ``fill`` up to ``length``.

    The padding is -1 rather than NaN so that two equal infos compare equal.

    >>> per_slice_dice(np.array([1, 0]), np.array([1, 0]), np.array([1, 0]), 3)
    array([ 1.,  1., -1.])
    """
    inter = np.asarray(inter, dtype=np.float64)
    denom = np.asarray(pred, dtype=np.float64) + np.asarray(gt, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(denom == 0, 1.0, 2.0 * inter / np.where(denom == 0, 1.0, denom))
    if length is not None and length > d.shape[0]:
        d = np.concatenate([d, np.full(length - d.shape[0], fill)])
    return d
