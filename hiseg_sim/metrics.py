"""Overlap and boundary metrics for 2-D and 3-D masks, with spacing in mm.

All functions take ``bool`` (or 0/1) arrays of one shape, 2-D ``(Y, X)`` or 3-D ``(Z, Y, X)``,
and, where distances matter, ``spacing`` in mm in the same axis order. Distances use scipy's
exact Euclidean distance transform on the bounding box of the two masks, so they cost what the
nodule costs, not what the volume costs.

Policy for empty masks (the same in every function; tested):

=====================  ======  ======  ======  ======
case                   dice    iou     hd95    nsd
=====================  ======  ======  ======  ======
both empty             1.0     1.0     0.0     1.0
exactly one empty      0.0     0.0     nan     0.0
=====================  ======  ======  ======  ======

Two empty masks agree perfectly (there was nothing to find and nothing was found); a distance
to an empty surface is undefined, so HD95 is NaN and the analysis layer counts such cases
separately instead of averaging an infinity.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = [
    "dice",
    "iou",
    "hd95",
    "nsd",
    "surface_distances",
    "volume_error",
    "max_diameter_mm",
    "all_metrics",
    "mask_pair",
]


def mask_pair(a, b, names: tuple[str, str] = ("masks", "")) -> tuple[np.ndarray, np.ndarray]:
    """Two masks of one shape, 2-D or 3-D, as ``bool`` arrays; ``ValueError`` naming the problem otherwise."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        what = f"{names[0]} and {names[1]}" if names[1] else names[0]
        raise ValueError(f"{what} differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"masks must be 2-D (y, x) or 3-D (z, y, x); got {a.ndim}-D")
    return a.astype(bool, copy=False), b.astype(bool, copy=False)


def _spacing(spacing, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(s > 0 for s in sp):
        raise ValueError(f"spacing must be {ndim} positive numbers (mm, same axis order as the mask); got {spacing}")
    return sp


def dice(a, b) -> float:
    """Dice similarity ``2|A∩B| / (|A|+|B|)``; 1.0 when both are empty.

    >>> dice(np.array([[1, 1, 0]]), np.array([[1, 0, 0]]))
    0.6666666666666666
    """
    a, b = mask_pair(a, b)
    sa, sb = int(a.sum()), int(b.sum())
    if sa + sb == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / (sa + sb)


def iou(a, b) -> float:
    """Intersection over union; 1.0 when both are empty."""
    a, b = mask_pair(a, b)
    union = int(np.logical_or(a, b).sum())
    if union == 0:
        return 1.0
    return int(np.logical_and(a, b).sum()) / union


def _surface(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` with at least one face-neighbour outside it (the image border counts as outside)."""
    if not mask.any():
        return mask.copy()
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~eroded


def surface_distances(a, b, spacing=None) -> tuple[np.ndarray, np.ndarray]:
    """Distances in mm from each surface voxel of ``a`` to the surface of ``b``, and back.

    Returns ``(d_ab, d_ba)``: 1-D float arrays, one entry per surface voxel. Both masks must be
    non-empty.
    """
    a, b = mask_pair(a, b)
    if not a.any() or not b.any():
        raise ValueError("surface distances need two non-empty masks")
    sp = _spacing(spacing, a.ndim)
    idx = np.argwhere(a | b)
    lo = np.maximum(idx.min(0) - 1, 0)
    hi = np.minimum(idx.max(0) + 2, a.shape)
    box = tuple(slice(s, e) for s, e in zip(lo, hi))
    sa, sb = _surface(a[box]), _surface(b[box])
    # distance_transform_edt measures distance to the nearest zero: put the zeros on each surface
    dt_b = ndimage.distance_transform_edt(~sb, sampling=sp)
    dt_a = ndimage.distance_transform_edt(~sa, sampling=sp)
    return dt_b[sa], dt_a[sb]


def hd95(a, b, spacing=None) -> float:
    """95th-percentile Hausdorff distance in mm: the larger of the two directed 95th percentiles
    (MONAI's ``compute_hausdorff_distance(percentile=95)`` convention). See the module's empty-mask policy."""
    a, b = mask_pair(a, b)
    ea, eb = not a.any(), not b.any()
    if ea and eb:
        return 0.0
    if ea or eb:
        return float("nan")
    d_ab, d_ba = surface_distances(a, b, spacing)
    return float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))


def nsd(a, b, tolerance_mm: float = 1.0, spacing=None) -> float:
    """Normalised surface Dice at ``tolerance_mm`` (Nikolov et al. 2021), counted over surface voxels:
    ``(#{x∈∂A: d(x,∂B)≤τ} + #{y∈∂B: d(y,∂A)≤τ}) / (|∂A| + |∂B|)``."""
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be >= 0; got {tolerance_mm}")
    a, b = mask_pair(a, b)
    ea, eb = not a.any(), not b.any()
    if ea and eb:
        return 1.0
    if ea or eb:
        return 0.0
    d_ab, d_ba = surface_distances(a, b, spacing)
    return float(((d_ab <= tolerance_mm).sum() + (d_ba <= tolerance_mm).sum()) / (d_ab.size + d_ba.size))


def volume_error(pred, ref, spacing=None) -> dict[str, float]:
    """Volume (2-D: area) of ``pred`` minus that of ``ref``: ``{"abs_mm3": .., "rel": ..}``;
    ``rel`` is NaN when ``ref`` is empty."""
    p, r = mask_pair(pred, ref)
    unit = float(np.prod(_spacing(spacing, p.ndim)))
    vp, vr = p.sum() * unit, r.sum() * unit
    return {"abs_mm3": float(vp - vr), "rel": float((vp - vr) / vr) if vr > 0 else float("nan")}


def max_diameter_mm(mask2d, spacing_yx=(1.0, 1.0)) -> float:
    """Largest distance in mm between two pixel centres of a 2-D mask (max Feret diameter), plus one
    pixel so a single pixel measures its own size; 0.0 for an empty mask."""
    m = np.asarray(mask2d, dtype=bool)
    if m.ndim != 2:
        raise ValueError(f"max_diameter_mm takes a 2-D (y, x) mask; got shape {m.shape}")
    if not m.any():
        return 0.0
    sp = np.asarray(_spacing(spacing_yx, 2))
    edge = _surface(m)
    pts = np.argwhere(edge) * sp
    if len(pts) > 400:  # the diameter is attained on the convex hull
        from scipy.spatial import ConvexHull, QhullError

        try:
            pts = pts[ConvexHull(pts).vertices]
        except QhullError:
            pass
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max()
    return float(d + sp.mean())


def all_metrics(pred, ref, spacing=None, tolerance_mm: float = 1.0) -> dict[str, float]:
    """Dice, IoU, HD95, NSD@``tolerance_mm`` and volume error in one dict (keys as the functions)."""
    out = {
        "dice": dice(pred, ref),
        "iou": iou(pred, ref),
        "hd95": hd95(pred, ref, spacing),
        "nsd": nsd(pred, ref, tolerance_mm, spacing),
    }
    ve = volume_error(pred, ref, spacing)
    out["volume_error_mm3"], out["volume_error_rel"] = ve["abs_mm3"], ve["rel"]
    return out
