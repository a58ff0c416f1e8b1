import numpy as np
import pytest

from hiseg_sim.data.case import Case, CaseError


def make(**kw):
    vol = np.full((4, 8, 8), -800.0, np.float32)
    gt = np.zeros((4, 8, 8), bool)
    gt[1:3, 2:5, 2:5] = True
    args = dict(case_id="c", volume_hu=vol, spacing_zyx=(2.0, 0.7, 0.7), gt=gt)
    args.update(kw)
    return Case(**args)


def test_valid_case_converts_types():
    c = make(volume_hu=np.zeros((4, 8, 8), np.int16), gt=make().gt.astype(np.uint8))
    assert c.volume_hu.dtype == np.float32 and c.gt.dtype == bool
    assert c.shape == (4, 8, 8)
    assert c.key_slice in (1, 2)
    assert list(c.gt_slices) == [1, 2]


def test_nan_volume_names_the_voxel():
    v = np.zeros((4, 8, 8), np.float32)
    v[2, 3, 4] = np.nan
    with pytest.raises(CaseError, match=r"non-finite.*\(2, 3, 4\)"):
        make(volume_hu=v)


@pytest.mark.parametrize("shape", [(8, 8), (1, 4, 8, 8)])
def test_wrong_number_of_dimensions(shape):
    with pytest.raises(CaseError, match="3-D"):
        make(volume_hu=np.zeros(shape))


@pytest.mark.parametrize("sp", [(0.0, 1, 1), (1, -1, 1), (1, 1), (1, float("nan"), 1)])
def test_bad_spacing(sp):
    with pytest.raises(CaseError, match="spacing"):
        make(spacing_zyx=sp)


def test_mask_of_other_shape_names_both_shapes():
    with pytest.raises(CaseError, match=r"\(4, 8, 7\).*\(4, 8, 8\)"):
        make(gt=np.ones((4, 8, 7), bool))


def test_empty_gt_and_non_binary_reader_mask():
    with pytest.raises(CaseError, match="empty"):
        make(gt=np.zeros((4, 8, 8), bool))
    with pytest.raises(CaseError, match="binary"):
        make(reader_masks=(np.full((4, 8, 8), 2),))


@pytest.mark.parametrize(
    "sp", [(1e-4, 1, 1), (1, 1, 1e4), (1, float("inf"), 1), ("1", 1, 1), (True, 1, 1), "111", None, (1, 1, 1, 1)]
)
def test_spacing_outside_the_documented_range(sp):
    with pytest.raises(CaseError, match="spacing"):
        make(spacing_zyx=sp)


def test_spacing_bounds_themselves_are_accepted():
    assert make(spacing_zyx=(1e-3, 1e3, np.float32(0.7))).spacing_zyx == (1e-3, 1e3, float(np.float32(0.7)))


@pytest.mark.parametrize("cid", ["", "   ", None, 7])
def test_case_id_must_be_a_non_empty_str(cid):
    with pytest.raises(CaseError, match="case_id must be a non-empty str"):
        make(case_id=cid)


def test_volume_beyond_float32_names_the_voxel():
    v = np.zeros((4, 8, 8))
    v[1, 2, 3] = 1e39
    with pytest.raises(CaseError, match=r"beyond the float32 range .*\(1, 2, 3\)"):
        make(volume_hu=v)


def test_volume_and_masks_that_are_not_arrays_of_numbers():
    with pytest.raises(CaseError, match="volume_hu is not an array"):
        make(volume_hu=[[[0.0, 1.0]], [[0.0]]])
    with pytest.raises(CaseError, match="real numbers"):
        make(volume_hu=np.zeros((4, 8, 8), bool))
    gt = make().gt
    with pytest.raises(CaseError, match=r"binary \(bool, or 0/1 integers or floats\); got dtype object"):
        make(gt=gt.astype(object))
    with pytest.raises(CaseError, match="binary"):
        make(gt=np.where(gt, 1.0, np.nan))


def test_reader_masks_and_meta_containers():
    gt = make().gt
    with pytest.raises(
        CaseError,
        match=r"reader_masks must be a sequence of \(Z, Y, X\) masks, e.g. \(mask,\); "
        r"got an array of shape \(4, 8, 8\)",
    ):
        make(reader_masks=gt)
    with pytest.raises(CaseError, match="reader_masks must be a sequence"):
        make(reader_masks=None)
    assert len(make(reader_masks=np.stack([gt, gt])).reader_masks) == 2  # (readers, Z, Y, X)
    with pytest.raises(CaseError, match="meta must be a dict"):
        make(meta=None)
