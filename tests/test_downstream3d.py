"""The downstream study on whole nodules: volume labels from 3-D episodes, the 2-D net trained on every
slice of them, its stacked slice predictions scored in 3-D (Dice, NSD, volume error)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from hiseg_sim.codec import pack_mask
from hiseg_sim.data.case import Case
from hiseg_sim.downstream import labels as L
from hiseg_sim.downstream.slices import CROP_PX, crop_of, crop_origin
from hiseg_sim.downstream.training import TrainConfig, predict_volume, train_unet, volume_scores
from hiseg_sim.metrics import dice
from tests.env_support import synthetic_cases

SPACING = (2.0, 0.8, 0.8)


def _ball_case(case_id: str, centre=(8, 48, 48), r=(3, 9, 9)) -> Case:
    """Lung (-850 HU) with a bright ellipsoid nodule (+30 HU) and nothing else bright."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in (16, 96, 96)), indexing="ij")
    gt = ((z - centre[0]) / r[0]) ** 2 + ((y - centre[1]) / r[1]) ** 2 + ((x - centre[2]) / r[2]) ** 2 <= 1.0
    vol = np.where(gt, 30.0, -850.0).astype(np.float32)
    return Case(case_id, vol, SPACING, gt, meta={"source": "test"})


class _Threshold(torch.nn.Module):
    """A 'net' that segments bright pixels: a perfect segmenter of :func:`_ball_case`."""

    def forward(self, x):
        return (x - 0.5) * 100.0


def _episode(case, arm, rep, mask3d, seconds=30.0):
    row = {"annotator": arm, "case_id": case.case_id, "replicate": rep, "seconds_total": seconds}
    row.update(pack_mask(mask3d, (0, 0, 0)))
    return row


