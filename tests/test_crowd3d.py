"""Crowd fusion of whole-nodule (3-D) masks: voxels over the union of the workers' slabs, scored
against the whole case, with NSD and volume error; 2-D episodes are fused as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hiseg_sim.analysis import crowd as C
from hiseg_sim.codec import pack_mask
from hiseg_sim.metrics import dice, nsd, volume_error

SHAPE = (16, 24, 24)
SPACING = (2.0, 0.8, 0.8)


def _gt() -> np.ndarray:
    """A box nodule on slices 4..9 (six slices)."""
    g = np.zeros(SHAPE, bool)
    g[4:10, 8:16, 9:17] = True
    return g


def _case_row(gt: np.ndarray, case_id: str = "c0") -> dict:
    row = {
        "case_id": case_id,
        "spacing_z": SPACING[0],
        "spacing_y": SPACING[1],
        "spacing_x": SPACING[2],
        "size_band": "10-20",
    }
    row.update(pack_mask(gt, (0, 0, 0), prefix="gt"))
    return row


def _episode(mask: np.ndarray, z0: int, nz: int, rep: int, case_id: str = "c0", seconds: float = 10.0) -> dict:
    """An episode row of a worker whose slab is ``[z0, z0 + nz)``: its mask is what lies inside the slab."""
    inside = np.zeros(SHAPE, bool)
    inside[z0 : z0 + nz] = mask[z0 : z0 + nz]
    row = {
        "case_id": case_id,
        "annotator": "crowd",
        "replicate": rep,
        "seconds_total": seconds,
        "score_z0": z0,
        "score_nz": nz,
        "size_band": "10-20",
    }
    row.update(pack_mask(inside[z0 : z0 + nz], (z0, 0, 0)))
    return row


def test_fusion_spans_the_union_of_slabs_and_scores_against_the_whole_case():
    gt = _gt()
    extra = gt.copy()
    extra[10] = gt[9]  # one slice too many
    rows = [
        _episode(gt, 0, 8, 0),  # a slab that ends inside the nodule: slices 8-9 unlabelled
        _episode(gt, 3, 13, 1),
        _episode(extra, 2, 14, 2),
    ]
    ep = pd.DataFrame(rows)
    assert C.is_three_d(ep)
    masks, ref = C.case_masks(ep, _case_row(gt))
    assert ref.sum() == gt.sum()  # the whole case's ground truth, not one slab's
    assert masks.shape[0] == 3 and masks[0].sum() < gt.sum() and masks[2].sum() > gt.sum()
    # slices 4-7: all three; 8-9: two of three; slice 10: one -> the majority is the ground truth
    np.testing.assert_array_equal(C.fuse_majority(masks), ref)
    assert dice(C.fuse_staple(masks), ref) == pytest.approx(1.0)


def test_ground_truth_outside_every_slab_counts_as_missed():
    gt = _gt()
    ep = pd.DataFrame([_episode(gt, 0, 7, r) for r in range(3)])  # every slab stops at slice 6
    masks, ref = C.case_masks(ep, _case_row(gt))
    fused = C.fuse_majority(masks)
    seen = gt[:7].sum()
    assert dice(fused, ref) == pytest.approx(2 * seen / (seen + gt.sum()))
    assert dice(fused, ref) < 1.0


def test_crowd_draws_in_3d_add_nsd_and_volume_error():
    gt = _gt()
    grown = np.zeros(SHAPE, bool)
    grown[4:10, 7:17, 8:18] = True
    shrunk = np.zeros(SHAPE, bool)
    shrunk[5:9, 9:15, 10:16] = True
    ep = pd.DataFrame([_episode(m, 0, 16, r, seconds=10.0 + r) for r, m in enumerate((gt, grown, shrunk))])
    cases = pd.DataFrame([_case_row(gt)])
    draws = C.crowd_draws(ep, cases, "crowd", ks=(1, 2, 3), methods=("majority", "staple"), draws=8, seed=1)
    assert {"nsd", "volume_error"} <= set(draws.columns)
    k1 = draws[(draws["k"] == 1) & (draws["method"] == "majority")]
    own = {10.0: gt, 11.0: grown, 12.0: shrunk}  # a k = 1 draw is one worker's mask, known by its seconds
    for _, r in k1.iterrows():
        m = own[r["seconds"]]
        assert r["dice"] == pytest.approx(dice(m, gt))
        assert r["nsd"] == pytest.approx(nsd(m, gt, 1.0, SPACING))
        assert r["volume_error"] == pytest.approx(volume_error(m, gt, SPACING)["rel"])
    full = draws[(draws["k"] == 3) & (draws["method"] == "majority")].iloc[0]
    assert full["dice"] == pytest.approx(1.0) and full["volume_error"] == pytest.approx(0.0)
    assert full["seconds"] == pytest.approx(33.0)
    curve = C.crowd_curve(draws, n_boot=50)
    assert {"nsd", "volume_error", "abs_volume_error"} <= set(curve.columns)
    assert (curve["abs_volume_error"] >= curve["volume_error"].abs() - 1e-12).all()


def test_2d_episodes_are_fused_on_their_slice_without_3d_columns():
    gt = _gt()
    key = 6
    rows = []
    for r in range(3):
        m = np.zeros((1,) + SHAPE[1:], bool)
        m[0] = gt[key]
        row = {
            "case_id": "c0",
            "annotator": "crowd",
            "replicate": r,
            "seconds_total": 5.0,
            "score_z0": key,
            "score_nz": 1,
            "size_band": "10-20",
        }
        row.update(pack_mask(m, (key, 0, 0)))
        rows.append(row)
    ep = pd.DataFrame(rows)
    assert not C.is_three_d(ep)
    masks, ref = C.case_masks(ep, _case_row(gt))
    assert masks.shape[1] == 1 and ref.sum() == gt[key].sum()  # the key slice only
    draws = C.crowd_draws(ep, pd.DataFrame([_case_row(gt)]), "crowd", ks=(1, 3), draws=3)
    assert "nsd" not in draws and (draws["dice"] == 1.0).all()
    other = ep.copy()
    other.loc[0, "score_z0"] = key + 1
    with pytest.raises(ValueError, match="different slabs"):
        C.case_masks(other, _case_row(gt))


def _run_data(tmp_path: Path):
    """A 3-D crowd run's tables, built by hand: three nodules, four workers and one expert each."""
    from hiseg_sim.experiments.storage import RunData

    rng = np.random.default_rng(0)
    rows, cases = [], []
    for i in range(3):
        cid = f"c{i}"
        gt = _gt()
        cases.append(_case_row(gt, cid))
        for arm, n in (("crowd_worker", 4), ("expert_radiologist", 1)):
            for r in range(n):
                m = gt.copy()
                m[4 + int(rng.integers(0, 6)), 8:10] = False  # each misses a different corner
                if rng.random() < 0.5:
                    m[10, 8:16, 9:17] = True  # and some run one slice too far
                e = _episode(m, 0, 16, r, cid, seconds=float(rng.uniform(20, 60)))
                e.update(
                    annotator=arm,
                    final_dice=dice(m, gt),
                    final_iou=0.0,
                    hd95=1.0,
                    nsd=nsd(m, gt, 1.0, SPACING),
                    n_prompts=5,
                    accepted=True,
                    gave_up=False,
                    texture_group="solid",
                )
                rows.append(e)
    return RunData(tmp_path, pd.DataFrame(rows), pd.DataFrame(), pd.DataFrame(cases))


