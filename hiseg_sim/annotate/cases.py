"""The nodules a person annotates: a named cohort, or the user's scans through the loaders, made safe to log.

``cohort`` is one of

- a cohort of the phantom manifest or a registered case source (``"default"``; see
  :func:`hiseg_sim.data.sources.load_cases`);
- a folder in the MSD Task06_Lung layout (it holds ``dataset.json``): one case per tumour;
- a folder of LIDC-IDRI DICOM series: one case per nodule of the annotation database;
- ``IMAGE::MASK``: one scan (DICOM folder, NIfTI, MHA/NRRD) and its label map.

Scans from the user's files are cropped to the nodule plus 20 mm, as the default cohort is.

What reaches the session store and the traces is the *case key* (and, for the cohort, its name or
``files-<12 hex>``): the case id for the shipped
cohorts and for NIfTI files, and for a case read from DICOM a pseudonym ``scan-<12 hex>`` (a hash
of its id and series), with a ``meta`` reduced to geometry. Nothing of a DICOM header other than
the spacing and geometry reaches the store. Replaying a recorded session needs the same cases:
``load_annotation_cases(cohort)`` with the same ``cohort``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from hiseg_sim.data.case import Case

__all__ = ["CROP_MARGIN_MM", "case_key", "cohort_label", "load_annotation_cases", "pseudonymise"]

#: Margin kept around a user's nodule (mm), as the default cohort's crops.
CROP_MARGIN_MM = 20.0
#: ``meta`` entries a case read from DICOM keeps: geometry only.
_GEOMETRY_META = ("crop_origin_zyx", "uncropped_shape_zyx")
_DICOM_SOURCES = {"dicom", "lidc_dicom"}
#: ``meta`` entries only a DICOM reader writes (a phantom's ``patient_id`` is a public LIDC number).
_DICOM_KEYS = {"series_uid", "study_uid", "series_description", "dicom_dir"}


def _from_dicom(case: Case) -> bool:
    meta = case.meta
    return meta.get("source") in _DICOM_SOURCES or bool(_DICOM_KEYS & set(meta))


def case_key(case: Case) -> str:
    """The name a case is logged under: its id, or ``scan-<hash>`` for a case read from DICOM."""
    if not _from_dicom(case):
        return case.case_id
    h = hashlib.sha256(f"{case.case_id}|{case.meta.get('series_uid', '')}".encode()).hexdigest()
    return f"scan-{h[:12]}"


def cohort_label(cohort: str) -> str:
    """How the store names a cohort: its name, or ``files-<12 hex>`` for the user's files (a folder
    name may name the patient)."""
    if "::" not in cohort and not Path(cohort).expanduser().exists():
        return cohort
    return "files-" + hashlib.sha256(cohort.encode()).hexdigest()[:12]


def pseudonymise(case: Case) -> Case:
    """The case under its :func:`case_key`; a DICOM case keeps only the geometry of its ``meta``."""
    if not _from_dicom(case):
        return case
    meta = {k: case.meta[k] for k in _GEOMETRY_META if k in case.meta}
    meta["source"] = "user_scan"
    return Case(case_key(case), case.volume_hu, case.spacing_zyx, case.gt, case.reader_masks, meta)


def _user_cases(spec: str) -> list[Case] | None:
    """Cases of a path-like ``cohort`` (None if it is not one)."""
    from hiseg_sim.data import io

    if "::" in spec:
        image, mask = spec.split("::", 1)
        return [io.case_from_files(image, mask, crop_margin_mm=CROP_MARGIN_MM)]
    p = Path(spec).expanduser()
    if not p.exists():
        if "/" in spec or spec.startswith("."):
            raise FileNotFoundError(
                f"cohort {spec!r} looks like a path but does not exist; give an existing folder, "
                "IMAGE::MASK, or a cohort name such as 'default'"
            )
        return None
    if (p / "dataset.json").is_file():
        return list(io.iter_msd_lung(p, crop_margin_mm=CROP_MARGIN_MM))
    if p.is_dir():
        return list(io.iter_lidc_dicom(p))
    raise ValueError(
        f"cohort {spec!r} is a file; give IMAGE::MASK for one scan and its label map, an MSD "
        "Task06_Lung folder or a folder of LIDC-IDRI DICOM"
    )


def load_annotation_cases(cohort: str = "default", limit: int | None = None) -> list[Case]:
    """The cases of ``cohort`` (see the module docstring), pseudonymised, at most ``limit``.

    Raises:
        ValueError: no case, or two cases under one key (the message says which).
    """
    from hiseg_sim.data.sources import load_cases

    if not isinstance(cohort, str) or not cohort:
        raise ValueError(f"cohort must be a non-empty string (a cohort name or a path); got {cohort!r}")
    cases = _user_cases(cohort)
    if cases is None:
        cases = list(load_cases(cohort, limit=limit))
    cases = [pseudonymise(c) for c in cases][:limit]
    if not cases:
        raise ValueError(f"cohort {cohort!r} holds no case to annotate; check the folder or the cohort name")
    keys = [c.case_id for c in cases]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ValueError(f"cohort {cohort!r} holds several cases named {dup[0]!r}; give each case its own id")
    return cases