def test_label_volumes_cover_every_slice_and_fuse_the_crowd_in_3d():
    cases = list(synthetic_cases())[:2]
    rows = []
    for c in cases:
        grown = np.zeros_like(c.gt)
        zs, ys, xs = np.nonzero(c.gt)
        grown[zs.min() : zs.max() + 2, ys.min() - 2 : ys.max() + 3, xs.min() - 2 : xs.max() + 3] = True
        rows.append(_episode(c, "exp", 0, grown))
        top = c.gt.copy()
        top[: (zs.min() + zs.max()) // 2] = False  # a worker who stopped half way through the nodule
        for r, m in enumerate((c.gt, c.gt, top)):
            rows.append(_episode(c, "crowd", r, m))
    ep = pd.DataFrame(rows)
    arms = {"gt": None, "expert": "exp", "crowd": "crowd"}
    sets = L.build_label_volumes(ep, cases, arms, crowd_k=3)
    n = sum(c.shape[0] for c in cases)
    for s in sets.values():
        assert s.images.shape == s.targets.shape == s.weights.shape == (n, CROP_PX, CROP_PX)
        assert np.array_equal(s.images, sets["gt"].images) and len(s.case_ids) == n
    np.testing.assert_array_equal(sets["crowd"].targets, sets["gt"].targets)  # two of three have every slice
    c0 = cases[0]
    o = crop_origin(c0, "train")
    z = int(np.nonzero(c0.gt.any((1, 2)))[0][0])
    np.testing.assert_array_equal(sets["gt"].targets[z], crop_of(c0.gt[z], o, fill=False))
    q = L.label_quality(sets)
    assert len(q) == len(arms) * len(cases)  # one row per case and arm, over the whole volume
    by = q.groupby("arm")["dice"].mean()
    assert by["gt"] == 1.0 and by["crowd"] == 1.0 and by["expert"] < 1.0
    assert q[q["arm"] == "expert"]["area_ratio"].min() > 1.0
    with pytest.raises(ValueError, match="crowd"):
        L.build_label_volumes(ep, cases, arms, crowd_k=4)
    with pytest.raises(ValueError, match="specialist"):
        L.build_label_volumes(ep, cases, {**arms, "specialist": "sp"}, crowd_k=3)


def test_stacked_slice_predictions_are_scored_in_3d_against_the_whole_case():
    c = _ball_case("ball")
    imgs = np.stack([crop_of(c.volume_hu[z], (0, 0)) for z in range(c.shape[0])]).astype(np.float32)
    net = _Threshold()
    pred = predict_volume(net, imgs, (0, 0), c.shape)
    np.testing.assert_array_equal(pred, c.gt)
    (s,) = volume_scores(net, [(imgs, (0, 0), c.gt, SPACING)])
    assert s["dice"] == pytest.approx(1.0) and s["nsd"] == pytest.approx(1.0) and s["volume_error"] == 0.0
    # a crop that shows only the nodule's left half: the rest is missed, as the env counts it
    shifted = np.stack([crop_of(c.volume_hu[z], (0, -48)) for z in range(c.shape[0])]).astype(np.float32)
    (h,) = volume_scores(net, [(shifted, (0, -48), c.gt, SPACING)])
    seen = c.gt[:, :, :48].sum()
    assert h["dice"] == pytest.approx(2 * seen / (seen + c.gt.sum()))
    assert h["volume_error"] == pytest.approx(seen / c.gt.sum() - 1.0)


def test_volume_labels_train_the_net_and_score_in_3d():
    train = [_ball_case(f"t{i}", centre=(6 + i, 44 + 2 * i, 50 - 2 * i), r=(3, 7 + i, 8)) for i in range(3)]
    ep = pd.DataFrame([_episode(c, "exp", 0, c.gt) for c in train])
    sets = L.build_label_volumes(ep, train, {"gt": None, "expert": "exp"}, crowd_k=1)
    ls = sets["expert"]
    assert (ls.targets.sum((1, 2)) == 0).any() and (ls.targets.sum((1, 2)) > 0).any()  # empty slices are labels too
    cfg = TrainConfig(steps=120, batch=8, base=4, patch_px=64, shift_px=4)
    net = train_unet(ls.images, ls.targets, ls.weights, cfg, seed=0)
    test = _ball_case("test", centre=(7, 47, 47), r=(3, 8, 8))
    o = crop_origin(test, "test")
    imgs = np.stack([crop_of(test.volume_hu[z], o) for z in range(test.shape[0])]).astype(np.float32)
    (s,) = volume_scores(net, [(imgs, o, test.gt, SPACING)])
    assert set(s) == {"dice", "nsd", "volume_error"}
    pred = predict_volume(net, imgs, o, test.shape)
    assert s["dice"] == pytest.approx(dice(pred, test.gt))
    assert s["dice"] > 0.5  # an easy task, learnt from the volume labels


STUB = "stub_box"
TRAIN = {"base": 4, "batch": 2, "patch_px": 32}


def _spec3d(extra_arms=()) -> dict:
    return {
        "study": {"name": "ds_stub3d", "kind": "downstream", "seed": 3, "env": "3d"},
        "cases": {"source": "stub_study_cases", "kwargs": {"n": 4}},
        "segmenters": {"names": ["stub_env"]},
        "annotators": [
            {"name": STUB, "label": "exp", "overrides": {"half_px": [6, 10]}},
            {"name": STUB, "label": "crowd", "replicates": 2, "overrides": {"half_px": [8, 16]}},
            {"name": STUB, "label": "novice", "overrides": {"half_px": [14, 22]}},
            *extra_arms,
        ],
        "run": {"replicates": 1, "executor": "serial"},
        "analysis": {
            "seeds": [0],
            "train_steps": 4,
            "train": TRAIN,
            "crowd_k": 2,
            "test_cohort": "stub_synthetic_cases",
            "n_boot": 100,
            "train_workers": 1,
            "arms": {"expert": "exp", "crowd": "crowd", "novice": "novice"},
        },
    }


def test_3d_study_end_to_end_reports_3d_scores_and_seconds(tmp_path):
    from hiseg_sim.downstream.report import rebuild_report
    from hiseg_sim.downstream.study import run_downstream, spec_is_three_d
    from hiseg_sim.experiments.spec import spec_from_dict

    spec = spec_from_dict(_spec3d())
    assert spec_is_three_d(spec)
    s = run_downstream(spec, tmp_path / "run", cache_dir=str(tmp_path / "cache"), progress=False)
    assert s["status"] == "complete" and s["scored"] == "3d"
    assert [r["arm"] for r in s["table"]] == ["gt", "expert", "crowd", "novice"]
    assert all(0.0 <= r["nsd"] <= 1.0 and r["abs_volume_error"] >= 0.0 for r in s["table"])
    assert s["train_slices"] == 4 * 48 and s["test_cases"] == 3
    assert s["test_slices"] == sum(c.shape[0] for c in synthetic_cases())
    assert set(s["annotation_seconds"]) == {"expert", "crowd", "novice"}
    per_case = pd.read_csv(tmp_path / "run" / "downstream_per_case.csv")
    assert {"dice", "nsd", "volume_error"} <= set(per_case.columns) and len(per_case) == 4 * 3
    md = (tmp_path / "run" / "downstream.md").read_text()
    assert "scored in 3-D" in md and "test NSD@1mm" in md and "annotation s / nodule" in md
    assert json.loads((tmp_path / "run" / "downstream.json").read_text())["scored"] == "3d"
    assert rebuild_report(tmp_path / "run").read_text() == md


def test_3d_study_refuses_the_specialist_before_running(tmp_path):
    from hiseg_sim.downstream.study import run_downstream
    from hiseg_sim.experiments.spec import spec_from_dict

    sp = {"name": "specialist_sam", "label": "sp_n1", "overrides": {"n_labelled": 1, "cohort": "stub_study_cases"}}
    with pytest.raises(ValueError, match="specialist"):
        run_downstream(spec_from_dict(_spec3d([sp])), tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "shards").exists()