def test_crowd_report_of_a_3d_run_gives_nsd_volume_error_and_seconds(tmp_path):
    from hiseg_sim.studies.crowd import KIND

    data = _run_data(tmp_path)
    (tmp_path / "figures").mkdir()
    settings = {"ks": [1, 2, 3, 4], "draws": 5, "n_boot": 100}
    sections, headline = KIND.sections(data, settings, tmp_path)
    assert headline["scored"] == "3d"
    tab = dict(sections[1].tables)[next(t for t, _ in sections[1].tables if "3-D Dice" in t)]
    assert {"staple NSD@1mm", "staple abs volume error", "total seconds"} <= set(tab.columns)
    c3 = headline["curve_3d"]["staple"]
    assert sorted(c3) == [1, 2, 3, 4] and all(0.0 <= v["nsd"] <= 1.0 for v in c3.values())
    arms = headline["arms_3d"]
    assert set(arms) == {"crowd_worker", "expert_radiologist"}
    assert all(v["seconds"] > 0 and v["abs_volume_error"] >= 0 for v in arms.values())
    per_arm = sections[2].tables[0][1]
    assert "abs volume error" in per_arm.columns


def test_shipped_crowd_study_runs_in_3d():
    from hiseg_sim.downstream.study import spec_is_three_d
    from hiseg_sim.experiments.spec import load_spec

    spec = load_spec("experiments/crowd_quality.toml")
    assert spec.kind == "crowd" and spec_is_three_d(spec)
    assert {a.label: a.replicates for a in spec.annotators} == {"crowd_worker": 12, "expert_radiologist": 2}


