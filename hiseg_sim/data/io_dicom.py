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

Every file is accounted for. Each file of a folder is either a slice of the volume
(``meta["files"]``) or listed in ``meta["ignored_files"]`` with the reason it is not part of the
series. Files a user would not expect to be left out (DICOM images of another series, files that
are not recognisably DICOM) are also named in a warning; the expected ones (a DICOMDIR, an
``.xml``/``.txt`` beside the images, a structured report) in a ``logging.INFO`` record of the
logger ``hiseg_sim.data.io_dicom``. A file that claims to be DICOM (``DICM`` at byte 128, or a
``.dcm``/``.dicom``/``.ima`` suffix) but cannot be read, and a slice of the series whose pixels
are missing or short (a truncated copy), is an :class:`UnreadableFileError` naming that file:
nothing is skipped silently, so a damaged first or last slice can never shorten the volume.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from hiseg_sim.data.case import CaseError, validate_spacing, validate_volume
from hiseg_sim.data.dicom_file import (
    RECOPY,
    DicomSlice,
    Ignored,
    UnreadableFileError,
    open_dicom,
    read_slice,
    short_reason,
)

__all__ = ["UnreadableFileError", "iter_series_dirs", "list_dicom_series", "read_dicom_series"]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- a folder


def _resolve_files(path: str | os.PathLike | Sequence[str | os.PathLike], recursive: bool) -> tuple[list[Path], bool]:
    """Every file under ``path`` (sorted) and whether the caller named them explicitly."""
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"DICOM path does not exist: {p}")
        if p.is_file():
            return [p], True
        files = sorted(q for q in (p.rglob("*") if recursive else p.iterdir()) if q.is_file())
        if not files:
            subdirs = sum(1 for q in p.iterdir() if q.is_dir())
            hint = f"; it has {subdirs} subfolder(s): pass one series folder, or recursive=True" if subdirs else ""
            raise CaseError(f"no DICOM files found in {p}: the folder holds no file{hint}")
        return files, False
    files = [Path(f) for f in path]
    if not files:
        raise CaseError("no DICOM files found: the list of files is empty; pass the files of one series")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"DICOM file does not exist: {f}")
    return files, True


def _scan(files: list[Path], explicit: bool, *, header_only: bool) -> tuple[list[DicomSlice], dict[Path, Ignored]]:
    """Open every file: the image slices found, and every other file with the reason it is left out."""
    slices: list[DicomSlice] = []
    ignored: dict[Path, Ignored] = {}
    for f in files:
        got = open_dicom(f, must_be_dicom=explicit, header_only=header_only)
        if isinstance(got, Ignored):
            if explicit:
                raise CaseError(f"{f} is {got.reason}, not a DICOM image; pass only the image files of one series")
            ignored[f] = got
            continue
        s = read_slice(f, got)
        if not s.is_image:
            if explicit:
                raise CaseError(f"{f} holds no image ({s.sop_class}): missing pixel data; pass only the image files")
            ignored[f] = Ignored(f"a DICOM {s.sop_class} object, not an image", False, s.series_uid)
            continue
        slices.append(s)
    return slices, ignored


def _group(slices: list[DicomSlice]) -> dict[str, list[DicomSlice]]:
    groups: dict[str, list[DicomSlice]] = {}
    for s in slices:
        groups.setdefault(s.series_uid, []).append(s)
    return groups


def _describe_series(groups: dict[str, list[DicomSlice]]) -> str:
    """One line: each series' UID, file count, modality, description and one file."""
    parts = []
    for uid, items in groups.items():
        s = items[0]
        parts.append(
            f"{uid} ({len(items)} file(s), modality {s.modality or '?'}, '{s.series_description}', e.g. {s.path.name})"
        )
    return "; ".join(parts)


def _names(paths: Sequence[Path], limit: int = 8) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _report_ignored(ignored: dict[Path, Ignored], uid: str) -> None:
    """Name every file left out: surprising ones in a warning, expected ones in a log record."""
    if not ignored:
        return
    by_reason: dict[str, list[Path]] = {}
    for f, r in ignored.items():
        if r.surprising:
            by_reason.setdefault(r.reason, []).append(f)
    if by_reason:
        n = sum(len(fs) for fs in by_reason.values())
        warnings.warn(
            f"series {uid}: {n} file(s) beside it were not read: "
            + "; ".join(f"{reason}: {_names(fs)}" for reason, fs in by_reason.items())
            + "; meta['ignored_files'] lists them all",
            stacklevel=3,
        )
    for f, r in ignored.items():
        if not r.surprising:
            log.info("series %s: %s is not part of it: %s", uid, f, r.reason)


