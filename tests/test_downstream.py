"""Downstream training on simulated labels: pseudo-label weights, augmentation, training, label
sets read back from episode rows, the (a)-(e) table and the study file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from hiseg_sim.codec import pack_mask
from hiseg_sim.downstream import labels as L
from hiseg_sim.downstream.pseudo import confidence_weights, pack_rounds, round_spread, unpack_rounds
from hiseg_sim.downstream.slices import case_crops, crop_origin, volume_mask_slice
from hiseg_sim.downstream.study import _specialist_configs, arm_table, settings_of
from hiseg_sim.downstream.training import TrainConfig, _loss, augment_batch, dice_scores, shift2d, train_unet
from hiseg_sim.downstream.unet import TinyUNet
from tests.env_support import synthetic_cases


# ---- pseudo-labels -----------------------------------------------------------------------------
def test_spread_and_weights_follow_agreement():
    rng = np.random.default_rng(0)
    rounds = rng.random((5, 8, 8)) > 0.5
    rounds[:, 0, 0] = True  # all agree: in
    rounds[:, 0, 1] = False  # all agree: out
    p, var = round_spread(rounds)
    w = confidence_weights(var, floor=0.1)
    assert w[0, 0] == w[0, 1] == 1.0
    assert np.all((w >= 0.1) & (w <= 1.0))
    # less agreement never gets more weight
    order = np.argsort(var.ravel())
    assert np.all(np.diff(w.ravel()[order]) <= 1e-7)
    assert np.array_equal(unpack_rounds(pack_rounds(rounds), rounds.shape), rounds)
    with pytest.raises(ValueError):
        confidence_weights(var, floor=1.5)


# ---- augmentation and training -------------------------------------------------------------------
def test_shift_and_augment_keep_image_and_label_aligned():
    rng = np.random.default_rng(1)
    img = np.full((1, 24, 24), -900.0, np.float32)
    lab = np.zeros((1, 24, 24), np.float32)
    img[0, 5:9, 14:20] = 40.0
    lab[0, 5:9, 14:20] = 1.0
    for _ in range(20):
        x, y, w = augment_batch(img, lab, np.ones_like(lab), np.array([0]), rng, shift_px=3)
        assert np.array_equal(x[0] > 0, y[0] > 0.5)
        assert w.min() == 1.0
    s = shift2d(np.arange(9.0).reshape(3, 3), -1, 0, -1.0)
    assert s[:, 0].tolist() == [3.0, 6.0, -1.0]


def test_zero_weight_pixels_do_not_count_in_the_loss():
    torch.manual_seed(0)
    logits = torch.randn(1, 1, 8, 8)
    t = (torch.rand(1, 1, 8, 8) > 0.5).float()
    w = torch.ones_like(t)
    w[..., :4] = 0.0
    t2 = t.clone()
    t2[..., :4] = 1.0 - t2[..., :4]  # flip the labels where the weight is 0
    assert torch.isclose(_loss(logits, t, w), _loss(logits, t2, w))
    assert not torch.isclose(_loss(logits, t, torch.ones_like(t)), _loss(logits, t2, torch.ones_like(t)))


def _discs(n: int, size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    x = np.full((n, size, size), -850.0, np.float32) + rng.normal(0, 30, (n, size, size)).astype(np.float32)
    y = np.zeros((n, size, size), bool)
    for i in range(n):
        cy, cx, r = rng.integers(10, size - 10), rng.integers(10, size - 10), rng.integers(3, 7)
        y[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        x[i][y[i]] = 20.0
    return x, y


@pytest.mark.parametrize(
    "extra", [{"steps": 20}, {"steps": 40, "prior": True, "jitter_hu": 30.0}], ids=["plain", "prior+jitter"]
)
def test_training_is_seeded_and_learns_an_easy_task(extra):
    x, y = _discs(12)
    cfg = TrainConfig(batch=6, base=4, shift_px=2, patch_px=32, lr=1e-2, **extra)
    a, b, c = (train_unet(x, y, None, cfg, seed=s) for s in (0, 0, 1))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert any(not torch.equal(va, vc) for va, vc in zip(a.state_dict().values(), c.state_dict().values()))
    xt, yt = _discs(6, seed=9)
    assert dice_scores(a, xt, yt).mean() > 0.8
    torch.manual_seed(0)
    assert dice_scores(TinyUNet(4), xt, yt).mean() < 0.5  # the same net untrained
    with pytest.raises(ValueError):
        train_unet(x, y[:3], None, cfg)


# ---- crops and label sets ----------------------------------------------------------------------
def test_crops_are_fixed_per_case_and_purpose():
    case = synthetic_cases()[0]
    assert crop_origin(case, "train") == crop_origin(case, "train")
    crops = case_crops(case, "test", neighbours=2)
    assert len(crops) == 5 and {c.z for c in crops} == set(range(case.key_slice - 2, case.key_slice + 3))
    assert all(c.image_hu.shape == (96, 96) and c.gt.any() for c in crops)


def test_volume_mask_slice_roundtrips_pack_mask():
    case = synthetic_cases()[0]
    m = np.zeros((1,) + case.shape[1:], bool)
    m[0, 40:50, 45:52] = True
    rec = pack_mask(m, (case.key_slice, 0, 0))
    from hiseg_sim.codec import unpack_mask

    crop, org = unpack_mask(rec)
    assert np.array_equal(volume_mask_slice(crop, org, case.shape, case.key_slice), m[0])
    assert not volume_mask_slice(crop, org, case.shape, case.key_slice + 1).any()


def _episode(case, arm, rep, mask2d, extra=None):
    row = {"annotator": arm, "case_id": case.case_id, "replicate": rep}
    row.update(pack_mask(mask2d[None], (case.key_slice, 0, 0)))
    row.update(extra or {})
    return row


def test_label_sets_from_episode_rows():
    cases = list(synthetic_cases())[:2]
    rows = []
    for c in cases:
        gt = c.gt[c.key_slice]
        grown = np.zeros_like(gt)
        ys, xs = np.nonzero(gt)
        grown[ys.min() - 2 : ys.max() + 3, xs.min() - 2 : xs.max() + 3] = True  # an over-segmenting expert
        rows.append(_episode(c, "exp", 0, grown))
        for r in range(3):  # crowd: two agree, one is empty
            rows.append(_episode(c, "crowd", r, gt if r < 2 else np.zeros_like(gt)))
        # specialist: two rounds that disagree on a band, viewport at (0, 0) of size 96
        r0, r1 = gt.copy(), gt.copy()
        r1[ys.min() : ys.min() + 2] = False
        rounds = np.stack([r0, r1])[:, :96, :96]
        rows.append(
            _episode(
                c,
                "spec",
                0,
                r0,
                {"sp_rounds": 2, "sp_size": 96, "sp_rounds_bits": pack_rounds(rounds), "sp_vp_y0": 0, "sp_vp_x0": 0},
            )
        )
    ep = pd.DataFrame(rows)
    arms = {"gt": None, "expert": "exp", "crowd": "crowd", "specialist": "spec"}
    sets = L.build_label_sets(ep, cases, arms, crowd_k=3, labelled={cases[1].case_id}, weight_floor=0.25)
    assert set(sets) == set(arms)
    for s in sets.values():
        assert s.images.shape == s.targets.shape == s.weights.shape == (2, 96, 96)
        assert np.array_equal(s.images, sets["gt"].images)  # same pixels for every arm
    assert np.array_equal(sets["crowd"].targets, sets["gt"].targets)  # STAPLE outvotes the empty worker
    assert sets["expert"].targets.sum() > sets["gt"].targets.sum()
    w = sets["specialist"].weights
    assert w[0].min() == pytest.approx(0.25) and np.all(w[1] == 1.0)  # labelled case: ground truth, weight 1
    q = L.label_quality(sets).groupby("arm")["dice"].mean()
    assert q["gt"] == 1.0 and q["crowd"] == 1.0 and q["expert"] < 1.0
    with pytest.raises(ValueError, match="crowd"):
        L.build_label_sets(ep, cases, arms, crowd_k=4)


# ---- the table and the study file --------------------------------------------------------------
def test_arm_table_pairs_by_case_and_signs_the_gap():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.9, 20)
    rows = [{"arm": "gt", "case_id": f"c{i}", "dice": v} for i, v in enumerate(base)]
    rows += [{"arm": "crowd", "case_id": f"c{i}", "dice": v - 0.05} for i, v in enumerate(base)]
    rows += [{"arm": "expert", "case_id": f"c{i}", "dice": v + rng.normal(0, 0.01)} for i, v in enumerate(base)]
    t = arm_table(pd.DataFrame(rows), n_boot=500).set_index("arm")
    assert list(t.index) == ["gt", "expert", "crowd"]
    assert t.loc["crowd", "diff_vs_gt"] == pytest.approx(-0.05)
    assert t.loc["crowd", "diff_hi"] < 0 < t.loc["expert", "diff_hi"] and t.loc["expert", "diff_lo"] < 0
    assert t.loc["gt", "lo"] <= t.loc["gt", "dice"] <= t.loc["gt", "hi"]


def test_shipped_study_is_downstream_on_whole_nodules():
    from hiseg_sim.downstream.study import spec_is_three_d
    from hiseg_sim.experiments.spec import load_spec

    spec = load_spec("experiments/downstream.toml")
    assert spec.kind == "downstream" and load_spec("experiments/hiseg_groups.toml").kind == "groups"
    assert spec_is_three_d(spec)
    assert _specialist_configs(spec) == {}  # the specialist prompts one key slice: not an arm in 3-D
    st = settings_of(spec)
    labels = {a.label for a in spec.annotators}
    assert {st["arms"][k] for k in ("expert", "crowd", "novice")} <= labels
    assert st["arms"]["specialist"] not in labels and st["test_cohort"] == "holdout"
    assert spec.cases.source == "downstream_training" and spec.cases.kwargs["n_pool"] == 120


@pytest.mark.parametrize("mod", ["pseudo", "slices", "specialist", "training", "unet"])
def test_docstring_examples_run(mod):
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module(f"hiseg_sim.downstream.{mod}"), verbose=False)
    assert res.failed == 0


def test_label_quality_area_ratio_sees_over_segmentation():
    ref = np.zeros((2, 8, 8), np.float32)
    ref[:, 2:4, 2:4] = 1.0  # 4 pixels
    big = np.zeros_like(ref)
    big[:, 1:5, 1:5] = 1.0  # 16 pixels, covering the reference
    mk = lambda name, t: L.LabelSet(name, ["a", "b"], np.zeros_like(ref), t, np.ones_like(ref))  # noqa: E731
    q = L.label_quality({"gt": mk("gt", ref), "big": mk("big", big)}).groupby("arm").mean(numeric_only=True)
    assert q.loc["big", "area_ratio"] == 4.0 and q.loc["gt", "area_ratio"] == 1.0
    assert q.loc["big", "dice"] == pytest.approx(2 * 4 / 20)
