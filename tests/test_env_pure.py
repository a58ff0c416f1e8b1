"""The pure parts of the environments: scoring from counts, viewport placement and crops, prompt maps."""

import numpy as np
import pytest

from hiseg_sim import metrics
from hiseg_sim.env.observation import draw_prompts, observation_space
from hiseg_sim.env.scoring import dice_from_counts, iou_from_counts, overlap_counts, per_slice_dice
from hiseg_sim.env.viewport import Viewport, crop2d, place_viewport, slab_range


def test_counts_agree_with_metrics():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = rng.random((2, 3, 9, 9)) < rng.random(2)[:, None, None, None] * 0.5
        inter, pa = overlap_counts(a, b)
        gb = int(b.sum())
        assert dice_from_counts(inter, pa, gb) == pytest.approx(metrics.dice(a, b))
        assert iou_from_counts(inter, pa, gb) == pytest.approx(metrics.iou(a, b))
    empty = np.zeros((4, 4), bool)
    assert dice_from_counts(0, 0, 0) == metrics.dice(empty, empty) == 1.0
    assert iou_from_counts(0, 0, 0) == 1.0 and dice_from_counts(0, 3, 0) == 0.0


def test_per_slice_dice_padding():
    d = per_slice_dice(np.array([2, 0, 0]), np.array([3, 0, 2]), np.array([3, 0, 0]), 5)
    assert d.tolist() == [pytest.approx(2 / 3), 1.0, 0.0, -1.0, -1.0]


def test_crop2d_pads_and_copies():
    img = np.arange(25, dtype=np.float32).reshape(5, 5)
    c = crop2d(img, -2, 3, 4, fill=-1000.0)
    assert c.shape == (4, 4) and (c[:2] == -1000).all() and (c[2:, 2:] == -1000).all()
    assert np.array_equal(c[2:, :2], img[0:2, 3:5])
    c[2, 0] = 99
    assert img[0, 3] == 3  # a copy, not a view
    assert (crop2d(img, 10, 10, 3, fill=0.0) == 0).all()


def test_slab_range():
    assert slab_range(10, 5, 64) == (0, 10)
    assert slab_range(100, 50, 64) == (18, 64)
    assert slab_range(100, 2, 64) == (0, 64)
    assert slab_range(100, 99, 64) == (36, 64)


def test_place_viewport_is_seeded_noisy_and_snapped():
    gt = np.zeros((200, 200), bool)
    gt[90:111, 60:81] = True  # centre (100, 70)
    tops = [place_viewport(gt, (0.7, 0.7), 96, np.random.default_rng(s), 3.0, 8) for s in range(200)]
    assert tops == [place_viewport(gt, (0.7, 0.7), 96, np.random.default_rng(s), 3.0, 8) for s in range(200)]
    centres = np.array(tops) + 48
    assert (centres % 8 == 0).all() and len({tuple(c) for c in centres}) > 2
    assert not any((c == (100, 70)).all() for c in centres)
    assert np.abs(centres - (100, 70)).max() <= 8 * 4  # a few grid steps at most at SD 3 mm
    # no snapping: still never exactly on the centre
    tops1 = [place_viewport(gt, (0.7, 0.7), 96, np.random.default_rng(s), 0.3, 1) for s in range(200)]
    assert not any((np.array(t) + 48 == (100, 70)).all() for t in tops1)
    with pytest.raises(ValueError):
        place_viewport(np.zeros((9, 9), bool), (1, 1), 8, np.random.default_rng(0))
    with pytest.raises(ValueError):
        place_viewport(gt, (1, 1), 8, np.random.default_rng(0), detection_sd_mm=0)


def test_viewport_dict_round_trip():
    vp = Viewport(3, 10, -5, 7, 96)
    assert Viewport.from_dict(vp.to_dict()) == vp and vp.centre_yx == (43, 55)


def test_draw_prompts():
    m = draw_prompts(16, ((0, 0, 1), (15, 15, 0), (7.4, 8.6, 1)), (2, 3, 12, 10))
    assert m.shape == (3, 16, 16) and m.dtype == np.uint8
    assert m[0, 0:2, 0:2].all() and m[0, 8:11, 6:9].all() and m[1, 14:16, 14:16].all()
    assert m[2, 3, 2:13].all() and m[2, 10, 2:13].all() and m[2, 3:11, 2].all() and m[2, 3:11, 12].all()
    assert m[2, 4:10, 3:12].sum() == 0
    assert not draw_prompts(8, (), None).any()
    assert draw_prompts(8, (), (-3, -3, 20, 20))[2].sum() > 0  # clipped, no error


def test_observation_space_shapes():
    sp = observation_space(32, max_slices=8)
    assert sp["image"].shape == (1, 32, 32) and sp["prompts"].shape == (3, 32, 32) and sp["slice"].n == 8
    assert "slice" not in observation_space(32).spaces