def list_dicom_series(path: str | os.PathLike, recursive: bool = False) -> dict[str, list[Path]]:
    """Map each ``SeriesInstanceUID`` found under ``path`` to its image files (headers only are read).

    Raises :class:`UnreadableFileError` for a file that claims to be DICOM but cannot be read.
    """
    files, explicit = _resolve_files(path, recursive)
    slices, _ = _scan(files, explicit, header_only=True)
    return {uid: [s.path for s in items] for uid, items in _group(slices).items()}


def iter_series_dirs(root: str | os.PathLike) -> Iterator[tuple[Path, str]]:
    """Walk ``root`` and yield ``(folder, SeriesInstanceUID)`` for every folder holding DICOM images.

    Cheap: files of each folder are opened (headers only) until one names its series. It assumes
    one series per folder, as TCIA downloads are laid out; :func:`read_dicom_series` with
    ``series_uid=`` picks the right files from a folder that mixes several and reports the rest.
    Folders are visited in sorted order. A damaged file is passed over here (the reader names it);
    a folder whose DICOM files are all damaged raises the first file's :class:`UnreadableFileError`.
    """
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"DICOM root does not exist: {root}")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        first_error: UnreadableFileError | None = None
        for name in sorted(filenames):
            f = Path(dirpath) / name
            try:
                got = open_dicom(f, must_be_dicom=False, header_only=True)
                if isinstance(got, Ignored):
                    continue
                s = read_slice(f, got)
            except UnreadableFileError as exc:
                first_error = first_error or exc
                continue
            if s.is_image:
                yield Path(dirpath), s.series_uid
                break
        else:
            if first_error is not None:
                raise first_error


def _select_series(path, series_uid: str | None, recursive: bool) -> tuple[str, list[DicomSlice], dict[Path, Ignored]]:
    """Open every file under ``path``, group the images by series and return the one asked for,
    with every other file and why it is left out."""
    files, explicit = _resolve_files(path, recursive)
    slices, ignored = _scan(files, explicit, header_only=False)
    groups = _group(slices)
    if not groups:
        seen = "; ".join(f"{f.name}: {r.reason}" for f, r in list(ignored.items())[:5])
        raise CaseError(
            f"no DICOM image files found in {path} ({len(files)} file(s) looked at: {seen}); "
            "pass the folder of one DICOM series"
        )
    if series_uid is None:
        if len(groups) > 1:
            raise CaseError(
                f"{path} holds {len(groups)} DICOM series; pass series_uid= one of: {_describe_series(groups)}"
            )
        uid = next(iter(groups))
    else:
        uid = str(series_uid)
        if uid not in groups:
            raise CaseError(f"series {uid} not found in {path}; pass series_uid= one of: {_describe_series(groups)}")
    for other, items in groups.items():
        if other != uid:
            for s in items:
                ignored[s.path] = Ignored(f"an image of another series, {other}", True)
    for f, r in ignored.items():
        if r.series_uid == uid:  # an object without pixels in an image series: a damaged slice, or odd data
            ignored[f] = Ignored(f"{r.reason} (in this series)", True, uid)
    return uid, groups[uid], ignored


# ----------------------------------------------------------------------------- geometry


