import math

import numpy as np
import pytest

from hiseg_sim import metrics as M


def ball(shape, center, r, spacing=(1, 1, 1)):
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    return sum((g - c * s) ** 2 for g, c, s in zip(grids, center, spacing)) <= r**2


def test_dice_and_iou_on_hand_made_masks():
    a = np.zeros((4, 4), bool)
    a[0, :2] = True  # 2 px
    b = np.zeros((4, 4), bool)
    b[0, 1:4] = True  # 3 px, 1 shared
    assert M.dice(a, b) == pytest.approx(2 * 1 / 5)
    assert M.iou(a, b) == pytest.approx(1 / 4)


@pytest.mark.parametrize("fn,both,one", [(M.dice, 1.0, 0.0), (M.iou, 1.0, 0.0), (M.nsd, 1.0, 0.0)])
def test_empty_policy(fn, both, one):
    e = np.zeros((5, 5), bool)
    f = e.copy()
    f[2, 2] = True
    assert fn(e, e) == both
    assert fn(e, f) == one and fn(f, e) == one


def test_hd95_empty_policy():
    e = np.zeros((5, 5), bool)
    f = e.copy()
    f[1, 1] = True
    assert M.hd95(e, e) == 0.0
    assert math.isnan(M.hd95(e, f))


def test_hd95_of_shifted_square_respects_spacing():
    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b = np.roll(a, 3, axis=1)  # shifted 3 px along x
    assert M.hd95(a, b, spacing=(1.0, 1.0)) == pytest.approx(3.0)
    assert M.hd95(a, b, spacing=(1.0, 0.5)) == pytest.approx(1.5)
    assert M.hd95(a, a) == 0.0


def test_hd95_concentric_balls_3d_anisotropic():
    sp = (2.0, 0.5, 0.5)
    shape = (30, 100, 100)
    a = ball(shape, (15, 50, 50), 10.0, sp)
    b = ball(shape, (15, 50, 50), 14.0, sp)
    assert M.hd95(a, b, sp) == pytest.approx(4.0, abs=1.1)


def test_nsd_tolerance():
    a = np.zeros((20, 20), bool)
    a[5:10, 5:10] = True
    b = np.roll(a, 2, axis=1)
    assert M.nsd(a, b, tolerance_mm=0.0) < M.nsd(a, b, tolerance_mm=2.0) == 1.0


def test_volume_error_and_shape_checks():
    a = np.ones((2, 2, 2), bool)
    b = np.zeros((2, 2, 2), bool)
    b[0] = True
    ve = M.volume_error(a, b, spacing=(2, 1, 1))
    assert ve["abs_mm3"] == pytest.approx(8.0) and ve["rel"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        M.dice(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(a, b, spacing=(0, 1, 1))


def test_max_diameter():
    m = np.zeros((30, 30), bool)
    m[10, 5:25] = True  # 20 px line
    assert M.max_diameter_mm(m, (1.0, 0.5)) == pytest.approx(19 * 0.5 + 0.75)
    assert M.max_diameter_mm(np.zeros((3, 3), bool)) == 0.0


def test_all_metrics_keys():
    a = np.zeros((10, 10), bool)
    a[2:6, 2:6] = True
    out = M.all_metrics(a, a, spacing=(1, 1))
    assert out["dice"] == 1.0 and out["hd95"] == 0.0 and out["nsd"] == 1.0 and out["volume_error_mm3"] == 0.0
