"""Real scans a user brings, read into the toolkit's conventions.

One import for every reader; the work is done in the modules named below.

Conventions: volumes are ``float32`` HU ``(Z, Y, X)``; spacing ``(z, y, x)`` mm;
masks ``bool`` of the volume's shape. Readers return ``(volume_hu, spacing_zyx, meta)``; the
``*_from_*``/``iter_*`` functions return :class:`~hiseg_sim.data.case.Case` objects. Nothing is
resampled or reoriented; axis order is fixed once, at the reader (NIfTI/ITK ``[x, y, z]`` arrays
are transposed and their spacing reversed there, and nowhere else).

================================  =======================================================
:func:`read_dicom_series`         a DICOM CT series (folder, list of files, one file)
:func:`read_nifti`                ``.nii``/``.nii.gz`` (nibabel)
:func:`read_itk`                  ``.mha``/``.mhd``/``.nrrd`` (SimpleITK)
:func:`read_image`                any of the above, chosen by suffix / folder
:func:`read_label_image`          an integer label map (NIfTI or ITK format)
:func:`case_from_files`           image + label map → Case (optionally cropped)
:func:`crop_to_mask`              a Case cut to its gt's bounding box + margin (mm)
:func:`iter_msd_lung`             MSD Task06_Lung → one Case per connected tumour
:func:`iter_lidc_dicom`           the user's LIDC-IDRI DICOM + annotation database → one Case per nodule
================================  =======================================================

Errors: a missing path is a ``FileNotFoundError``; a file that cannot be read (truncated,
corrupt, a DICOM slice without its pixels) is an :class:`UnreadableFileError`; anything else
that cannot make a valid volume is a :class:`~hiseg_sim.data.case.CaseError`.
``UnreadableFileError`` is a ``CaseError``, which is a ``ValueError``. Each message is one line
that names the file, the problem and what to do. No reader drops a file silently: a DICOM folder
is read whole, every file not read is listed in ``meta["ignored_files"]`` with its reason.

Example::

    from hiseg_sim.data.io import case_from_files, iter_msd_lung, read_dicom_series
    vol, spacing_zyx, meta = read_dicom_series("LIDC-IDRI-0078/01-01-2000-1/3000566")
    case = case_from_files("scan.nii.gz", "scan_mask.nii.gz", crop_margin_mm=20)
    cases = list(iter_msd_lung("Task06_Lung", crop_margin_mm=20))
"""

from hiseg_sim.data.io_cases import (
    bbox_with_margin,
    case_from_files,
    crop_to_mask,
    iter_msd_lung,
    margin_voxels,
)
from hiseg_sim.data.io_dicom import (
    UnreadableFileError,
    iter_series_dirs,
    list_dicom_series,
    read_dicom_series,
)
from hiseg_sim.data.io_lidc import iter_lidc_dicom, match_z
from hiseg_sim.data.io_volume import read_image, read_itk, read_label_image, read_nifti

__all__ = [
    "UnreadableFileError",
    "bbox_with_margin",
    "case_from_files",
    "crop_to_mask",
    "iter_lidc_dicom",
    "iter_msd_lung",
    "iter_series_dirs",
    "list_dicom_series",
    "margin_voxels",
    "match_z",
    "read_dicom_series",
    "read_image",
    "read_itk",
    "read_label_image",
    "read_nifti",
]
