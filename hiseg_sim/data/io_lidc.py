"""LIDC-IDRI nodules on the user's own DICOM copy of the scans.

The LIDC annotation database (:class:`hiseg_sim.data.lidc.LidcDatabase`) knows every reader's
outline but not the images; the user's TCIA download has the images. This module pairs them by
``SeriesInstanceUID`` and cuts each nodule's crop out of the real volume.

Grid matching: the database's crop grid indexes z by ``ScanInfo.z_positions`` (slice z in mm,
ascending) and y, x by image row and column. The DICOM series is read with slices ascending along
the slice normal (for LIDC's axial series the normal is ``+z`` and ``meta["z_positions"]`` are the
``ImagePositionPatient`` z values). Each crop slice is matched to the DICOM slice whose position is
within ``z_tol_mm`` of the database's, never by index alone, so a series with an extra or a
missing slice cannot shift a mask onto the wrong image.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from hiseg_sim.data.case import Case, CaseError
from hiseg_sim.data.io_dicom import iter_series_dirs, read_dicom_series

__all__ = ["iter_lidc_dicom", "match_z"]


def match_z(z_wanted: np.ndarray, z_have: np.ndarray, tol_mm: float) -> np.ndarray:
    """For each position in ``z_wanted`` (mm; NaN = none) the index of the nearest entry of the
    ascending ``z_have`` within ``tol_mm``, else -1.

    >>> match_z(np.array([1.0, 2.5, 9.0]), np.array([0.0, 1.02, 2.5]), 0.1).tolist()
    [1, 2, -1]
    """
    z_wanted = np.asarray(z_wanted, float)
    z_have = np.asarray(z_have, float)
    out = np.full(z_wanted.shape, -1, dtype=int)
    if z_have.size == 0:
        return out
    hi = np.clip(np.searchsorted(z_have, z_wanted), 0, len(z_have) - 1)
    lo = np.clip(hi - 1, 0, len(z_have) - 1)
    best = np.where(np.abs(z_have[lo] - z_wanted) <= np.abs(z_have[hi] - z_wanted), lo, hi)
    ok = np.abs(z_have[best] - z_wanted) <= tol_mm  # NaN compares False
    out[ok] = best[ok]
    return out


def _kept_run(keep: np.ndarray, marked: np.ndarray, axis: str, where: str) -> slice:
    """The contiguous run of ``keep`` that must hold every ``marked`` entry, else CaseError."""
    if (marked & ~keep).any():
        raise CaseError(f"{where}: the series does not cover the nodule along {axis}")
    idx = np.flatnonzero(keep)
    if idx.size == 0 or idx[-1] - idx[0] + 1 != idx.size:
        raise CaseError(f"{where}: the series covers the nodule's crop only with gaps along {axis}")
    return slice(int(idx[0]), int(idx[-1]) + 1)


def _cut_nodule(
    nodule: Any, vol: np.ndarray, spacing: tuple[float, float, float], meta: dict, z_tol_mm: float, where: str
) -> Case:
    masks = tuple(np.asarray(m, bool) for m in nodule.reader_masks)
    cons = np.asarray(nodule.consensus, bool)
    shape = cons.shape
    marked = np.zeros(shape, bool)
    for m in masks + (cons,):
        marked |= m
    oz, oy, ox = (int(v) for v in nodule.origin_zyx)

    db_z = np.asarray(nodule.scan.z_positions, float)
    j = oz + np.arange(shape[0])
    inside = (j >= 0) & (j < len(db_z))
    z_wanted = np.where(inside, db_z[np.clip(j, 0, len(db_z) - 1)], np.nan)
    dz_idx = match_z(z_wanted, np.asarray(meta["z_positions"], float), z_tol_mm)
    found = dz_idx >= 0
    if (marked.any(axis=(1, 2)) & ~found).any():
        miss = z_wanted[marked.any(axis=(1, 2)) & ~found]
        zs = meta["z_positions"]
        raise CaseError(
            f"{where}: the DICOM series has no slice within {z_tol_mm} mm of nodule z = "
            f"{np.round(miss, 2).tolist()[:5]} mm (series: {len(zs)} slices, z {zs[0]:.2f} .. {zs[-1]:.2f} mm)"
        )
    sz = _kept_run(found, marked.any(axis=(1, 2)), "z", where)
    if np.any(np.diff(dz_idx[sz]) != 1):
        raise CaseError(f"{where}: the nodule's slices are not consecutive in the DICOM series (extra slices between?)")
    rows_ok = (oy + np.arange(shape[1]) >= 0) & (oy + np.arange(shape[1]) < vol.shape[1])
    cols_ok = (ox + np.arange(shape[2]) >= 0) & (ox + np.arange(shape[2]) < vol.shape[2])
    sy = _kept_run(rows_ok, marked.any(axis=(0, 2)), "y (rows)", where)
    sx = _kept_run(cols_ok, marked.any(axis=(0, 1)), "x (columns)", where)

    z0 = int(dz_idx[sz][0])
    y0, x0 = oy + sy.start, ox + sx.start
    box = (slice(z0, z0 + sz.stop - sz.start), slice(y0, y0 + sy.stop - sy.start), slice(x0, x0 + sx.stop - sx.start))
    crop = (sz, sy, sx)
    scan = nodule.scan
    nid = str(nodule.nodule_id)
    pid = str(getattr(scan, "patient_id", "") or meta["patient_id"])
    info = {
        "source": "lidc_dicom",
        "patient_id": pid,
        "series_uid": meta["series_uid"],
        "study_uid": meta["study_uid"],
        "nodule_id": nid,
        "n_readers": int(nodule.n_readers),
        "ratings": dict(nodule.ratings),
        "diameter_mm": float(nodule.diameter_mm),
        "crop_origin_zyx": tuple(int(s.start) for s in box),
        "uncropped_shape_zyx": tuple(int(n) for n in vol.shape),
        "z_positions": list(meta["z_positions"][box[0]]),
        "dicom_dir": str(Path(meta["files"][0]).parent),
    }
    return Case(
        case_id=nid if nid.startswith(pid) else f"{pid}/{nid}",
        volume_hu=vol[box].copy(),  # not a view that keeps the whole series alive
        spacing_zyx=spacing,
        gt=cons[crop],
        reader_masks=tuple(m[crop] for m in masks),
        meta=info,
    )


def iter_lidc_dicom(
    root: str | os.PathLike,
    db: Any = None,
    margin_vox: tuple[int, int, int] = (2, 16, 16),
    *,
    z_tol_mm: float = 0.1,
    allow_irregular: bool = False,
) -> Iterator[Case]:
    """Yield one :class:`Case` per LIDC nodule found in the user's DICOM folders under ``root``.

    Every folder under ``root`` is visited (sorted); its ``SeriesInstanceUID`` is read from one
    file's header (:func:`~hiseg_sim.data.io_dicom.iter_series_dirs`) and looked up with
    ``db.scan_by_series_uid``. Series the database does not know (scouts, other collections) are
    skipped; a warning says so if none matched. For a known series the volume is read
    (:func:`~hiseg_sim.data.io_dicom.read_dicom_series`) and for each of ``db.nodules(scan,
    margin_vox=margin_vox)`` a Case is cut on the nodule's crop grid, its slices matched to the
    DICOM slices by z position (``z_tol_mm``; see the module docstring):

    - ``volume_hu`` ``(Z, Y, X)`` from the DICOM, ``spacing_zyx`` as measured from the DICOM;
    - ``gt`` = the readers' consensus, ``reader_masks`` = each reader's mask;
    - ``case_id`` = the nodule id (``"LIDC-IDRI-0078/n1"``); ``meta``: ``nodule_id``,
      ``ratings``, ``n_readers``, ``diameter_mm``, ``series_uid``, ``crop_origin_zyx`` (in the
      DICOM volume's grid), ``z_positions`` of the crop's slices.

    Crop-margin slices or rows the series lacks are trimmed; a nodule slice the series lacks is a
    CaseError, as is an in-plane spacing that disagrees with the database. A nodule whose
    consensus is empty (readers who do not overlap) is skipped with a warning.

    Args:
        db: an object with ``scan_by_series_uid(uid) -> ScanInfo | None`` and
            ``nodules(scan, margin_vox=...) -> list[Nodule]``; default a new
            :class:`hiseg_sim.data.lidc.LidcDatabase`.
    """
    if db is None:
        from hiseg_sim.data.lidc import LidcDatabase

        db = LidcDatabase()
    seen: dict[str, Path] = {}
    n_series = 0
    for folder, uid in iter_series_dirs(root):
        n_series += 1
        scan = db.scan_by_series_uid(uid)
        if scan is None:
            continue
        if uid in seen:
            warnings.warn(f"series {uid} appears in both {seen[uid]} and {folder}; the second is skipped", stacklevel=2)
            continue
        seen[uid] = folder
        vol, spacing, meta = read_dicom_series(folder, series_uid=uid, allow_irregular=allow_irregular)
        where = f"{getattr(scan, 'patient_id', '')} series {uid} in {folder}"
        nodules = db.nodules(scan, margin_vox=margin_vox)
        if nodules:
            ps = np.asarray(nodules[0].spacing_zyx[1:], float)
            if not np.allclose(ps, spacing[1:], rtol=1e-3):
                raise CaseError(
                    f"{where}: PixelSpacing (y, x) = {spacing[1:]} mm but the LIDC database has {tuple(ps)} mm"
                )
            if abs(nodules[0].spacing_zyx[0] - spacing[0]) > z_tol_mm:
                warnings.warn(
                    f"{where}: slice spacing {spacing[0]:.3f} mm from the DICOM, {nodules[0].spacing_zyx[0]:.3f} mm "
                    "in the database; the DICOM's is used",
                    stacklevel=2,
                )
        for nodule in nodules:
            if not np.asarray(nodule.consensus).any():
                warnings.warn(f"{nodule.nodule_id}: the readers' consensus is empty; skipped", stacklevel=2)
                continue
            yield _cut_nodule(nodule, vol, spacing, meta, z_tol_mm, f"{nodule.nodule_id} ({where})")
    if n_series == 0:
        raise CaseError(f"no DICOM files found under {root}")
    if not seen:
        warnings.warn(f"none of the {n_series} DICOM series under {root} is in the LIDC database", stacklevel=2)
