"""One DICOM file: open it, decide whether it is a slice, read its header values once.

A file is either a :class:`DicomSlice` (header values checked, pixels read on demand) or an
:class:`Ignored` with the reason it is not part of a series. A file that claims to be DICOM but
cannot be read is an :class:`UnreadableFileError` naming it. Used by :mod:`hiseg_sim.data.io_dicom`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.multival import MultiValue
from pydicom.uid import UID

from hiseg_sim.data.case import CaseError

__all__ = [
    "RECOPY",
    "DicomSlice",
    "Ignored",
    "UnreadableFileError",
    "claims_dicom",
    "open_dicom",
    "read_slice",
    "short_reason",
]

#: Suffixes that mark a file as DICOM even when it lacks the ``DICM`` marker.
_DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
#: Files that are not DICOM and are expected beside a series (LIDC folders hold one ``.xml``):
#: left unopened unless they carry the ``DICM`` marker.
_NOT_DICOM = {".xml", ".json", ".txt", ".csv", ".md", ".nii", ".gz", ".png", ".jpg", ".jpeg", ".zip", ".py", ".pdf"}
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: ``MediaStorageSOPClassUID`` of a DICOMDIR (the index of a DICOM disc, no image).
_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
RECOPY = "re-copy it from the source, or move it out of the folder"


class UnreadableFileError(CaseError):
    """A file that should hold image data cannot be read: truncated, corrupt, or not what it claims.

    The one-line message names the file, says what is wrong and what to do; ``path`` is the file.
    Raised by every reader of :mod:`hiseg_sim.data.io` (DICOM, NIfTI, ITK formats).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else Path(path)

    def __reduce__(self):  # keeps ``path`` when the error crosses a process boundary
        return type(self), (str(self), self.path)


