"""The Case: one CT volume with the nodule it is about, and input validation.

Every loader (LIDC phantoms, DICOM, NIfTI, MSD) produces a :class:`Case`. Its constructor checks
what the rest of the toolkit relies on, so a bad volume fails here, at the reader, with a message
that names the problem, and not three layers down inside a model.

Conventions:

- ``case_id``: a non-empty ``str``.
- ``volume_hu``: ``float32`` Hounsfield units, shape ``(Z, Y, X)``, every axis >= 1, every value
  finite (and within ``float32`` range).
- ``spacing_zyx``: voxel size in mm as ``(z, y, x)``; every entry finite, in
  ``[SPACING_MM_MIN, SPACING_MM_MAX]`` = [0.001, 1000] mm (micro-CT to whole-body; outside it a
  detection error in mm turns into an overflowing pixel count).
- ``gt`` and each of ``reader_masks``: ``bool`` (or 0/1 integers or floats), the same shape as
  ``volume_hu``; ``gt`` non-empty; ``reader_masks`` a sequence of such masks.
- ``meta``: a ``dict``.

Every violation raises :class:`CaseError` (a ``ValueError``) naming the case and the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "SPACING_MM_MAX",
    "SPACING_MM_MIN",
    "Case",
    "CaseError",
    "validate_mask",
    "validate_spacing",
    "validate_volume",
]

#: Bounds of every voxel size entry, mm.
SPACING_MM_MIN = 1e-3
SPACING_MM_MAX = 1e3

_FLOAT32_MAX = float(np.finfo(np.float32).max)


class CaseError(ValueError):
    """A volume, mask or spacing that cannot make a valid :class:`Case`."""


def _as_array(value: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(value)
    except (TypeError, ValueError) as exc:  # ragged nesting, unconvertible objects
        raise CaseError(f"{name} is not an array: {str(exc).splitlines()[0][:120]}") from exc


def validate_volume(volume: Any, name: str = "volume") -> np.ndarray:
    """Return ``volume`` as a C-contiguous ``float32`` ``(Z, Y, X)`` array or raise :class:`CaseError`.

    Rejects anything that is not 3-D, has an empty axis, or holds NaN or infinity.

    >>> validate_volume(np.zeros((2, 3, 4))).dtype
    dtype('float32')
    """
    arr = _as_array(volume, name)
    if arr.ndim != 3:
        raise CaseError(f"{name} must be 3-D (z, y, x); got {arr.ndim} dimension(s) with shape {arr.shape}")
    if min(arr.shape) == 0:
        raise CaseError(f"{name} has an empty axis: shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise CaseError(f"{name} must hold real numbers (Hounsfield units); got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating) and arr.dtype.itemsize > 4:
        big = np.isfinite(arr) & (np.abs(arr) > _FLOAT32_MAX)
        if big.any():
            first = tuple(int(i) for i in np.argwhere(big)[0])
            raise CaseError(
                f"{name} holds {int(big.sum())} value(s) beyond the float32 range (|HU| > 3.4e38), "
                f"the first at (z, y, x) = {first}; these are not Hounsfield units"
            )
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise CaseError(
            f"{name} holds {int(bad.sum())} non-finite value(s) (NaN or inf), the first at (z, y, x) = {first}; "
            "fill or crop them before building a Case"
        )
    return arr


def validate_spacing(spacing: Any, ndim: int = 3, name: str = "spacing_zyx") -> tuple[float, ...]:
    """Return ``spacing`` as a tuple of ``ndim`` positive finite floats (mm) or raise :class:`CaseError`."""
    what = f"{name} must be a sequence of {ndim} numbers in mm; got {spacing!r}"
    if isinstance(spacing, (str, bytes)) or not hasattr(spacing, "__iter__"):
        raise CaseError(what)
    items = list(spacing)
    if any(isinstance(s, (str, bytes, bool, np.bool_)) for s in items):  # float() would take "1.0" or True
        raise CaseError(what)
    try:
        sp = tuple(float(s) for s in items)
    except (TypeError, ValueError, OverflowError) as exc:
        raise CaseError(what) from exc
    if len(sp) != ndim:
        raise CaseError(f"{name} must have {ndim} entries; got {len(sp)}: {sp}")
    if not all(np.isfinite(s) and SPACING_MM_MIN <= s <= SPACING_MM_MAX for s in sp):
        raise CaseError(
            f"{name} entries must be finite and in [{SPACING_MM_MIN:g}, {SPACING_MM_MAX:g}] mm (so > 0); got {sp}"
        )
    return sp


def validate_mask(mask: Any, shape: tuple[int, ...], name: str = "mask") -> np.ndarray:
    """Return ``mask`` as a ``bool`` array of ``shape`` or raise :class:`CaseError`.

    Integer or float masks are accepted when they hold only 0 and 1.
    """
    arr = _as_array(mask, name)
    if arr.shape != tuple(shape):
        raise CaseError(f"{name} has shape {arr.shape} but the volume it labels has shape {tuple(shape)}")
    if arr.dtype != np.bool_ and not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise CaseError(f"{name} must be binary (bool, or 0/1 integers or floats); got dtype {arr.dtype}")
    if arr.dtype != np.bool_:
        vals = np.unique(arr)
        if not np.all(np.isin(vals, (0, 1))):
            raise CaseError(f"{name} must be binary (0/1 or bool); found values {vals[:6].tolist()}")
        arr = arr.astype(bool)
    return np.ascontiguousarray(arr)


@dataclass(frozen=True, eq=False)
class Case:
    """One CT volume, its ground truth and, where known, each reader's mask.

    Attributes:
        case_id: unique name, e.g. ``"LIDC-IDRI-0078/n1"``.
        volume_hu: ``float32`` HU, shape ``(Z, Y, X)``.
        spacing_zyx: voxel size in mm, ``(z, y, x)``.
        gt: ``bool`` ``(Z, Y, X)``: the reference mask the env scores against (for LIDC: the
            consensus of the readers, voxels marked by at least half of them).
        reader_masks: each reader's ``bool`` ``(Z, Y, X)`` mask (empty for non-LIDC data).
        meta: free-form facts: ratings (``texture``, ``subtlety`` …), ``diameter_mm``, source,
            patient id, split. Never used to score.
    """

    case_id: str
    volume_hu: np.ndarray
    spacing_zyx: tuple[float, float, float]
    gt: np.ndarray
    reader_masks: tuple[np.ndarray, ...] = ()
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.case_id, str) or not self.case_id.strip():
            raise CaseError(f"case_id must be a non-empty str; got {type(self.case_id).__name__} {self.case_id!r}")
        vol = validate_volume(self.volume_hu, f"{self.case_id}: volume_hu")
        object.__setattr__(self, "volume_hu", vol)
        object.__setattr__(self, "spacing_zyx", validate_spacing(self.spacing_zyx, 3, f"{self.case_id}: spacing_zyx"))
        gt = validate_mask(self.gt, vol.shape, f"{self.case_id}: gt")
        if not gt.any():
            raise CaseError(f"{self.case_id}: gt is empty; a Case needs a non-empty reference mask to score against")
        object.__setattr__(self, "gt", gt)
        rm = self.reader_masks
        if (
            isinstance(rm, (str, bytes, dict))
            or not hasattr(rm, "__iter__")
            or (isinstance(rm, np.ndarray) and rm.ndim != 4)
        ):
            what = f"an array of shape {rm.shape}" if isinstance(rm, np.ndarray) else type(rm).__name__
            raise CaseError(
                f"{self.case_id}: reader_masks must be a sequence of (Z, Y, X) masks, e.g. (mask,); got {what}"
            )
        readers = tuple(validate_mask(m, vol.shape, f"{self.case_id}: reader_masks[{i}]") for i, m in enumerate(rm))
        object.__setattr__(self, "reader_masks", readers)
        if not isinstance(self.meta, dict):
            raise CaseError(f"{self.case_id}: meta must be a dict; got {type(self.meta).__name__}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.volume_hu.shape)  # type: ignore[return-value]

    @property
    def gt_slices(self) -> np.ndarray:
        """Indices ``z`` of the slices where ``gt`` is non-empty, ascending."""
        return np.flatnonzero(self.gt.any(axis=(1, 2)))

    @property
    def key_slice(self) -> int:
        """The slice with the largest ground-truth area (ties: the one nearest the centre of mass).

        This is the documented rule the 2-D environment uses to pick its slice.
        """
        areas = self.gt.sum(axis=(1, 2))
        best = np.flatnonzero(areas == areas.max())
        zc = float(np.argwhere(self.gt)[:, 0].mean())
        return int(best[np.argmin(np.abs(best - zc))])

    @property
    def diameter_mm(self) -> float:
        """Largest in-plane extent of ``gt`` on its key slice, in mm (LIDC's size convention)."""
        if "diameter_mm" in self.meta:
            return float(self.meta["diameter_mm"])
        from hiseg_sim.metrics import max_diameter_mm

        return max_diameter_mm(self.gt[self.key_slice], self.spacing_zyx[1:])

    def __repr__(self) -> str:
        return (
            f"Case({self.case_id!r}, shape={self.shape}, spacing_zyx={tuple(round(s, 3) for s in self.spacing_zyx)}, "
            f"gt_voxels={int(self.gt.sum())}, readers={len(self.reader_masks)})"
        )
