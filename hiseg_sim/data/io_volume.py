"""Read a volume file (NIfTI, MetaImage, NRRD) or a DICOM series into ``(Z, Y, X)`` arrays.

Orientation: no reader here resamples or reorients. Each keeps the voxel order the file stores
and records what is needed to place it in the patient: NIfTI keeps its affine (RAS+ world
coordinates, ``meta["affine"]``, with ``meta["axcodes_xyz"]`` naming where the stored ``x, y, z``
axes point, e.g. ``"LPS"`` for a volume converted from DICOM without flips); ITK formats keep
origin and direction (LPS). Axis order is the only thing changed: NIfTI and ITK index voxels
``[x, y, z]``, we transpose to ``[z, y, x]`` and reverse the spacing once, here.

A consequence worth knowing: a NIfTI written by a converter that flipped rows (``"LAS"``, common
with dcm2niix) shows the patient upside-down relative to the DICOM viewer. Segment Anything does not
care, but a mask must come from the same file family as its image (see ``case_from_files``).

A file that cannot be read (truncated, corrupt gzip stream, a header asking for more voxels than
the file holds) is an :class:`~hiseg_sim.data.io_dicom.UnreadableFileError` (a ``CaseError``,
so a ``ValueError``) whose one-line message names the file, never a bare ``EOFError`` or
``zlib.error``. The size check comes before any voxel is read, so a damaged header cannot make
the reader allocate memory the file could not fill.
"""

from __future__ import annotations

import gzip
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hiseg_sim.data.case import CaseError, validate_spacing, validate_volume
from hiseg_sim.data.io_dicom import UnreadableFileError, read_dicom_series, short_reason

__all__ = [
    "ITK_SUFFIXES",
    "NIFTI_SUFFIXES",
    "UnreadableFileError",
    "read_image",
    "read_itk",
    "read_label_image",
    "read_nifti",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".img", ".hdr")