def _check_uniform(items: list[DicomSlice], uid: str) -> tuple[tuple[int, int], tuple[float, float]]:
    """Every slice has pixels, one frame, the same size and PixelSpacing: return ``(rows, cols), (sy, sx)``."""
    for s in items:
        if not s.has_pixels:
            raise UnreadableFileError(
                f"{s.path} has no pixel data but is a slice of series {uid} (a truncated copy?); {RECOPY}", s.path
            )
        if s.rows is None or s.cols is None:
            raise UnreadableFileError(
                f"{s.path} has no Rows/Columns but is a slice of series {uid}; the file is damaged: {RECOPY}", s.path
            )
        if s.samples != 1:
            raise CaseError(f"series {uid}: {s.path} has {s.samples} samples per pixel (colour); CT is greyscale")
        if s.frames > 1:
            raise CaseError(
                f"series {uid}: {s.path} is a multi-frame (enhanced) DICOM with {s.frames} frames; "
                "not supported: convert it to NIfTI (e.g. with dcm2niix) and use read_nifti"
            )
    sizes: dict[tuple[int, int], list[Path]] = {}
    for s in items:
        sizes.setdefault((int(s.rows), int(s.cols)), []).append(s.path)  # type: ignore[arg-type]
    if len(sizes) > 1:
        desc = ", ".join(f"(rows, columns) = {k} in {len(fs)} file(s), e.g. {fs[0].name}" for k, fs in sizes.items())
        raise CaseError(f"series {uid}: mixed slice sizes: {desc}; a series holds slices of one size")
    missing = [s.path for s in items if s.pixel_spacing is None]
    if missing:
        raise CaseError(
            f"series {uid}: PixelSpacing is missing in {len(missing)} file(s) ({_names(missing)}); "
            "cannot know the voxel size in mm"
        )
    spacings: dict[tuple[float, float], list[Path]] = {}
    for s in items:
        spacings.setdefault(tuple(np.round(s.pixel_spacing, 6)), []).append(s.path)  # type: ignore[arg-type]
    if len(spacings) > 1:
        desc = ", ".join(f"{k} mm in {len(fs)} file(s), e.g. {fs[0].name}" for k, fs in spacings.items())
        raise CaseError(f"series {uid}: slices have different PixelSpacing: {desc}")
    sy, sx = next(iter(spacings))
    return next(iter(sizes)), (float(sy), float(sx))


