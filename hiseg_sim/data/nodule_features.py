"""What touches a phantom's nodule, read from its anatomy label map: the features that make a
semantic error of perception possible (an attached vessel to take in, a chest wall to leak into).

A phantom (:func:`hiseg_sim.data.phantom.make_phantom`) records in ``meta["anatomy"]`` what each
voxel mostly holds (:data:`hiseg_sim.data.phantom.ANATOMY_CODES`: ``3`` a vessel attached to the
nodule, ``4`` chest wall, ``5`` bone). This module measures, on the nodule's outline (the ground
truth's surface voxels, top and bottom slices included), the share that borders each of them. Nothing here changes the phantom
or how it is rendered; it only reads the labels.

>>> import numpy as np
>>> gt = np.zeros((3, 9, 9), bool); gt[1, 3:6, 3:6] = True
>>> anat = np.where(gt, 1, 0).astype(np.uint8); anat[1, 4, 6:9] = 3
>>> f = contact_features(gt, anat)
>>> f["vessel_contact"] > 0, f["wall_contact"]
(True, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = ["ATTACHED_VESSEL", "WALL_CODES", "contact_features", "case_contact_features"]

#: ``meta["anatomy"]`` code of a vessel attached to the nodule.
ATTACHED_VESSEL = 3
#: ``meta["anatomy"]`` codes of the chest wall (soft tissue, bone).
WALL_CODES = (4, 5)
_CONN26 = np.ones((3, 3, 3), bool)


def contact_features(gt: np.ndarray, anatomy: np.ndarray) -> dict[str, float]:
    """Shares (0..1) of the nodule's outline voxels with a 26-neighbour of an attached vessel
    (``vessel_contact``) or of chest wall or bone (``wall_contact``).

    ``gt``: ``bool`` ``(Z, Y, X)`` nodule mask; ``anatomy``: the label map on the same grid. The
    outline is the mask minus its 6-connected erosion: the in-plane edge of every slice and the
    whole of its first and last slice (a vessel can meet the nodule from above).
    Both 0 for an empty mask."""
    gt = np.asarray(gt, bool)
    if gt.ndim == 2:
        gt = gt[None]
    anatomy = np.asarray(anatomy)
    if anatomy.ndim == 2:
        anatomy = anatomy[None]
    if anatomy.shape != gt.shape:
        raise ValueError(f"anatomy has shape {anatomy.shape}, the mask {gt.shape}: they must share one grid")
    if not gt.any():
        return {"vessel_contact": 0.0, "wall_contact": 0.0}
    idx = np.argwhere(gt)
    lo, hi = np.maximum(idx.min(0) - 1, 0), np.minimum(idx.max(0) + 2, gt.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    m, lab = gt[box], anatomy[box]
    outline = m & ~ndimage.binary_erosion(m, ndimage.generate_binary_structure(3, 1), border_value=0)
    n = float(outline.sum())
    out = {}
    for key, codes in (("vessel_contact", (ATTACHED_VESSEL,)), ("wall_contact", WALL_CODES)):
        near = ndimage.binary_dilation(np.isin(lab, codes), _CONN26)
        out[key] = float((outline & near).sum()) / n
    return out


def case_contact_features(case: Any) -> dict[str, float] | None:
    """:func:`contact_features` of a case (a :class:`~hiseg_sim.data.case.Case`, or anything with
    ``gt`` and ``meta``) whose ``meta`` has an ``anatomy`` map; ``None`` without one (a user's
    scan: nothing is known of what touches the nodule)."""
    meta = getattr(case, "meta", None)
    gt = getattr(case, "gt", None)
    if not isinstance(meta, Mapping) or gt is None or meta.get("anatomy") is None:
        return None
    return contact_features(gt, meta["anatomy"])