@pytest.mark.slow
def test_real_litemedsam_3d_crowd_run_fuses_whole_nodules(tmp_path):
    """A 3-D crowd study with the real LiteMedSAM: one nodule, two box robots and a reference. A
    one-worker 'fusion' is that worker's own mask, so its 3-D Dice is the env's final Dice."""
    from hiseg_sim.analysis.report import build_report
    from hiseg_sim.experiments import run_study, spec_from_dict

    d = {
        "study": {"name": "crowd3d_real", "kind": "crowd", "seed": 5, "env": "3d"},
        "cases": {"cohort": "default", "limit": 1},
        "segmenters": {"names": ["litemedsam"]},
        "annotators": [
            {"name": "robot_medsam_box", "label": "box", "replicates": 2},
            {"name": "robot_sam_box", "label": "ref"},
        ],
        "run": {"replicates": 1, "executor": "serial"},
        "analysis": {"worker": "box", "reference": "ref", "ks": [1, 2], "draws": 2, "n_boot": 50},
    }
    run = run_study(spec_from_dict(d), tmp_path / "run", executor="serial", progress=False)
    e = run.episodes
    assert C.is_three_d(e) and (e["score_nz"] > 1).all()
    draws = C.crowd_draws(e, run.cases, "box", ks=(1, 2), draws=2)
    box = e[e["annotator"] == "box"]
    k1 = draws[(draws["k"] == 1) & (draws["method"] == "majority")]
    for _, r in k1.iterrows():
        own = box[box["seconds_total"] == r["seconds"]]["final_dice"]
        assert r["dice"] == pytest.approx(float(own.iloc[0]), abs=1e-9)
    rep = build_report(run.dir)
    assert rep.headline["scored"] == "3d" and "staple NSD@1mm" in rep.md_path.read_text()


def test_crowd_draws_are_the_same_fused_in_worker_processes():
    """Three nodules fused in two processes give the rows the serial loop gives, in its order."""
    gt = _gt()
    rng = np.random.default_rng(0)
    eps, rows = [], []
    for c in ("c0", "c1", "c2"):
        rows.append(_case_row(gt, c))
        for r in range(4):
            m = gt.copy()
            m[tuple(rng.integers(0, s) for s in SHAPE)] ^= True  # each worker's mask a voxel off
            eps.append(_episode(m, 0, 16, r, case_id=c, seconds=10.0 + r))
    ep, cases = pd.DataFrame(eps), pd.DataFrame(rows)
    kw = dict(ks=(1, 2, 4), methods=("majority", "staple"), draws=5, seed=3)
    serial = C.crowd_draws(ep, cases, "crowd", **kw)
    parallel = C.crowd_draws(ep, cases, "crowd", workers=2, **kw)
    assert len(serial) == 3 * (5 + 5 + 1) * 2
    pd.testing.assert_frame_equal(serial, parallel)