def _order_slices(
    items: list[DicomSlice], uid: str
) -> tuple[list[int], np.ndarray, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Return (order, sorted z positions or NaN, positions (Z, 3) as sorted, orientation, normal)."""
    placed = [s.position is not None and s.orientation is not None for s in items]
    if all(placed):
        orients = [s.orientation for s in items if s.orientation is not None]
        iop0 = orients[0]
        for s, o in zip(items, orients):
            if not np.allclose(o, iop0, atol=1e-3):
                raise CaseError(
                    f"series {uid}: slices have different ImageOrientationPatient: {iop0.tolist()} in "
                    f"{items[0].path.name}, {o.tolist()} in {s.path.name}"
                )
        normal = np.cross(iop0[:3], iop0[3:])
        norm = float(np.linalg.norm(normal))
        if norm < 1e-6:
            raise UnreadableFileError(
                f"{items[0].path}: its ImageOrientationPatient {iop0.tolist()} has parallel row and column "
                f"directions; the file is damaged: {RECOPY}",
                items[0].path,
            )
        normal /= norm
        if normal[np.argmax(np.abs(normal))] < 0:
            normal = -normal
        pos = np.stack([s.position for s in items if s.position is not None])
        d = pos @ normal
        order = [int(i) for i in np.argsort(d, kind="stable")]
        return order, d[order], pos[order], iop0, normal
    if any(placed):
        lost = [s.path for s, ok in zip(items, placed) if not ok]
        raise CaseError(
            f"series {uid}: {len(lost)} of {len(items)} slices have no ImagePositionPatient/ImageOrientationPatient "
            f"({_names(lost)}), so they cannot be placed; re-copy them, or move them out of the folder"
        )
    if len(items) == 1:
        return [0], np.zeros(1), None, None, None
    no_number = [s.path for s in items if s.instance is None]
    if no_number:
        raise CaseError(
            f"series {uid}: cannot order {len(items)} slices: ImagePositionPatient/ImageOrientationPatient "
            f"are missing, and so is InstanceNumber in {_names(no_number)}"
        )
    warnings.warn(
        f"series {uid}: no ImagePositionPatient/ImageOrientationPatient; slices ordered by InstanceNumber "
        "and z spacing taken from SpacingBetweenSlices or SliceThickness",
        stacklevel=3,
    )
    order = [int(i) for i in np.argsort([s.instance or 0 for s in items], kind="stable")]  # none is None here
    return order, np.full(len(items), np.nan), None, None, None


def _positive(*values: float | None) -> float:
    for v in values:
        if v is not None and np.isfinite(v) and v > 0:
            return float(v)
    return 1.0


def _z_spacing(
    items: list[DicomSlice], uid, z, pos, normal, gap_tolerance_mm: float, allow_irregular: bool
) -> tuple[np.ndarray, float]:
    """Slice positions (mm, ascending) and the z spacing of the sorted slices; checks the gaps.

    ``items`` are sorted; a gap that is not the median (a hole left by a missing slice) names the
    files on both sides of it.
    """
    n = len(items)
    if n == 1:
        return z, _positive(items[0].slice_thickness)
    if pos is None:
        dz = _positive(items[0].between_slices, items[0].slice_thickness)
        return np.arange(n) * dz, dz
    gaps = np.diff(z)
    dup = np.flatnonzero(gaps < 1e-3)
    if dup.size:
        i = int(dup[0])
        raise CaseError(
            f"series {uid}: {dup.size} duplicate slice position(s), e.g. z = {z[i]:.3f} mm in both "
            f"{items[i].path.name} and {items[i + 1].path.name}; move the duplicate copy out of the folder"
        )
    dz = float(np.median(gaps))
    dev = np.abs(gaps - dz)
    if dev.max() > gap_tolerance_mm:
        i = int(np.argmax(dev))
        msg = (
            f"series {uid}: irregular slice gaps from {gaps.min():.3f} to {gaps.max():.3f} mm (median "
            f"{dz:.3f}); e.g. {gaps[i]:.3f} mm between z = {z[i]:.3f} ({items[i].path.name}) and "
            f"{z[i + 1]:.3f} mm ({items[i + 1].path.name}) (a missing slice?)"
        )
        if not allow_irregular:
            raise CaseError(msg + "; pass allow_irregular=True to read it anyway with the median gap")
        warnings.warn(msg + "; spacing_zyx[0] is the median gap", stacklevel=3)
    span = pos[-1] - pos[0]
    shear = span - (span @ normal) * normal
    if float(np.linalg.norm(shear)) > 1e-2 * max(float(np.linalg.norm(span)), 1e-6):
        warnings.warn(
            f"series {uid}: slices are not stacked along their normal (gantry tilt?); "
            "the volume is not resampled, so it is sheared",
            stacklevel=3,
        )
    return z, dz


def _check_numbering(items: list[DicomSlice], uid: str) -> None:
    """Warn when ``InstanceNumber`` (in slice order) skips numbers: a slice may be missing where the
    positions cannot show it (two slices have one gap, and no median to compare it with).

    Only when every slice has a distinct number and the numbers run monotonically with position;
    a warning, not an error, since some scanners number a series with gaps.
    """
    numbers = [s.instance for s in items]
    if len(items) < 2 or any(n is None for n in numbers) or len(set(numbers)) != len(numbers):
        return
    steps = np.diff(np.asarray(numbers, dtype=np.int64))
    if not (np.all(steps > 0) or np.all(steps < 0)):
        return
    holes = np.flatnonzero(np.abs(steps) > 1)
    if holes.size:
        i = int(holes[0])
        warnings.warn(
            f"series {uid}: InstanceNumber skips from {numbers[i]} ({items[i].path.name}) to {numbers[i + 1]} "
            f"({items[i + 1].path.name}), {int(np.sum(np.abs(steps) - 1))} number(s) missing in all: is a slice lost? "
            "Check the folder against the source; meta['files'] lists the slices read",
            stacklevel=3,
        )


def _pixels(s: DicomSlice, uid: str, shape: tuple[int, int]) -> np.ndarray:
    """The slice's stored pixels ``(rows, cols)``; a short or undecodable pixel block names the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a failure is raised below; a longer-than-needed block is harmless
            px = s.ds.pixel_array
    except Exception as exc:  # truncated data, unknown transfer syntax, garbled pixel header
        try:
            ts = str(getattr(getattr(s.ds, "file_meta", None), "TransferSyntaxUID", "?"))
        except Exception:  # noqa: BLE001 - a garbled file meta: the error below still names the file
            ts = "?"
        raise UnreadableFileError(
            f"{s.path}: cannot decode its pixels (series {uid}, transfer syntax {ts}): {short_reason(exc)}; "
            "the file is truncated or damaged (re-copy it), or needs a decoder plugin such as pylibjpeg",
            s.path,
        ) from exc
    if px.shape != shape:
        raise UnreadableFileError(
            f"{s.path}: its pixels decode to shape {px.shape}, not (rows, columns) = {shape} as in series {uid}; "
            f"the file is damaged: {RECOPY}",
            s.path,
        )
    return px


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
        path: a folder holding the series, a list of its files, or one file. Every file of a
            folder is opened (whatever its suffix), so none is left out unnoticed.
        series_uid: which ``SeriesInstanceUID`` to read when the folder holds several; without
            it several series are an error that lists them. The other series' files are named
            in a warning.
        recursive: also look in subfolders.
        gap_tolerance_mm: largest allowed deviation of any gap between sorted slice positions
            from their median (a missing slice, or a series mixing two reconstructions).
        allow_irregular: warn instead of raising when gaps exceed ``gap_tolerance_mm``
            (``spacing_zyx[0]`` is then the median gap; ``meta["z_positions"]`` holds the truth).

    Returns:
        ``volume_hu``: ``float32`` ``(Z, Y, X)``, ``pixel * RescaleSlope + RescaleIntercept``,
        slices in ascending position along the slice normal; ``Z`` is the number of files of
        the series.
        ``spacing_zyx``: ``(z, y, x)`` mm; ``y, x`` from ``PixelSpacing`` (row, column spacing).
        For a single slice ``z`` is ``SliceThickness``, or 1.0 when that is missing.
        ``meta``: ``series_uid``, ``study_uid``, ``patient_id``, ``modality``,
        ``series_description``, ``z_positions`` (mm, ascending, one per slice, as sorted),
        ``origin`` (``ImagePositionPatient`` of slice 0: LPS ``(x, y, z)`` mm), ``orientation``
        (the 6 direction cosines), ``slice_normal``, ``files`` (in slice order),
        ``ignored_files`` (``{path: why it is not a slice of this series}`` for every other
        file looked at), ``source``.

    Raises:
        FileNotFoundError: ``path`` (or a listed file) does not exist.
        UnreadableFileError: a file that claims to be DICOM cannot be read; a slice of the
            series has no or short pixel data (truncated) or a garbled header value.
        CaseError: no DICOM image files; several series and no (or an unknown) ``series_uid``;
            mixed slice sizes, orientations or pixel spacings; slices with and without
            positions; duplicate slice positions; irregular gaps (a missing slice); multi-frame
            files; a volume with NaN. Every message is one line naming the file(s).

    A modality other than ``CT`` only warns: the rescale is applied, but the values may not be HU.
    So does an ``InstanceNumber`` sequence that skips numbers between slices (a lost slice the
    positions cannot show, e.g. two slices left of three).
    """
    uid, items, ignored = _select_series(path, series_uid, recursive)
    (rows, cols), (sy, sx) = _check_uniform(items, uid)
    modality = items[0].modality
    if modality != "CT":
        warnings.warn(
            f"series {uid}: modality is {modality or 'missing'!r}, not CT; RescaleSlope/Intercept are applied "
            "but the values may not be Hounsfield units",
            stacklevel=2,
        )
    order, z, pos, iop, normal = _order_slices(items, uid)
    items = [items[i] for i in order]
    z, dz = _z_spacing(items, uid, z, pos, normal, gap_tolerance_mm, allow_irregular)
    if pos is not None:  # ordered by position: numbering can still reveal a lost slice
        _check_numbering(items, uid)

    first_px = _pixels(items[0], uid, (rows, cols))  # decoded before allocating: its size is now known to be real
    vol = np.empty((len(items), rows, cols), np.float32)
    for k, s in enumerate(items):
        px = first_px if k == 0 else _pixels(s, uid, (rows, cols))
        vol[k] = px.astype(np.float64) * s.slope + s.intercept
    _report_ignored(ignored, uid)

    first = items[0]
    vol = validate_volume(vol, f"DICOM series {uid}")
    spacing = validate_spacing((dz, sy, sx), 3, f"DICOM series {uid}: spacing_zyx")
    meta = {
        "source": "dicom",
        "series_uid": uid,
        "study_uid": first.study_uid,
        "patient_id": first.patient_id,
        "modality": modality,
        "series_description": first.series_description,
        "z_positions": [float(v) for v in z],
        "origin": None if pos is None else [float(v) for v in pos[0]],
        "orientation": None if iop is None else [float(v) for v in iop],
        "slice_normal": None if normal is None else [float(v) for v in normal],
        "files": [str(s.path) for s in items],
        "ignored_files": {str(f): r.reason for f, r in ignored.items()},
    }
    return vol, spacing, meta  # type: ignore[return-value]
