"""Files into :class:`~hiseg_sim.data.case.Case` objects: image + mask pairs, crops, MSD Task06_Lung.

All arrays are ``(Z, Y, X)``; spacings ``(z, y, x)`` mm; crop origins are ``(z, y, x)`` voxel
indices into the grid the crop was cut from.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage

from hiseg_sim.data.case import Case, CaseError, validate_mask
from hiseg_sim.data.io_dicom import UnreadableFileError, short_reason
from hiseg_sim.data.io_volume import _suffix, read_image, read_label_image, read_nifti

__all__ = ["bbox_with_margin", "case_from_files", "crop_to_mask", "iter_msd_lung", "margin_voxels"]


def margin_voxels(
    margin_mm: float | tuple[float, float, float], spacing_zyx: tuple[float, float, float]
) -> tuple[int, int, int]:
    """Margin in mm (one number or ``(z, y, x)``) → whole voxels per axis ``(z, y, x)``, rounded up
    (within a relative 1e-6, so float32 spacings such as 0.699999988 mm do not add a voxel).

    >>> margin_voxels(5.0, (2.5, 0.7, 0.7))
    (2, 8, 8)
    """
    m = np.broadcast_to(np.asarray(margin_mm, dtype=float), (3,))
    if not np.all(np.isfinite(m)) or np.any(m < 0):
        raise ValueError(f"margin_mm must be finite and >= 0; got {margin_mm!r}")
    return tuple(int(math.ceil(mi / si * (1 - 1e-6))) for mi, si in zip(m, spacing_zyx))  # type: ignore[return-value]


def bbox_with_margin(mask: np.ndarray, margin_vox: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """Bounding box of the ``True`` voxels of ``mask`` ``(Z, Y, X)``, grown by ``margin_vox`` ``(z, y, x)``
    and clipped to the array. Raises CaseError for an empty mask."""
    idx = np.argwhere(mask)
    if idx.size == 0:
        raise CaseError("cannot crop around an empty mask")
    lo = np.maximum(idx.min(0) - np.asarray(margin_vox), 0)
    hi = np.minimum(idx.max(0) + 1 + np.asarray(margin_vox), mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def _cropped_meta(meta: dict, box: tuple[slice, slice, slice], full_shape: tuple[int, ...]) -> dict:
    out = dict(meta)
    prev = out.get("crop_origin_zyx", (0, 0, 0))
    out["crop_origin_zyx"] = tuple(int(p + s.start) for p, s in zip(prev, box))
    out.setdefault("uncropped_shape_zyx", tuple(int(n) for n in full_shape))
    zs = out.get("z_positions")
    if zs is not None and len(zs) == full_shape[0]:
        out["z_positions"] = list(zs)[box[0]]
    for k, v in meta.items():  # voxel maps on the volume's grid (e.g. a phantom's "anatomy" labels)
        if isinstance(v, np.ndarray) and v.shape == tuple(full_shape):
            out[k] = np.ascontiguousarray(v[box])
    return out


def crop_to_mask(
    case: Case, margin_mm: float | tuple[float, float, float] = 20.0, *, mask: np.ndarray | None = None
) -> Case:
    """Cut ``case`` down to the bounding box of ``mask`` (default ``case.gt``) plus ``margin_mm``.

    ``margin_mm`` is one number or ``(z, y, x)``, turned into whole voxels (rounded up) per axis and
    clipped at the volume's edges. Volume, ``gt`` and every reader mask are cut alike.
    ``meta["crop_origin_zyx"]`` becomes the index of the crop's ``[0, 0, 0]`` in the *original*
    (uncropped) grid (crops compose), ``meta["uncropped_shape_zyx"]`` that grid's shape, and
    ``meta["z_positions"]`` is cut with the slices, and so is every array in ``meta`` of the
    volume's shape (a phantom's ``anatomy`` label map); other meta (e.g. DICOM ``origin``) still
    describes the uncropped grid.
    """
    target = case.gt if mask is None else validate_mask(mask, case.shape, f"{case.case_id}: crop mask")
    box = bbox_with_margin(target, margin_voxels(margin_mm, case.spacing_zyx))
    return Case(
        case_id=case.case_id,
        volume_hu=case.volume_hu[box],
        spacing_zyx=case.spacing_zyx,
        gt=case.gt[box],
        reader_masks=tuple(m[box] for m in case.reader_masks),
        meta=_cropped_meta(case.meta, box, case.shape),
    )


def _stem(path: str | os.PathLike) -> str:
    p = Path(path)
    suf = _suffix(p)
    return p.name[: -len(suf)] if suf and p.is_file() else p.name


def _check_same_grid(img_shape, img_sp, lab_shape, lab_sp, image_path, mask_path, rtol: float = 1e-3) -> None:
    if tuple(lab_shape) != tuple(img_shape):
        raise CaseError(
            f"mask {mask_path} has shape (z, y, x) = {tuple(lab_shape)} but image {image_path} has shape "
            f"{tuple(img_shape)}; the mask must be on the image's grid (nothing is resampled)"
        )
    if not np.allclose(lab_sp, img_sp, rtol=rtol, atol=0):
        raise CaseError(
            f"mask {mask_path} has spacing (z, y, x) = {tuple(lab_sp)} mm but image {image_path} has "
            f"{tuple(img_sp)} mm; the mask must be on the image's grid (nothing is resampled)"
        )


def case_from_files(
    image_path: str | os.PathLike,
    mask_path: str | os.PathLike,
    case_id: str | None = None,
    label: int | None = 1,
    meta: dict | None = None,
    *,
    crop_margin_mm: float | tuple[float, float, float] | None = None,
    **read_kwargs,
) -> Case:
    """One :class:`Case` from an image (DICOM folder/file, NIfTI, MHA/NRRD) and a label map.

    The mask (NIfTI or MHA/NRRD) must lie on the image's grid: same shape ``(Z, Y, X)`` and
    spacing, else CaseError naming both; nothing is resampled. ``gt = mask == label`` (``label=None``:
    any non-zero voxel). With ``crop_margin_mm`` the Case is cut by :func:`crop_to_mask`.
    ``case_id`` defaults to the image's file name without suffix. ``read_kwargs`` go to the DICOM
    reader (e.g. ``series_uid``).

    Caveat for a DICOM image with a NIfTI mask: DICOM slices are sorted ascending along the slice
    normal and rows are kept; the NIfTI's stored order may differ (flipped rows or slices), which
    this function cannot detect from the shape. Prefer an image and mask converted by the same tool.
    """
    vol, spacing, img_meta = read_image(image_path, **read_kwargs)
    labels, lab_spacing, _ = read_label_image(mask_path)
    _check_same_grid(vol.shape, spacing, labels.shape, lab_spacing, image_path, mask_path)
    gt = labels != 0 if label is None else labels == label
    if not gt.any():
        found = np.unique(labels)
        raise CaseError(
            f"mask {mask_path} has no voxel with label {label}; labels found: {found[:10].tolist()}"
            + (" (the mask is empty)" if not found.any() else "")
        )
    info = {**img_meta, "image_path": str(image_path), "mask_path": str(mask_path), "label": label, **(meta or {})}
    case = Case(case_id=case_id or _stem(image_path), volume_hu=vol, spacing_zyx=spacing, gt=gt, meta=info)
    return case if crop_margin_mm is None else crop_to_mask(case, crop_margin_mm)


def _msd_entries(root: Path, split: str) -> list[tuple[Path, Path]]:
    if not root.is_dir():
        raise FileNotFoundError(f"MSD dataset folder does not exist: {root}")
    js = root / "dataset.json"
    if not js.is_file():
        raise FileNotFoundError(
            f"{js} not found: an MSD task folder (e.g. Task06_Lung/) holds dataset.json, imagesTr/ and labelsTr/"
        )
    try:
        desc = json.loads(js.read_bytes())
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, or bytes that are not UTF-8 text
        raise UnreadableFileError(
            f"{js} is not valid JSON ({short_reason(exc)}); re-download the dataset or fix the file", js
        ) from exc
    if split in ("test", "testing"):
        raise ValueError("the MSD test split has no labels, so it cannot give Cases; use split='train'")
    if split not in ("train", "training"):
        raise ValueError(f"split must be 'train'; got {split!r}")
    training = desc.get("training") if isinstance(desc, dict) else None
    if not isinstance(training, list) or not training:
        raise CaseError(
            f"{js} has no 'training' list of {{'image': ..., 'label': ...}} entries; is it an MSD dataset.json?"
        )
    pairs, missing = [], []
    for i, entry in enumerate(training):
        if not (
            isinstance(entry, dict) and isinstance(entry.get("image"), str) and isinstance(entry.get("label"), str)
        ):
            raise CaseError(
                f"{js}: training[{i}] is {entry!r:.120}; expected {{'image': 'path', 'label': 'path'}} (paths as text)"
            )
        img, lab = root / entry["image"], root / entry["label"]
        missing += [str(p) for p in (img, lab) if not p.is_file()]
        pairs.append((img, lab))
    if missing:
        raise FileNotFoundError(f"{len(missing)} file(s) listed in {js} do not exist, e.g.: " + ", ".join(missing[:5]))
    return pairs


def iter_msd_lung(
    root: str | os.PathLike,
    split: str = "train",
    crop_margin_mm: float | tuple[float, float, float] = 20.0,
    *,
    label: int = 1,
    min_voxels: int = 1,
) -> Iterator[Case]:
    """Yield one :class:`Case` per tumour in the Medical Segmentation Decathlon Task06_Lung layout.

    ``root`` holds ``dataset.json``, whose ``"training"`` list names ``{"image":
    "./imagesTr/lung_001.nii.gz", "label": "./labelsTr/lung_001.nii.gz"}`` pairs (paths relative to
    ``root``). Every pair is checked to exist before the first Case is read. Each volume is read
    with :func:`~hiseg_sim.data.io_volume.read_nifti` (``(Z, Y, X)``, zooms reversed); the voxels
    equal to ``label`` are split into 26-connected components (``scipy.ndimage.label``); each
    component of at least ``min_voxels`` voxels gives a Case cropped to its bounding box plus
    ``crop_margin_mm``, ``gt`` = that component only, ``case_id`` = ``"lung_001/c1"``, ``c2`` …
    in scipy's label order (raster order of each component's first voxel).

    Raises FileNotFoundError for a missing folder, ``dataset.json`` or listed file;
    :class:`~hiseg_sim.data.io_dicom.UnreadableFileError` naming the file for a ``dataset.json``
    that is not JSON or a truncated/corrupt NIfTI; CaseError for a malformed ``training`` list or an
    image and label on different grids.
    """
    root = Path(root)
    pairs = _msd_entries(root, split)
    structure = np.ones((3, 3, 3), bool)
    for img_path, lab_path in pairs:
        vol, spacing, meta = read_nifti(img_path)
        labels, lab_spacing, _ = read_label_image(lab_path)
        _check_same_grid(vol.shape, spacing, labels.shape, lab_spacing, img_path, lab_path)
        comps, n = ndimage.label(labels == label, structure=structure)
        if n == 0:
            warnings.warn(f"{lab_path}: no voxel with label {label}; no Case from {img_path.name}", stacklevel=2)
            continue
        sizes = np.bincount(comps.ravel(), minlength=n + 1)
        margin = margin_voxels(crop_margin_mm, spacing)
        stem = _stem(img_path)
        for i, obj in enumerate(ndimage.find_objects(comps), start=1):
            if sizes[i] < min_voxels:
                continue
            box = tuple(slice(max(s.start - m, 0), min(s.stop + m, dim)) for s, m, dim in zip(obj, margin, vol.shape))
            info = _cropped_meta(
                {
                    **meta,
                    "source": "msd_task06_lung",
                    "split": "train",
                    "image_path": str(img_path),
                    "mask_path": str(lab_path),
                    "label": label,
                    "component": i,
                    "n_components": n,
                    "component_voxels": int(sizes[i]),
                },
                box,
                vol.shape,
            )
            yield Case(
                case_id=f"{stem}/c{i}",
                volume_hu=vol[box].copy(),  # not a view: the full volume is freed
                spacing_zyx=spacing,
                gt=comps[box] == i,
                meta=info,
            )
