import numpy as np
import pytest

from hiseg_sim.data.case import Case, CaseError


def make(**kw):
    vol = np.full((4, 8, 8), -800.0, np.float32)
    gt = np.zeros((4, 8, 8), bool); gt[1:3, 2:5, 2:5] = True
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
    v = np.zeros((4, 8, 8), np.float32); v[2, 3, 4] = np.nan
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
