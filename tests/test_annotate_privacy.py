"""What of a user's scan reaches the session store: spacing and geometry, never a DICOM header field.

A small CT series is written as DICOM with identifying headers (patient name and id, birth date,
institution, UIDs) in a folder named after the patient, annotated through the service (TEST STUB
segmenter), and every byte the store and the exports hold is searched for them.
"""

from __future__ import annotations

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from hiseg_sim.annotate.cases import case_key, load_annotation_cases, pseudonymise
from hiseg_sim.annotate.export import write_parquet, write_trace_jsonl
from hiseg_sim.annotate.schema import ActionIn, ActionRequest, StartRequest
from hiseg_sim.annotate.service import AnnotationService

SECRETS = {
    "PatientName": "Doe^Janet",
    "PatientID": "SECRET-4711",
    "PatientBirthDate": "19580214",
    "InstitutionName": "St Elsewhere Chest Clinic",
    "AccessionNumber": "ACC99887766",
}
SHAPE = (10, 80, 80)  # z, y, x


def _write_series(folder, study_uid: str, series_uid: str) -> None:
    """A lung-like CT series (-850 HU, 2.5 mm slices, 0.7 mm pixels) with a 5-mm-radius nodule."""
    folder.mkdir(parents=True)
    z, y, x = np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij")
    nodule = ((z - 5) * 2.5) ** 2 + ((y - 40) * 0.7) ** 2 + ((x - 36) * 0.7) ** 2 <= 25
    hu = np.where(nodule, 30, -850) + np.random.default_rng(0).normal(0, 20, SHAPE)
    raw = np.rint(hu + 1024).astype(np.int16)
    for k in range(SHAPE[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.StudyInstanceUID, ds.SeriesInstanceUID = "CT", study_uid, series_uid
        for tag, value in SECRETS.items():
            setattr(ds, tag, value)
        ds.SeriesDescription = "CHEST Doe Janet"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-100.0, -120.0, 2.5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
        ds.Rows, ds.Columns = SHAPE[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelData = np.ascontiguousarray(raw[k], dtype="<i2").tobytes()
        ds.save_as(folder / f"IM{k:04d}.dcm", enforce_file_format=True)
    img = nib.Nifti1Image(nodule.astype(np.uint8).transpose(2, 1, 0), np.diag([0.7, 0.7, 2.5, 1.0]))
    img.header.set_zooms((0.7, 0.7, 2.5))
    nib.save(img, str(folder.parent / "Doe_Janet_mask.nii.gz"))


def test_a_dicom_case_is_logged_under_a_pseudonym_with_geometry_only(tmp_path):
    study_uid, series_uid = generate_uid(), generate_uid()
    _write_series(tmp_path / "Doe_Janet_CT", study_uid, series_uid)
    cohort = f"{tmp_path / 'Doe_Janet_CT'}::{tmp_path / 'Doe_Janet_mask.nii.gz'}"
    (case,) = load_annotation_cases(cohort)
    assert case.case_id.startswith("scan-") and len(case.case_id) == 17
    assert set(case.meta) <= {"source", "crop_origin_zyx", "uncropped_shape_zyx"}
    assert case.meta["source"] == "user_scan" and case.spacing_zyx == pytest.approx((2.5, 0.7, 0.7))
    assert pseudonymise(case) is case and case_key(case) == case.case_id  # already safe: left as it is

    svc = AnnotationService(
        tmp_path / "store" / "s.sqlite",
        cohort,
        "stub_env",
        cache_dir=tmp_path / "cache",
        prefetch=False,
        feedback="worked_example",
    )
    st = svc.start(StartRequest(participant="p01", group="g", study="pilot", client_ms=1))
    assert st.case_key == case.case_id
    for seq, action in enumerate(
        [
            {"kind": "box", "x0": 30, "y0": 30, "x1": 66, "y1": 66},
            {"kind": "point", "x": 48, "y": 50, "positive": True},
            {"kind": "propagate", "direction": 1},
            {"kind": "accept"},
        ],
        start=1,
    ):
        st = svc.act(st.session_id, ActionRequest(seq=seq, action=ActionIn(**action), client_ms=seq, pointer=None))
    assert st.phase == "feedback" and st.feedback.dice > 0  # the nodule was in view and segmented
    write_trace_jsonl(svc.store, st.session_id, tmp_path / "store" / "trace.jsonl")
    write_parquet(svc.store, tmp_path / "store" / "actions.parquet")
    ep = svc.store.episodes(st.session_id)[0]
    assert ep.spacing_zyx == pytest.approx((2.5, 0.7, 0.7)) and ep.case_key == case.case_id
    assert svc.store.session(st.session_id).cohort.startswith("files-")
    svc.close()

    # Long enough not to turn up by chance in a bit-packed mask.
    secrets = [*SECRETS.values(), "Doe_Janet", "Doe Janet", study_uid, series_uid, str(tmp_path)]
    files = sorted((tmp_path / "store").iterdir())
    assert {f.name for f in files} >= {"s.sqlite", "trace.jsonl", "actions.parquet"}
    for f in files:
        data = f.read_bytes()
        for s in secrets:
            assert s.encode() not in data, f"{s!r} reached {f.name}"


def test_cases_of_the_shipped_cohort_keep_their_ids():
    from tests.env_support import synthetic_cases

    case = synthetic_cases()[0]
    assert pseudonymise(case) is case and case_key(case) == "synth-0"