def short_reason(exc: BaseException, limit: int = 160) -> str:
    """``"Type: message"`` of ``exc`` on one line, cut to ``limit`` characters."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ----------------------------------------------------------------------------- one file


@dataclass(frozen=True)
class Ignored:
    """Why a file is not part of the series; ``surprising`` ones are named in a warning.

    ``series_uid``: the series a DICOM object that is not an image names, if any.
    """

    reason: str
    surprising: bool
    series_uid: str | None = None


@dataclass(frozen=True)
class DicomSlice:
    """What the volume needs from one DICOM file, every value converted (and so checked) once.

    ``position``: ``ImagePositionPatient`` LPS ``(x, y, z)`` mm; ``orientation``: the six direction
    cosines ``(r, c)``; ``pixel_spacing``: ``(y, x)`` mm. ``None`` where the file has no such tag.
    """

    path: Path
    ds: pydicom.Dataset
    series_uid: str
    sop_class: str
    is_image: bool
    has_pixels: bool
    rows: int | None
    cols: int | None
    pixel_spacing: tuple[float, float] | None
    position: np.ndarray | None
    orientation: np.ndarray | None
    instance: int | None
    samples: int
    frames: int
    slope: float
    intercept: float
    slice_thickness: float | None
    between_slices: float | None
    modality: str
    series_description: str
    study_uid: str
    patient_id: str


def claims_dicom(path: Path) -> bool:
    """``DICM`` at byte 128 (the DICOM file format's marker) or a DICOM suffix."""
    if path.suffix.lower() in _DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError as exc:
        raise UnreadableFileError(
            f"{path}: cannot be opened ({short_reason(exc)}); check its permissions", path
        ) from exc


def open_dicom(path: Path, *, must_be_dicom: bool, header_only: bool) -> pydicom.Dataset | Ignored:
    """The dataset in ``path``, or why the file belongs to no series.

    ``header_only`` stops before the pixels; otherwise pixel data is deferred (read when decoded).
    Raises :class:`UnreadableFileError` for a file that claims to be DICOM (or ``must_be_dicom``)
    but cannot be read or names no series.
    """
    if path.name.upper() == "DICOMDIR":
        return Ignored("a DICOMDIR (the index of a DICOM disc, no image)", False)
    if path.name.startswith("."):
        return Ignored("a hidden file", False)
    marked = claims_dicom(path)
    claims = must_be_dicom or marked
    if not claims and path.suffix.lower() in _NOT_DICOM:
        return Ignored(f"not DICOM (a {path.suffix.lower()} file)", False)
    kw: dict[str, Any] = {"stop_before_pixels": True} if header_only else {"defer_size": 4096}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's complaints about a damaged file: reported below, in one line
            ds = pydicom.dcmread(path, force=True, **kw)
            file_meta = getattr(ds, "file_meta", None)
            media_sop = str(file_meta.get("MediaStorageSOPClassUID", "") if file_meta is not None else "")
            uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
            sop = str(ds.get("SOPClassUID", "") or "").strip()
        if media_sop == _DIRECTORY_SOP_CLASS:
            return Ignored("a DICOMDIR (the index of a DICOM disc, no image)", False)
    except Exception as exc:  # any parser failure means the file cannot be used
        if claims:
            raise UnreadableFileError(
                f"{path}: cannot be read as DICOM ({short_reason(exc)}); the file is truncated or damaged: {RECOPY}",
                path,
            ) from exc
        return Ignored("not DICOM (no DICOM header)", True)
    if uid and (sop or claims) and uid.isprintable() and " " not in uid:
        return ds
    if not claims:
        return Ignored("not DICOM (no DICOM header)", True)
    problem = f"SeriesInstanceUID {uid!r} is not a valid UID" if uid else "it has no SeriesInstanceUID"
    claim = "looks like DICOM" if marked else "was passed as a DICOM file (it has no DICM marker)"
    raise UnreadableFileError(
        f"{path}: {claim} but {problem}, so it cannot be placed in a series; "
        f"the file is truncated, damaged or not DICOM: {RECOPY}",
        path,
    )


def _get(path: Path, ds: pydicom.Dataset, key: str, convert: Callable[[Any], Any]) -> Any:
    """``convert(ds[key])``, ``None`` when the tag is missing or empty; a bad value names the file."""
    try:
        v = ds.get(key)
        if v is None or (isinstance(v, (str, bytes)) and not v.strip()):
            return None
        return convert(v)
    except Exception as exc:  # a garbled value of any kind
        raise UnreadableFileError(
            f"{path}: its {key} cannot be read ({short_reason(exc)}); the file is damaged: {RECOPY}", path
        ) from exc


def _finite(v: Any) -> float:
    out = float(v)
    if not np.isfinite(out):
        raise ValueError(f"{out} is not a finite number")
    return out


def _vector(n: int) -> Callable[[Any], np.ndarray]:
    """A converter of a multi-valued tag to ``n`` finite floats."""

    def convert(v: Any) -> np.ndarray:
        out = np.asarray([float(x) for x in (v if isinstance(v, (list, tuple, MultiValue)) else [v])])
        if out.shape != (n,) or not np.all(np.isfinite(out)):
            raise ValueError(f"expected {n} finite numbers, got {out.tolist()}")
        return out

    return convert


def read_slice(path: Path, ds: pydicom.Dataset) -> DicomSlice:
    """The checked facts of one DICOM file (see :class:`DicomSlice`); nothing reads ``ds`` after this but
    the pixel decoder, so a garbled tag anywhere in the header names the file here."""
    sop = _get(path, ds, "SOPClassUID", str) or ""
    rows = _get(path, ds, "Rows", int)
    has_pixels = any(t in ds for t in _PIXEL_TAGS)
    sop_name = UID(sop).name if sop else ""
    spacing = _get(path, ds, "PixelSpacing", _vector(2))
    return DicomSlice(
        path=path,
        ds=ds,
        series_uid=str(ds.SeriesInstanceUID).strip(),
        sop_class=sop_name or "unknown SOP class",
        is_image=rows is not None or has_pixels or "Image Storage" in sop_name,
        has_pixels=has_pixels,
        rows=rows,
        cols=_get(path, ds, "Columns", int),
        pixel_spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        position=_get(path, ds, "ImagePositionPatient", _vector(3)),
        orientation=_get(path, ds, "ImageOrientationPatient", _vector(6)),
        instance=_get(path, ds, "InstanceNumber", int),
        samples=_get(path, ds, "SamplesPerPixel", int) or 1,
        frames=_get(path, ds, "NumberOfFrames", int) or 1,
        slope=_get(path, ds, "RescaleSlope", _finite) or 1.0,
        intercept=_get(path, ds, "RescaleIntercept", _finite) or 0.0,
        slice_thickness=_get(path, ds, "SliceThickness", _finite),
        between_slices=_get(path, ds, "SpacingBetweenSlices", _finite),
        modality=_get(path, ds, "Modality", str) or "",
        series_description=_get(path, ds, "SeriesDescription", str) or "",
        study_uid=_get(path, ds, "StudyInstanceUID", str) or "",
        patient_id=_get(path, ds, "PatientID", str) or "",
    )
