"""Read one CT series from DICOM files into a ``float32`` HU volume ``(Z, Y, X)``.

Geometry, as the DICOM standard defines it (patient coordinates are LPS, in mm):

- ``ImageOrientationPatient`` = ``(r, c)``: ``r`` is the direction of increasing column index
  (along a row, our ``x``), ``c`` the direction of increasing row index (our ``y``).
- The slice normal is ``n = r × c``, flipped if needed so that its largest component is positive
  (for an axial series ``n = (0, 0, 1)``, pointing to the head). Slices are sorted by the
  projection ``n · ImagePositionPatient`` ascending; that projection is ``meta["z_positions"]``
  and, for an axial series, equals the patient ``z`` of each slice (the value LIDC uses).
- ``PixelSpacing`` = ``(row spacing, column spacing)`` = ``(y, x)`` mm. The ``z`` spacing is the
  median gap between sorted positions.

Pixels are never resampled or reoriented: voxel ``[k, i, j]`` is row ``i``, column ``j`` of the
``k``-th slice in ascending order.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from hiseg_sim.data.case import CaseError, validate_spacing, validate_volume

__all__ = ["read_dicom_series", "list_dicom_series", "iter_series_dirs"]

#: Files that are never DICOM, skipped without opening (LIDC series folders hold one ``.xml``).
_NOT_DICOM = {".xml", ".json", ".txt", ".csv", ".md", ".nii", ".gz", ".png", ".jpg", ".jpeg", ".zip", ".py"}
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _candidates(directory: Path, recursive: bool) -> list[Path]:
    it = directory.rglob("*") if recursive else directory.iterdir()
    return sorted(
        p for p in it
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() not in _NOT_DICOM and p.name != "DICOMDIR"
    )


def _dcmread(path: Path, strict: bool, **kw: Any) -> pydicom.Dataset | None:
    """Read a DICOM file; ``None`` for a file that is not DICOM (when not ``strict``)."""
    try:
        return pydicom.dcmread(path, **kw)
    except InvalidDicomError:
        pass  # no "DICM" preamble: old files may still be DICOM, try once more below
    except Exception as exc:  # truncated or corrupt
        raise CaseError(f"cannot read DICOM file {path}: {exc}") from exc
    try:
        ds = pydicom.dcmread(path, force=True, **kw)
        if "SOPClassUID" in ds and "SeriesInstanceUID" in ds:
            return ds
    except Exception:
        pass
    if strict:
        raise CaseError(f"{path} is not a DICOM file")
    return None


def _resolve_files(path: str | os.PathLike | Sequence[str | os.PathLike], recursive: bool) -> tuple[list[Path], bool]:
    """Return the candidate files and whether the caller named them explicitly."""
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"DICOM path does not exist: {p}")
        if p.is_file():
            return [p], True
        files = _candidates(p, recursive)
        if not files:
            subdirs = sum(1 for q in p.iterdir() if q.is_dir())
            hint = f" (it has {subdirs} subfolder(s): pass one series folder, or recursive=True)" if subdirs else ""
            raise CaseError(f"no DICOM files found in {p}{hint}")
        return files, False
    files = [Path(f) for f in path]
    if not files:
        raise CaseError("no DICOM files found: the list of files is empty")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"DICOM file does not exist: {f}")
    return files, True


def _describe_series(groups: dict[str, list[tuple[Path, pydicom.Dataset]]]) -> str:
    lines = []
    for uid, items in groups.items():
        ds = items[0][1]
        lines.append(
            f"  {uid}  ({len(items)} file(s), modality {ds.get('Modality', '?')}, "
            f"'{ds.get('SeriesDescription', '')}', e.g. {items[0][0].name})"
        )
    return "\n".join(lines)


def list_dicom_series(path: str | os.PathLike, recursive: bool = False) -> dict[str, list[Path]]:
    """Map each ``SeriesInstanceUID`` found under ``path`` to its files (headers only are read)."""
    files, _ = _resolve_files(path, recursive)
    out: dict[str, list[Path]] = {}
    for f in files:
        ds = _dcmread(f, False, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SOPClassUID"])
        if ds is not None:
            out.setdefault(str(ds.get("SeriesInstanceUID", "<none>")), []).append(f)
    return out


def iter_series_dirs(root: str | os.PathLike) -> Iterator[tuple[Path, str]]:
    """Walk ``root`` and yield ``(folder, SeriesInstanceUID)`` for every folder holding DICOM.

    Cheap: only the first DICOM file of each folder is opened, headers only
    (``stop_before_pixels=True``). It assumes one series per folder, as TCIA downloads are laid
    out; :func:`read_dicom_series` with ``series_uid=`` still picks the right files from a folder
    that mixes several. Folders are visited in sorted order.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"DICOM root does not exist: {root}")
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        for f in _candidates(Path(dirpath), recursive=False):
            ds = _dcmread(f, False, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SOPClassUID"])
            if ds is not None and "SeriesInstanceUID" in ds:
                yield Path(dirpath), str(ds.SeriesInstanceUID)
                break


def _floats(ds: pydicom.Dataset, key: str) -> np.ndarray | None:
    v = ds.get(key)
    return None if v is None else np.asarray([float(x) for x in v], dtype=np.float64)


def _order_slices(
    items: list[tuple[Path, pydicom.Dataset]], uid: str
) -> tuple[list[int], np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Return (order, sorted z positions or projected distances, positions (Z, 3), orientation, normal)."""
    ipp = [_floats(ds, "ImagePositionPatient") for _, ds in items]
    iop = [_floats(ds, "ImageOrientationPatient") for _, ds in items]
    if all(p is not None and len(p) == 3 for p in ipp) and all(o is not None and len(o) == 6 for o in iop):
        iop0 = iop[0]
        for (f, _), o in zip(items, iop):
            if not np.allclose(o, iop0, atol=1e-3):
                raise CaseError(
                    f"series {uid}: slices have different ImageOrientationPatient: {iop0.tolist()} in "
                    f"{items[0][0].name}, {o.tolist()} in {f.name}"
                )
        normal = np.cross(iop0[:3], iop0[3:])
        normal /= np.linalg.norm(normal)
        if normal[np.argmax(np.abs(normal))] < 0:
            normal = -normal
        pos = np.stack(ipp)
        d = pos @ normal
        order = list(np.argsort(d, kind="stable"))
        return order, d[order], pos[order], iop0, normal
    if len(items) == 1:
        return [0], np.zeros(1), None, None, None
    inst = [ds.get("InstanceNumber") for _, ds in items]
    if any(i is None for i in inst):
        raise CaseError(
            f"series {uid}: cannot order {len(items)} slices: ImagePositionPatient/ImageOrientationPatient "
            "and InstanceNumber are missing"
        )
    warnings.warn(
        f"series {uid}: no ImagePositionPatient/ImageOrientationPatient; slices ordered by InstanceNumber "
        "and z spacing taken from SpacingBetweenSlices or SliceThickness",
        stacklevel=3,
    )
    order = list(np.argsort([int(i) for i in inst], kind="stable"))
    return order, np.full(len(items), np.nan), None, None, None


def _nominal_dz(ds: pydicom.Dataset, *keys: str) -> float:
    for k in keys:
        v = ds.get(k)
        if v not in (None, "") and float(v) > 0:
            return float(v)
    return 1.0


def _select_series(
    path, series_uid: str | None, recursive: bool
) -> tuple[str, list[tuple[Path, pydicom.Dataset]]]:
    """Read the headers under ``path``, group them by series and return the one asked for."""
    files, explicit = _resolve_files(path, recursive)
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    for f in files:
        ds = _dcmread(f, explicit, defer_size=4096)  # pixel bytes are read later, for this series only
        if ds is None:
            continue
        if "Rows" not in ds and not any(t in ds for t in _PIXEL_TAGS):
            if explicit:
                raise CaseError(f"{f} holds no image (SOP class {ds.get('SOPClassUID', '?')}): missing pixel data")
            continue  # DICOMDIR, structured reports ... beside the images
        groups.setdefault(str(ds.get("SeriesInstanceUID", "<no SeriesInstanceUID>")), []).append((f, ds))
    if not groups:
        raise CaseError(f"no DICOM image files found in {path} ({len(files)} file(s) looked at)")
    if series_uid is None:
        if len(groups) > 1:
            raise CaseError(
                f"{path} holds {len(groups)} DICOM series; pass series_uid= one of:\n" + _describe_series(groups)
            )
        uid = next(iter(groups))
    else:
        uid = str(series_uid)
        if uid not in groups:
            raise CaseError(f"series {uid} not found in {path}; series found:\n" + _describe_series(groups))
    return uid, groups[uid]


def _check_uniform(items: list[tuple[Path, pydicom.Dataset]], uid: str) -> tuple[tuple[int, int], tuple[float, float]]:
    """Every slice has pixels, one frame, the same size and PixelSpacing: return ``(rows, cols), (sy, sx)``."""
    for f, ds in items:
        if not any(t in ds for t in _PIXEL_TAGS):
            raise CaseError(f"series {uid}: {f} has no pixel data")
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise CaseError(f"series {uid}: {f} has {ds.SamplesPerPixel} samples per pixel (colour); CT is greyscale")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise CaseError(
                f"series {uid}: {f} is a multi-frame (enhanced) DICOM with {ds.NumberOfFrames} frames; "
                "not supported: convert it to NIfTI (e.g. with dcm2niix) and use read_nifti"
            )
    sizes: dict[tuple[int, int], list[Path]] = {}
    for f, ds in items:
        sizes.setdefault((int(ds.Rows), int(ds.Columns)), []).append(f)
    if len(sizes) > 1:
        desc = ", ".join(f"(rows, columns) = {s} in {len(fs)} file(s), e.g. {fs[0].name}" for s, fs in sizes.items())
        raise CaseError(f"series {uid}: mixed slice sizes: {desc}")
    spacings = {tuple(np.round(_floats(ds, "PixelSpacing"), 6)) if "PixelSpacing" in ds else None for _, ds in items}
    if None in spacings:
        raise CaseError(f"series {uid}: PixelSpacing is missing; cannot know the voxel size in mm")
    if len(spacings) > 1:
        raise CaseError(f"series {uid}: slices have different PixelSpacing: {sorted(spacings)}")
    sy, sx = next(iter(spacings))
    return next(iter(sizes)), (float(sy), float(sx))


def _z_spacing(items, uid, z, pos, normal, gap_tolerance_mm: float, allow_irregular: bool) -> tuple[np.ndarray, float]:
    """Slice positions (mm, ascending) and the z spacing of the sorted slices; checks the gaps."""
    n = len(items)
    if n == 1:
        return z, _nominal_dz(items[0][1], "SliceThickness")
    if pos is None:
        dz = _nominal_dz(items[0][1], "SpacingBetweenSlices", "SliceThickness")
        return np.arange(n) * dz, dz
    gaps = np.diff(z)
    dup = np.flatnonzero(gaps < 1e-3)
    if dup.size:
        i = int(dup[0])
        raise CaseError(
            f"series {uid}: {dup.size} duplicate slice position(s), e.g. z = {z[i]:.3f} mm in both "
            f"{items[i][0].name} and {items[i + 1][0].name}"
        )
    dz = float(np.median(gaps))
    dev = np.abs(gaps - dz)
    if dev.max() > gap_tolerance_mm:
        i = int(np.argmax(dev))
        msg = (
            f"series {uid}: irregular slice gaps from {gaps.min():.3f} to {gaps.max():.3f} mm (median "
            f"{dz:.3f}); e.g. {gaps[i]:.3f} mm between z = {z[i]:.3f} and {z[i + 1]:.3f} mm "
            "(a missing slice?)"
        )
        if not allow_irregular:
            raise CaseError(msg + "; pass allow_irregular=True to read it anyway with the median gap")
        warnings.warn(msg + "; spacing_zyx[0] is the median gap", stacklevel=3)
    span = pos[-1] - pos[0]
    shear = span - (span @ normal) * normal
    if np.linalg.norm(shear) > 1e-2 * max(np.linalg.norm(span), 1e-6):
        warnings.warn(
            f"series {uid}: slices are not stacked along their normal (gantry tilt?); "
            "the volume is not resampled, so it is sheared",
            stacklevel=3,
        )
    return z, dz


def read_dicom_series(
    path: str | os.PathLike | Sequence[str | os.PathLike],
    series_uid: str | None = None,
    *,
    recursive: bool = False,
    gap_tolerance_mm: float = 0.1,
    allow_irregular: bool = False,
) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    """Read one DICOM series into HU.

    Args:
        path: a folder holding the series, a list of its files, or one file.
        series_uid: which ``SeriesInstanceUID`` to read when the folder holds several; without
            it several series are an error that lists them.
        recursive: also look in subfolders.
        gap_tolerance_mm: largest allowed deviation of any gap between sorted slice positions
            from their median (a missing slice, or a series mixing two reconstructions).
        allow_irregular: warn instead of raising when gaps exceed ``gap_tolerance_mm``
            (``spacing_zyx[0]`` is then the median gap; ``meta["z_positions"]`` holds the truth).

    Returns:
        ``volume_hu``: ``float32`` ``(Z, Y, X)``, ``pixel * RescaleSlope + RescaleIntercept``,
        slices in ascending position along the slice normal.
        ``spacing_zyx``: ``(z, y, x)`` mm; ``y, x`` from ``PixelSpacing`` (row, column spacing).
        For a single slice ``z`` is ``SliceThickness``, or 1.0 when that is missing.
        ``meta``: ``series_uid``, ``study_uid``, ``patient_id``, ``modality``,
        ``series_description``, ``z_positions`` (mm, ascending, one per slice, as sorted),
        ``origin`` (``ImagePositionPatient`` of slice 0: LPS ``(x, y, z)`` mm), ``orientation``
        (the 6 direction cosines), ``slice_normal``, ``files`` (in slice order), ``source``.

    Raises:
        FileNotFoundError: ``path`` (or a listed file) does not exist.
        CaseError: no DICOM files; several series and no (or an unknown) ``series_uid``; mixed
            slice sizes, orientations or pixel spacings; missing pixel data; duplicate slice
            positions; irregular gaps; multi-frame files; a volume with NaN.

    A modality other than ``CT`` only warns: the rescale is applied, but the values may not be HU.
    """
    uid, items = _select_series(path, series_uid, recursive)
    (rows, cols), (sy, sx) = _check_uniform(items, uid)
    modality = str(items[0][1].get("Modality", ""))
    if modality != "CT":
        warnings.warn(
            f"series {uid}: modality is {modality or 'missing'!r}, not CT; RescaleSlope/Intercept are applied "
            "but the values may not be Hounsfield units",
            stacklevel=2,
        )
    order, z, pos, iop, normal = _order_slices(items, uid)
    items = [items[i] for i in order]
    z, dz = _z_spacing(items, uid, z, pos, normal, gap_tolerance_mm, allow_irregular)
    n = len(items)

    vol = np.empty((n, rows, cols), np.float32)
    for k, (f, ds) in enumerate(items):
        try:
            px = ds.pixel_array
        except Exception as exc:
            ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
            raise CaseError(f"series {uid}: cannot decode the pixels of {f} (transfer syntax {ts}): {exc}") from exc
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        vol[k] = px.astype(np.float64) * slope + intercept

    first = items[0][1]
    vol = validate_volume(vol, f"DICOM series {uid}")
    spacing = validate_spacing((dz, sy, sx), 3, f"DICOM series {uid}: spacing_zyx")
    meta = {
        "source": "dicom",
        "series_uid": uid,
        "study_uid": str(first.get("StudyInstanceUID", "")),
        "patient_id": str(first.get("PatientID", "")),
        "modality": modality,
        "series_description": str(first.get("SeriesDescription", "")),
        "z_positions": [float(v) for v in z],
        "origin": None if pos is None else [float(v) for v in pos[0]],
        "orientation": None if iop is None else [float(v) for v in iop],
        "slice_normal": None if normal is None else [float(v) for v in normal],
        "files": [str(f) for f, _ in items],
    }
    return vol, spacing, meta  # type: ignore[return-value]
