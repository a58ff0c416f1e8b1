"""Each click / box robot reproduces its source's rule on hand-made masks."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy import ndimage

from hiseg_sim.annotators.robots import rules as R
from hiseg_sim.annotators.robots.rules import Click


def box_mask(shape, *slices):
    m = np.zeros(shape, bool)
    m[tuple(slices)] = True
    return m


def padded_edt(mask):
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    return ndimage.distance_transform_edt(np.pad(mask, 1))[inner]


# ------------------------------------------------------------------------------------------ Click


def test_click_coordinate_order_and_sam_arrays():
    c = Click.at((3, 5), True)  # numpy index (y=3, x=5)
    assert c.xy == (5, 3) and c.index == (3, 5) and c.label == 1
    c3 = Click.at((1, 2, 3), False)  # (z, y, x)
    assert c3.xy == (3, 2, 1) and c3.index == (1, 2, 3) and c3.label == 0
    coords, labels = R.clicks_to_sam([c, Click((1, 1), False)])
    assert coords.shape == (2, 2) and coords[0].tolist() == [5, 3] and labels.tolist() == [1, 0]


# ------------------------------------------------------------------------------------------- RITM


def test_ritm_fn_larger_clicks_fn_centre_positive():
    gt = box_mask((20, 20), slice(1, 6), slice(3, 8))  # y 1..5, x 3..7 -> centre y=3, x=5
    pred = box_mask((20, 20), slice(15, 17), slice(15, 17))  # small FP
    assert R.ritm_click(pred, gt) == Click((5, 3), True)


def test_ritm_fp_larger_clicks_fp_centre_negative():
    gt = box_mask((20, 20), slice(1, 6), slice(3, 8))
    pred = gt | box_mask((20, 20), slice(10, 17), slice(11, 18))  # 7x7 FP, centre y=13, x=14
    assert R.ritm_click(pred, gt) == Click((14, 13), False)


def test_ritm_tie_goes_negative():
    gt = box_mask((20, 20), slice(1, 6), slice(1, 6))
    pred = box_mask((20, 20), slice(10, 15), slice(10, 15))
    assert R.ritm_click(pred, gt) == Click((12, 12), False)


def test_ritm_padding_makes_the_border_background():
    gt = box_mask((10, 10), slice(None), slice(0, 6))  # a band on the left edge, full height
    pred = np.zeros_like(gt)
    # padded: depth 3, first in raster order at y=2, x=2
    assert R.ritm_click(pred, gt, pad=True) == Click((2, 2), True)
    # unpadded: only x = 6 is background, so the deepest pixel is on the border, first at y=0
    assert R.ritm_click(pred, gt, pad=False) == Click((0, 0), True)


def test_ritm_never_clicks_the_same_pixel_twice():
    gt = box_mask((12, 12), slice(2, 7), slice(2, 7))
    pred = np.zeros_like(gt)
    first = R.ritm_click(pred, gt)
    assert first == Click((4, 4), True)
    # next deepest (distance 2), first in raster order
    assert R.ritm_click(pred, gt, previous=[first]) == Click((3, 3), True)


def test_ritm_ignore_and_no_error():
    gt = box_mask((12, 12), slice(2, 7), slice(2, 7))
    assert R.ritm_click(gt, gt) is None
    assert R.ritm_click(np.zeros_like(gt), gt, ignore=gt) is None


def test_ritm_picks_depth_not_size():
    # FN: a long one-pixel line (40 px, depth 1); FP: a 6x6 block (36 px, depth 3)
    gt = box_mask((20, 50), slice(1, 2), slice(2, 42))
    pred = box_mask((20, 50), slice(8, 14), slice(8, 14))
    c = R.ritm_click(pred, gt)
    assert c is not None and not c.positive and pred[c.index] and not gt[c.index]


# ---------------------------------------------------------------------------------------- micro-sam


def _ring(gt, margin=3):
    ys, xs = np.nonzero(gt)
    box = np.zeros_like(gt)
    box[max(ys.min() - margin, 0) : ys.max() + 1 + margin, max(xs.min() - margin, 0) : xs.max() + 1 + margin] = True
    return box & ~gt


def _disc(shape, cy, cx, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_microsam_pos_in_fn_neg_in_fp():
    gt = _disc((40, 40), 20, 20, 8)
    pred = _disc((40, 40), 20, 24, 8)
    rng = np.random.default_rng(0)
    for _ in range(50):
        pos, neg = R.microsam_clicks(pred, gt, rng)
        assert pos.positive and (gt & ~pred)[pos.index]
        assert not neg.positive and (pred & ~gt)[neg.index]


def test_microsam_fallbacks():
    gt = _disc((40, 40), 20, 20, 8)
    rng = np.random.default_rng(1)
    ring = _ring(gt)
    inner = _disc((40, 40), 20, 20, 4)
    # only FN: negative from the object's box grown by 3 px, minus the object
    negs = []
    for _ in range(400):
        pos, neg = R.microsam_clicks(inner, gt, rng)
        assert (gt & ~inner)[pos.index] and ring[neg.index]
        negs.append(neg.index)
    ys = np.array([n[0] for n in negs])
    assert ys.min() >= 12 - 3 and ys.max() <= 28 + 3 and (ys < 12).any()  # reaches the margin
    # only FP: positive where the model was already right (the overlap)
    big = _disc((40, 40), 20, 20, 12)
    for _ in range(50):
        pos, neg = R.microsam_clicks(big, gt, rng)
        assert gt[pos.index] and (big & ~gt)[neg.index]
    # no error: still two clicks, positive in the object, negative in the ring
    for _ in range(50):
        pos, neg = R.microsam_clicks(gt, gt, rng)
        assert gt[pos.index] and ring[neg.index]
    with pytest.raises(ValueError):
        R.microsam_clicks(gt, np.zeros_like(gt), rng)


def test_microsam_is_uniform():
    gt = box_mask((10, 10), slice(2, 5), slice(2, 6))  # 12 px, all FN
    pred = np.zeros_like(gt)
    rng = np.random.default_rng(2)
    n = 6000
    counts = {}
    for _ in range(n):
        pos, _ = R.microsam_clicks(pred, gt, rng)
        counts[pos.index] = counts.get(pos.index, 0) + 1
    assert len(counts) == 12
    obs = np.array(list(counts.values()), float)
    chi2 = ((obs - n / 12) ** 2 / (n / 12)).sum()
    assert chi2 < 40  # df = 11; the 99.99 % quantile is about 35


def test_microsam_3d_xyz():
    gt = box_mask((6, 10, 12), slice(1, 4), slice(2, 6), slice(3, 9))
    pred = box_mask((6, 10, 12), slice(1, 4), slice(2, 6), slice(5, 11))
    pos, neg = R.microsam_clicks(pred, gt, np.random.default_rng(3))
    assert len(pos.xy) == 3 and (gt & ~pred)[pos.index] and (pred & ~gt)[neg.index]
    assert pos.xy == tuple(reversed(pos.index))


# ------------------------------------------------------------------------------------------ DeepGrow


def test_deepgrow_larger_region_by_count_and_ties():
    # FN line: 40 px but shallow; FP block 6x6 = 36 px but deep. DeepGrow counts, RITM measures depth.
    gt = box_mask((20, 50), slice(1, 2), slice(2, 42))
    pred = box_mask((20, 50), slice(8, 14), slice(8, 14))
    rng = np.random.default_rng(0)
    c = R.deepgrow_click(pred, gt, rng)
    assert c.positive and gt[c.index]
    pred2 = box_mask((20, 50), slice(8, 15), slice(8, 15))  # 49 > 40
    c = R.deepgrow_click(pred2, gt, rng)
    assert not c.positive and pred2[c.index] and not gt[c.index]
    # tie in count -> positive
    gt3 = box_mask((20, 20), slice(1, 5), slice(1, 5))
    pred3 = box_mask((20, 20), slice(10, 14), slice(10, 14))
    assert R.deepgrow_click(pred3, gt3, rng).positive
    assert R.deepgrow_click(gt3, gt3, rng) is None


def test_deepgrow_samples_the_interior_with_exp_weights():
    gt = box_mask((30, 30), slice(5, 20), slice(5, 20))  # 15x15 FN
    pred = np.zeros_like(gt)
    dist = ndimage.distance_transform_cdt(gt.astype(np.uint8))
    rng = np.random.default_rng(4)
    d = np.array([dist[R.deepgrow_click(pred, gt, rng).index] for _ in range(3000)])
    assert d.mean() > dist[gt].mean() + 1.0
    # frequency of each distance level against exp(d) - 1 times its voxel count
    levels = np.unique(dist[gt])
    w = np.array([(dist[gt] == k).sum() * (np.exp(k) - 1) for k in levels])
    expected = w / w.sum()
    observed = np.array([(d == k).mean() for k in levels])
    assert np.abs(observed - expected).max() < 0.03


def test_deepgrow_image_border_is_not_background():
    gt = box_mask((10, 10), slice(None), slice(0, 4))  # FN band on the left edge
    pred = np.zeros_like(gt)
    rng = np.random.default_rng(5)
    xs = np.array([R.deepgrow_click(pred, gt, rng).xy[0] for _ in range(2000)])
    # chessboard distance to x=4 only: x=0 is the deepest column (4), x=3 the shallowest (1)
    counts = np.bincount(xs, minlength=4)
    assert counts[0] > counts[1] > counts[2] > counts[3]


# ----------------------------------------------------------------------------------------- SAM-Med3D


def test_sammed3d_ritm_inner_cube():
    gt = box_mask((16, 16, 16), slice(2, 9), slice(2, 9), slice(2, 9))
    pred = np.zeros_like(gt)
    rng = np.random.default_rng(6)
    seen = set()
    for _ in range(1500):
        c = R.sammed3d_click(pred, gt, rng, method="ritm")
        assert c.positive and all(4 <= i <= 6 for i in c.index)  # distance 3 or 4 > 4/2
        seen.add(c.index)
    assert len(seen) == 27


def test_sammed3d_ritm_every_sample_beyond_half_max():
    rng = np.random.default_rng(7)
    gt = np.zeros((12, 20, 20), bool)
    gt[2:10, 3:15, 4:16] = True
    pred = np.zeros_like(gt)
    pred[3:9, 5:18, 2:12] = True  # both FN and FP
    fn, fp = gt & ~pred, pred & ~gt
    dfn, dfp = padded_edt(fn), padded_edt(fp)
    positive = dfn.max() > dfp.max()
    chosen = dfn if positive else dfp
    half = max(dfn.max(), dfp.max()) / 2
    for _ in range(300):
        c = R.sammed3d_click(pred, gt, rng, method="ritm")
        assert chosen[c.index] > half and c.positive == positive
        assert (fn if positive else fp)[c.index]


def test_sammed3d_random_covers_the_error_with_correct_labels():
    gt = np.zeros((4, 6, 6), bool)
    gt[1, 1:4, 1:4] = True
    pred = gt.copy()
    pred[1, 1, 1:3] = False  # FN: 2 voxels
    pred[2, 4, 3:6] = True  # FP: 3 voxels
    fn, fp = gt & ~pred, pred & ~gt
    rng = np.random.default_rng(8)
    seen = set()
    for _ in range(500):
        c = R.sammed3d_click(pred, gt, rng, method="random")
        assert (fn | fp)[c.index] and c.positive == bool(fn[c.index])
        seen.add(c.index)
    assert seen == set(map(tuple, np.argwhere(fn | fp)))


def test_sammed3d_no_error_and_errors():
    gt = box_mask((8, 8, 8), slice(2, 5), slice(2, 5), slice(2, 5))
    rng = np.random.default_rng(9)
    assert R.sammed3d_click(gt, gt, rng, method="ritm") is None
    assert R.sammed3d_click(gt, gt, rng, method="random") is None
    assert R.sammed3d_click(gt, gt, rng, method="ritm", no_error="source") == Click((4, 4, 4), False)
    c = R.sammed3d_click(gt, gt, rng, method="random", no_error="source")
    assert c.positive and gt[c.index]
    with pytest.raises(ValueError):
        R.sammed3d_click(gt, np.zeros_like(gt), rng)
    with pytest.raises(ValueError):
        R.sammed3d_click(gt, gt, rng, method="nearest")


# ------------------------------------------------------------------------------------------ MedSegFM


def test_medsegfm_centre_of_largest_component_3d():
    gt = np.zeros((20, 20, 20), bool)
    gt[2:7, 3:8, 10:15] = True  # 5^3 FN, centre z=4, y=5, x=12
    pred = np.zeros_like(gt)
    pred[12:15, 12:15, 2:5] = True  # 3^3 FP
    assert R.medsegfm_click(pred, gt) == Click((12, 5, 4), True)
    # make the FP the larger one
    pred2 = np.zeros_like(gt)
    pred2[10:17, 10:17, 1:8] = True  # 7^3 FP, centre z=13, y=13, x=4
    assert R.medsegfm_click(pred2, gt) == Click((4, 13, 13), False)
    assert R.medsegfm_click(gt, gt) is None


def test_medsegfm_fn_and_fp_merge_under_26_connectivity_and_ties_use_seed_42():
    gt = np.zeros((16, 16, 16), bool)
    pred = np.zeros_like(gt)
    gt[1:4, 1:4, 1:4] = True  # FN 27
    pred[4:7, 4:7, 4:7] = True  # FP 27, touching the FN at a corner only
    gt[10:12, 10:14, 9:14] = True  # separate FN of 40 < 54
    err = pred != gt
    c = R.medsegfm_click(pred, gt)
    merged = np.zeros_like(gt)
    merged[1:7, 1:7, 1:7] = err[1:7, 1:7, 1:7]
    assert merged[c.index]
    dist = padded_edt(merged) * merged
    maxima = np.argwhere(dist == dist.max())
    assert len(maxima) == 2  # the two cube centres tie
    expected = tuple(maxima[np.random.RandomState(42).choice(len(maxima))])
    assert c.index == expected and c.positive == bool(gt[expected])
    assert R.medsegfm_click(pred, gt) == c  # deterministic, no rng


def test_medsegfm_is_the_edt_maximum_not_the_centre_of_mass_2d():
    gt = np.zeros((30, 30), bool)
    gt[2:25, 2:8] = True  # an L: vertical bar ...
    gt[19:25, 2:28] = True  # ... and horizontal bar
    pred = np.zeros_like(gt)
    c = R.medsegfm_click(pred, gt)
    com = tuple(int(round(v)) for v in ndimage.center_of_mass(gt))
    assert not gt[com]  # the centroid falls outside the L
    dist = padded_edt(gt)
    assert gt[c.index] and c.positive and dist[c.index] == dist.max()


# -------------------------------------------------------------------------------------------- boxes


def test_medsam_box_shifts_each_side_outward_0_to_20():
    gt = box_mask((100, 100), slice(40, 60), slice(35, 55))
    x0, y0, x1, y1 = R.gt_box(gt)
    assert (x0, y0, x1, y1) == (35, 40, 54, 59)
    rng = np.random.default_rng(10)
    shifts = np.array(
        [
            np.array([x0, y0, 0, 0])
            - R.medsam_box(gt, rng, image_size=1024) * np.array([1, 1, -1, -1])
            + np.array([0, 0, -x1, -y1])
            for _ in range(2000)
        ]
    )
    assert np.all(shifts == np.round(shifts)) and shifts.min() == 0 and shifts.max() == 20
    for k in range(4):
        assert set(np.unique(shifts[:, k])) == set(range(21))


def test_medsam_box_scales_and_clips():
    gt = box_mask((100, 100), slice(40, 60), slice(40, 60))
    rng = np.random.default_rng(11)
    # 512-px image at 1024-px input: shifts are multiples of 0.5 px, at most 10
    b = np.array([R.medsam_box(gt, rng, image_size=512) for _ in range(1000)])
    out = np.abs(b - R.gt_box(gt))
    assert out.max() == 10 and np.all((out * 2) == np.round(out * 2))
    # default image_size = max(shape) = 100 -> at most 20 * 100 / 1024 px
    b = np.array([R.medsam_box(gt, rng) for _ in range(500)])
    assert np.abs(b - R.gt_box(gt)).max() <= 20 * 100 / 1024 + 1e-12
    # LiteMedSAM: 5 px at 256 on a 512-px image -> multiples of 2, at most 10
    b = np.array([R.medsam_box(gt, rng, 5, 256, 512, clip="litemedsam") for _ in range(1000)])
    out = np.abs(b - R.gt_box(gt))
    assert out.max() == 10 and np.all(out % 2 == 0)
    # clipping at the border: MedSAM to W, LiteMedSAM to W - 1
    edge = box_mask((50, 50), slice(0, 10), slice(45, 50))
    b = np.array([R.medsam_box(edge, rng, image_size=1024) for _ in range(200)])
    assert b[:, 1].min() == 0 and b[:, 2].max() == 50 and b[:, 3].max() <= 50
    b = np.array([R.medsam_box(edge, rng, image_size=1024, clip="litemedsam") for _ in range(200)])
    assert b[:, 2].max() == 49


def test_sam_noisy_box_sd_is_10_percent_of_the_side_and_capped():
    gt = box_mask((200, 200), slice(80, 110), slice(50, 110))  # h = 30, w = 60
    rng = np.random.default_rng(12)
    noise = np.array([R.sam_noisy_box(gt, rng, image_size=1024) for _ in range(4000)]) - R.gt_box(gt)
    sd = noise.std(axis=0)
    assert np.allclose(sd, [6.0, 3.0, 6.0, 3.0], rtol=0.08)
    assert np.abs(noise.mean(axis=0)).max() < 0.5
    assert np.abs(noise).max() <= 20
    # a big box: SD 10 % of 300 = 30 px, capped at 20 px -> about half the draws at the cap
    big = box_mask((304, 304), slice(2, 302), slice(2, 302))
    noise = np.array([R.sam_noisy_box(big, rng, image_size=1024) for _ in range(600)]) - R.gt_box(big)
    assert np.abs(noise).max() == 20 and 0.35 < (np.abs(noise) == 20).mean() < 0.65
    # the other reading: the cap applies to the SD
    noise = np.array([R.sam_noisy_box(big, rng, image_size=1024, cap="sd") for _ in range(1500)]) - R.gt_box(big)
    assert np.allclose(noise.std(axis=0), 20, rtol=0.1) and np.abs(noise).max() > 20
    # scaled cap: a 2048-px image at 1024-px input -> 40 px
    noise = np.array([R.sam_noisy_box(big, rng, image_size=2048) for _ in range(300)]) - R.gt_box(big)
    assert np.abs(noise).max() <= 40 and np.abs(noise).max() > 20


# ------------------------------------------------------------------------------------- determinism


@pytest.mark.parametrize(
    "fn",
    [
        R.microsam_clicks,
        R.deepgrow_click,
        functools.partial(R.sammed3d_click, method="ritm"),
        functools.partial(R.sammed3d_click, method="random"),
    ],
    ids=["microsam", "deepgrow", "sammed3d_ritm", "sammed3d_random"],
)
def test_same_seed_same_clicks(fn):
    gt = _disc((40, 40), 20, 20, 9)
    pred = _disc((40, 40), 22, 25, 9)
    a = [fn(pred, gt, np.random.default_rng(s)) for s in range(20)]
    b = [fn(pred, gt, np.random.default_rng(s)) for s in range(20)]
    assert a == b and len({repr(x) for x in a}) > 1


def test_same_seed_same_boxes():
    gt = _disc((64, 64), 30, 30, 10)
    for f in (R.medsam_box, R.sam_noisy_box):
        assert np.array_equal(f(gt, np.random.default_rng(3)), f(gt, np.random.default_rng(3)))


def test_robots_demand_a_generator():
    gt = _disc((20, 20), 10, 10, 4)
    with pytest.raises(TypeError):
        R.microsam_clicks(gt, gt, 0)


# ----------------------------------------------------------------------------------------- protocol


def _component_segmenter(gt):
    """A toy segmenter: the gt components under the positive clicks (a perfect responder)."""
    labels, _ = ndimage.label(gt)

    def segment(clicks):
        keep = {labels[c.index] for c in clicks if c.positive} - {0}
        return np.isin(labels, list(keep))

    return segment


def test_protocol_ritm_stops_at_target_and_noc():
    gt = box_mask((30, 30), slice(2, 9), slice(2, 9)) | box_mask((30, 30), slice(15, 20), slice(18, 23))
    recs = R.run_click_protocol(_component_segmenter(gt), gt, R.ritm_click, target_iou=0.9)
    assert [r["step"] for r in recs] == [1, 2]
    assert recs[0]["clicks"] == (Click((5, 5), True),) and recs[1]["clicks"] == (Click((20, 17), True),)
    assert recs[0]["iou"] == pytest.approx(49 / 74) and recs[1]["iou"] == 1.0
    assert recs[-1]["stop"] == "target" and R.noc(recs, 0.9) == 2 and R.noc(recs, 0.6) == 1
    recs = R.run_click_protocol(_component_segmenter(gt), gt, R.ritm_click, target_iou=0.5)
    assert len(recs) == 1


def test_protocol_budget_microsam_and_no_error():
    gt = _disc((30, 30), 15, 15, 6)
    never = lambda clicks: np.zeros_like(gt)  # noqa: E731
    recs = R.run_click_protocol(never, gt, R.ritm_click)
    assert len(recs) == 20 and recs[-1]["stop"] == "max_clicks"
    assert len({r["clicks"][0] for r in recs}) == 20  # RITM never repeats a pixel
    assert R.noc(recs, 0.9) == 20 and R.noc(recs, 0.9, unreached="none") is None
    recs = R.run_click_protocol(never, gt, R.microsam_clicks, max_clicks=3, rng=np.random.default_rng(0))
    assert [r["n_points"] for r in recs] == [2, 4, 6]
    assert R.run_click_protocol(never, gt, R.ritm_click, initial_pred=gt) == []
    with pytest.raises(ValueError):
        R.run_click_protocol(never, gt, R.deepgrow_click)  # needs rng


def test_noc_metric_matches_ritm():
    all_ious = [[0.5, 0.86, 0.91], [0.95], [0.1] * 20]
    m = R.noc_metric(all_ious, (0.85, 0.9))
    assert m[0.85] == {"noc": pytest.approx(23 / 3), "over_max": 1}
    assert m[0.9] == {"noc": pytest.approx(8.0), "over_max": 1}