ITK_SUFFIXES = (".mha", ".mhd", ".nrrd", ".nhdr")
_UNIT_TO_MM = {"mm": 1.0, "meter": 1000.0, "micron": 1e-3}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _exists(path: str | os.PathLike, what: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{what} does not exist: {p}")
    return p


def _damaged(p: Path, what: str, exc: BaseException) -> UnreadableFileError:
    return UnreadableFileError(
        f"{p}: cannot read this {what} file ({short_reason(exc)}); it is truncated or damaged "
        "(a partial download or copy?): re-download or re-export it",
        p,
    )


def _load_nifti(p: Path):
    """``(nibabel image, bytes the file holds after decompression)``; a truncated or corrupt file names itself.

    A ``.nii.gz`` is decompressed whole first, so its gzip CRC and length are checked (nibabel alone
    reads only as many bytes as the header asks for and can miss a damaged tail).
    """
    import nibabel as nib

    try:
        if _suffix(p) == ".nii.gz":
            raw = gzip.decompress(p.read_bytes())
            sizeof_hdr = int.from_bytes(raw[:4], "little") if len(raw) >= 4 else 0
            big = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else 0
            cls = nib.Nifti2Image if 540 in (sizeof_hdr, big) else nib.Nifti1Image
            return cls.from_bytes(raw), len(raw)
        img = nib.load(str(p))
        data_file = img.file_map["image"].filename
        return img, os.path.getsize(data_file) if data_file else p.stat().st_size
    except Exception as exc:  # EOFError, zlib.error, BadGzipFile, nibabel's ImageFileError ...
        raise _damaged(p, "NIfTI", exc) from exc


def _check_data_size(p: Path, img, available: int) -> None:
    """The voxels the header asks for fit in the file: checked before reading them, so a damaged
    header cannot make the reader allocate more memory than the file could fill. Bytes left over
    after the voxels (a damaged ``dim`` or ``datatype`` asking for fewer) are named in a warning."""
    hdr = img.header
    need = int(np.prod(hdr.get_data_shape(), dtype=np.float64) * hdr.get_data_dtype().itemsize)
    single = _suffix(p) in (".nii", ".nii.gz")  # header and voxels in one file: voxels start after the header
    offset = max(int(hdr.get_data_offset()), int(getattr(hdr, "single_vox_offset", 0))) if single else 0
    if offset + need > available:
        raise UnreadableFileError(
            f"{p}: the NIfTI header asks for {need} bytes of voxels ({hdr.get_data_shape()} x "
            f"{hdr.get_data_dtype()}) after byte {offset}, but the file holds {available}; it is truncated "
            "or its header is damaged: re-download or re-export it",
            p,
        )
    if offset + need < available:  # writers end the file with the voxels: a smaller dim/datatype was garbled
        warnings.warn(
            f"{p}: {available - offset - need} bytes follow the voxels its NIfTI header describes "
            f"({hdr.get_data_shape()} x {hdr.get_data_dtype()}); if the volume looks cut, the header is damaged: "
            "re-download or re-export it",
            stacklevel=4,
        )


def _reject_zero_pixdim(p: Path, img) -> None:
    """nibabel silently turns a zero ``pixdim`` into 1 mm on load; for CT that is an unknown voxel size."""
    import nibabel as nib
    from nibabel.openers import ImageOpener

    if not isinstance(img.header, nib.Nifti1Header) or _suffix(p) not in (".nii", ".nii.gz"):
        return
    with ImageOpener(str(p)) as f:
        raw = type(img.header).from_fileobj(f, check=False)
    pixdim = np.asarray(raw["pixdim"][1:4], dtype=float)
    if np.any(pixdim == 0) or not np.all(np.isfinite(pixdim)):
        raise CaseError(
            f"{p}: NIfTI header pixdim (x, y, z) = {pixdim.tolist()}: spacing_zyx entries must be finite and > 0 mm "
            "(nibabel would assume 1 mm); fix the header"
        )


def _nifti_raw(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    """NIfTI voxels as stored (scaled by ``scl_slope``/``scl_inter``), transposed to ``(Z, Y, X)``."""
    import nibabel.orientations as nio

    p = _exists(path, "NIfTI file")
    img, available = _load_nifti(p)
    try:
        shape = img.shape
        if len(shape) == 4 and shape[3] == 1:
            shape = shape[:3]
        if len(shape) != 3:
            raise CaseError(
                f"{p}: NIfTI image has {len(img.shape)} dimension(s), shape (x, y, z, ...) = {img.shape}; "
                "a Case needs one 3-D volume"
            )
        _check_data_size(p, img, available)
        data = np.asanyarray(img.dataobj).reshape(shape)
        arr = np.ascontiguousarray(data.transpose(2, 1, 0))  # (x, y, z) -> (z, y, x)
        _reject_zero_pixdim(p, img)
        unit = img.header.get_xyzt_units()[0]
        scale = _UNIT_TO_MM.get(unit, 1.0)  # "unknown" is taken as mm, as every CT converter writes
        # zooms are float32 in the header: take their shortest decimal (0.7, not 0.699999988)
        zx, zy, zz = (float(str(np.float32(v))) * scale for v in img.header.get_zooms()[:3])
        spacing = validate_spacing((zz, zy, zx), 3, f"{p}: spacing_zyx (NIfTI zooms reversed)")
        meta = {
            "source": "nifti",
            "path": str(p),
            "affine": np.asarray(img.affine, dtype=float).round(6).tolist(),
            "axcodes_xyz": "".join(str(c) for c in nio.aff2axcodes(img.affine)),
            "qform_code": int(img.header["qform_code"]) if "qform_code" in img.header else None,
            "sform_code": int(img.header["sform_code"]) if "sform_code" in img.header else None,
        }
    except CaseError:
        raise
    except Exception as exc:  # short voxel data, garbled header fields
        raise _damaged(p, "NIfTI", exc) from exc
    return arr, spacing, meta  # type: ignore[return-value]


def read_nifti(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    """Read a NIfTI volume with nibabel.

    The stored array is ``[x, y, z]`` (``[i, j, k]``); it is returned as ``volume_hu``
    ``float32`` ``(Z, Y, X)`` (transposed, voxel order otherwise kept), and
    ``spacing_zyx`` is the header's zooms reversed, in mm (zooms in metres or microns are
    converted). ``scl_slope``/``scl_inter`` are applied. A 4-D file with one volume is accepted.

    ``meta``: ``source="nifti"``, ``path``, ``affine`` (4×4, voxel ``(i, j, k)`` → RAS+ mm; the
    voxel ``[z, y, x]`` of the returned array is ``(i, j, k) = (x, y, z)``), ``axcodes_xyz``,
    ``qform_code``, ``sform_code``. Nothing is reoriented (see the module docstring).

    Raises FileNotFoundError for a missing file; :class:`UnreadableFileError` (a CaseError) naming
    the file for a truncated or corrupt one (a cut ``.nii.gz``, a header asking for more voxels than
    the file holds); CaseError for a 2-D or multi-volume image, a non-positive zoom, or NaN/inf voxels.
    """
    arr, spacing, meta = _nifti_raw(path)
    return validate_volume(arr, f"{meta['path']}: volume"), spacing, meta


def _itk_raw(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    import SimpleITK as sitk

    p = _exists(path, "image file")
    try:
        img = sitk.ReadImage(str(p))
    except Exception as exc:  # SimpleITK raises RuntimeError with ITK's multi-line report
        first = next((ln.strip() for ln in str(exc).splitlines() if "Exception" in ln or "rror" in ln), str(exc))
        raise _damaged(p, "image", RuntimeError(first)) from exc
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise CaseError(f"{p}: image has {img.GetNumberOfComponentsPerPixel()} components per voxel; need a scalar")
    if img.GetDimension() != 3:
        raise CaseError(f"{p}: image is {img.GetDimension()}-D with size (x, y, ...) = {img.GetSize()}; need 3-D")
    arr = sitk.GetArrayFromImage(img)  # already (z, y, x)
    spacing = validate_spacing(tuple(reversed(img.GetSpacing())), 3, f"{p}: spacing_zyx (ITK spacing reversed)")
    meta = {
        "source": "itk",
        "path": str(p),
        "origin": [float(v) for v in img.GetOrigin()],
        "direction": [float(v) for v in img.GetDirection()],
    }
    return np.ascontiguousarray(arr), spacing, meta  # type: ignore[return-value]


def read_itk(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    """Read a MetaImage (``.mha``/``.mhd``) or NRRD volume with SimpleITK.

    Returns ``volume_hu`` ``float32`` ``(Z, Y, X)`` (SimpleITK's array order), ``spacing_zyx``
    (SimpleITK's ``(x, y, z)`` spacing reversed) and ``meta`` with ``origin`` ``(x, y, z)`` and
    ``direction`` (row-major 3×3), both LPS, as ITK stores them. A file SimpleITK cannot read is an
    :class:`UnreadableFileError` naming it.
    """
    arr, spacing, meta = _itk_raw(path)
    return validate_volume(arr, f"{meta['path']}: volume"), spacing, meta


def read_image(
    path: str | os.PathLike | Sequence[str | os.PathLike], **kwargs
) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    """Read a CT volume from whatever ``path`` is: ``(volume_hu (Z, Y, X), spacing_zyx, meta)``.

    - a folder, a list of files, or a ``.dcm``/``.dicom``/``.ima`` or suffix-less file:
      :func:`~hiseg_sim.data.io_dicom.read_dicom_series` (``kwargs`` go to it, e.g. ``series_uid``);
    - ``.nii``/``.nii.gz``: :func:`read_nifti`;
    - ``.mha``/``.mhd``/``.nrrd``/``.nhdr``: :func:`read_itk`.
    """
    if not isinstance(path, (str, os.PathLike)):
        return read_dicom_series(path, **kwargs)
    p = _exists(path, "image path")
    suffix = _suffix(p)
    if p.is_dir() or suffix in ("", ".dcm", ".dicom", ".ima"):
        return read_dicom_series(p, **kwargs)
    if kwargs:
        raise TypeError(f"options {sorted(kwargs)} apply to DICOM only, not to {p.name}")
    if suffix in NIFTI_SUFFIXES:
        return read_nifti(p)
    if suffix in ITK_SUFFIXES:
        return read_itk(p)
    raise CaseError(
        f"{p}: unknown image format {suffix!r}; expected a DICOM folder or file, "
        f"{', '.join(NIFTI_SUFFIXES + ITK_SUFFIXES)}"
    )


def read_label_image(path: str | os.PathLike) -> tuple[np.ndarray, tuple[float, float, float], dict]:
    """Read a label map (NIfTI or ITK format) as integers ``(Z, Y, X)``, same axis handling as the images.

    Raises CaseError when the file holds non-integer values (a probability map, not labels).
    """
    p = _exists(path, "mask file")
    suffix = _suffix(p)
    if suffix in NIFTI_SUFFIXES:
        arr, spacing, meta = _nifti_raw(p)
    elif suffix in ITK_SUFFIXES:
        arr, spacing, meta = _itk_raw(p)
    else:
        raise CaseError(f"{p}: masks are read from NIfTI or {'/'.join(ITK_SUFFIXES)} files; got {suffix!r}")
    if np.issubdtype(arr.dtype, np.bool_):
        return arr.astype(np.uint8), spacing, meta
    if not np.issubdtype(arr.dtype, np.integer):
        bad = ~np.isfinite(arr) | (arr != np.round(arr))
        if bad.any():
            raise CaseError(
                f"{p}: a mask must hold integer labels; found {int(bad.sum())} non-integer value(s) "
                f"such as {arr[bad][:3].tolist()}"
            )
        arr = arr.astype(np.int64)
    return arr, spacing, meta
