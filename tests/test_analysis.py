"""Analysis on hand-made data: NoC, Dice after k, Dice–time AUC, bootstrap coverage, STAPLE and
majority vote, crowd curves, learning crossings, and a report built from a stub run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hiseg_sim.analysis import crowd as C
from hiseg_sim.analysis import learning as L
from hiseg_sim.analysis import metrics as M
from hiseg_sim.analysis.stats import bootstrap_ci, paired_bootstrap
from hiseg_sim.codec import pack_mask, unpack_mask


# ---- hand-made episodes ---------------------------------------------------------------------------
def _episodes_and_actions():
    """Three episodes of arm 'a' on case c1..c3 with known prompt-by-prompt Dice.

    ep c1: box 0.50, point 0.82, point 0.90, accept          -> NoC@80=2, @85=3, @90=3
    ep c2: box 0.70, point 0.75, undo (back to 0.70), accept -> never reaches 0.80
    ep c3: box 0.95, accept                                  -> 1 prompt for every level
    """
    spec = {
        "c1": [
            ("box", True, 0.50, 2.0),
            ("point", True, 0.82, 4.0),
            ("point", True, 0.90, 6.0),
            ("accept", False, 0.90, 7.0),
        ],
        "c2": [
            ("box", True, 0.70, 3.0),
            ("point", True, 0.75, 5.0),
            ("undo", False, 0.70, 6.0),
            ("accept", False, 0.70, 7.0),
        ],
        "c3": [("box", True, 0.95, 5.0), ("accept", False, 0.95, 6.0)],
    }
    eps, acts = [], []
    for cid, steps in spec.items():
        key = {"segmenter": "s", "annotator": "a", "case_id": cid, "replicate": 0, "position": 0}
        n = 0
        for i, (kind, is_p, d, t) in enumerate(steps):
            n += is_p
            acts.append(
                {
                    **key,
                    "step": i + 1,
                    "kind": kind,
                    "is_prompt": is_p,
                    "prompt_index": n,
                    "dice": d,
                    "seconds_total": t,
                }
            )
        eps.append(
            {
                **key,
                "final_dice": steps[-1][2],
                "final_iou": steps[-1][2] / (2 - steps[-1][2]),
                "seconds_total": steps[-1][3],
                "n_prompts": n,
                "accepted": True,
                "gave_up": False,
                "hd95": 1.0,
                "nsd": 0.9,
                "size_band": "<6" if cid != "c3" else ">=20",
                "texture_group": "solid",
            }
        )
    return pd.DataFrame(eps), pd.DataFrame(acts)


def test_noc_and_dice_after_k():
    e, a = _episodes_and_actions()
    noc = M.noc_table(a, e, (0.80, 0.85, 0.90), max_prompts=20).set_index("case_id")
    assert noc.loc["c1", ["noc@80", "noc@85", "noc@90"]].tolist() == [2, 3, 3]
    assert noc.loc["c2", ["noc@80", "noc@85", "noc@90"]].isna().all()
    assert noc.loc["c3", ["noc@80", "noc@85", "noc@90"]].tolist() == [1, 1, 1]
    s = M.noc_summary(noc.reset_index(), "annotator", max_prompts=20, n_boot=50).set_index("threshold")
    assert s.loc["noc@80", "never"] == 1
    assert s.loc["noc@80", "noc_mean"] == pytest.approx((2 + 20 + 1) / 3)  # RITM: never counts as 20
    assert s.loc["noc@80", "noc_mean_reached"] == pytest.approx(1.5)
    _, Mx = M.prompt_dice_matrix(a, e, 4)
    # after the last prompt the accepted (final) mask counts: c2 undid its second prompt
    np.testing.assert_allclose(Mx, [[0, 0.5, 0.82, 0.9, 0.9], [0, 0.7, 0.75, 0.7, 0.7], [0, 0.95, 0.95, 0.95, 0.95]])
    dk = M.dice_after_k(a, e, (1, 2), n_boot=50).set_index("k")
    assert dk.loc[1, "dice"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    reach = M.reach_curve(a, e, 0.85, 4).set_index("k")["share"]
    assert reach.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])


def test_dice_time_auc_and_time_to_threshold():
    e, a = _episodes_and_actions()
    ttt = M.time_to_threshold(a, e, (0.80, 0.90), horizon=10.0).set_index("case_id")
    assert ttt.loc["c1", "t@80"] == 4.0 and ttt.loc["c1", "t@90"] == 6.0
    assert np.isnan(ttt.loc["c2", "t@80"])
    # c1: 0 for 2 s, 0.5 for 2 s, 0.82 for 2 s, 0.90 from 6 s to 10 s
    assert ttt.loc["c1", "auc"] == pytest.approx((0.5 * 2 + 0.82 * 2 + 0.9 * 4) / 10)
    _, D = M.dice_time_matrix(a, e, np.array([0.0, 2.0, 3.9, 4.0, 100.0]))
    np.testing.assert_allclose(D[0], [0, 0.5, 0.5, 0.82, 0.9])
    curves = M.dice_time_curves(a, e, horizon=10, n_grid=11, n_boot=20)
    assert curves["dice"].iloc[-1] == pytest.approx((0.9 + 0.7 + 0.95) / 3)


def test_group_summary_and_strata():
    e, _ = _episodes_and_actions()
    s = M.group_summary(e, "annotator", n_boot=200).iloc[0]
    assert s["n"] == 3 and s["dice"] == pytest.approx(np.mean([0.9, 0.7, 0.95]))
    assert s["dice_lo"] <= s["dice"] <= s["dice_hi"]
    t = M.strata_table(e, "final_dice", "annotator", "size_band")
    assert list(t.columns) == ["<6", ">=20"] and t.loc["a", "<6"] == pytest.approx(0.8)


# ---- bootstrap --------------------------------------------------------------------------------
def test_bootstrap_ci_coverage_is_near_nominal():
    rng = np.random.default_rng(1)
    hits = 0
    reps = 300
    for i in range(reps):
        x = rng.normal(0.8, 0.1, size=40)
        _, lo, hi = bootstrap_ci(x, n_boot=400, seed=i)
        hits += lo <= 0.8 <= hi
    assert 0.88 <= hits / reps <= 0.99, hits / reps


def test_bootstrap_is_seeded_and_cluster_aware():
    rng = np.random.default_rng(2)
    case_effect = rng.normal(0, 0.1, 10)
    vals = np.repeat(0.8 + case_effect, 20) + rng.normal(0, 0.01, 200)
    cl = np.repeat(np.arange(10), 20)
    a = bootstrap_ci(vals, cl, 500, seed=3)
    assert a == bootstrap_ci(vals, cl, 500, seed=3)
    naive = bootstrap_ci(vals, None, 500, seed=3)
    assert (a[2] - a[1]) > 2 * (naive[2] - naive[1])  # 200 episodes of 10 cases are not 200 cases
    assert np.isnan(bootstrap_ci([1.0, 2.0], [0, 0])[1])  # one cluster: no interval


def test_paired_bootstrap_finds_a_known_difference():
    rng = np.random.default_rng(4)
    rows = []
    for c in range(30):
        base = rng.uniform(0.5, 0.9)
        for r in range(2):
            rows.append({"case_id": f"c{c}", "replicate": r, "arm": "x", "v": base + 0.05 + rng.normal(0, 0.01)})
            rows.append({"case_id": f"c{c}", "replicate": r, "arm": "y", "v": base + rng.normal(0, 0.01)})
    res = paired_bootstrap(pd.DataFrame(rows), "v", "arm", "x", "y", n_boot=500)
    assert res["n_pairs"] == 60 and res["lo"] < 0.05 < res["hi"] and res["lo"] > 0.03 and res["p_boot"] == 0.0


# ---- fusion -----------------------------------------------------------------------------------
def _disc(shape, c, r):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - c[0]) ** 2 + (xx - c[1]) ** 2 <= r * r


def test_majority_vote_on_hand_made_masks():
    a = np.array([[1, 1, 0, 0]], bool)
    b = np.array([[1, 0, 1, 0]], bool)
    c = np.array([[1, 1, 1, 1]], bool)
    assert C.fuse_majority(np.stack([a, b, c])).astype(int).tolist() == [[1, 1, 1, 0]]
    # even k: a tie goes to background
    assert C.fuse_majority(np.stack([a, b])).astype(int).tolist() == [[1, 0, 0, 0]]


def test_staple_recovers_the_truth_from_good_and_bad_raters():
    truth = _disc((40, 40), (20, 20), 9)
    good = [truth.copy() for _ in range(3)]
    good[0][20, 30] = True  # small slips
    good[1][11, 20] = False
    bad = np.zeros_like(truth)
    bad[:, :20] = True  # a worker who marks half the image
    masks = np.stack(good + [bad])
    fused = C.fuse_staple(masks)
    assert fused.shape == truth.shape
    assert C._dice(fused, truth) > 0.98
    assert C._dice(C.fuse_majority(masks), truth) > 0.98
    np.testing.assert_array_equal(C.fuse_staple(masks[:1]), masks[0])  # k = 1: the mask itself
    np.testing.assert_array_equal(C.fuse_staple(np.stack([truth, truth])), truth)  # identical raters
    assert not C.fuse_staple(np.zeros((3, 5, 5), bool)).any()


def test_crowd_curve_on_packed_masks():
    truth = _disc((30, 30), (15, 15), 6)
    rng = np.random.default_rng(5)
    cases, eps = [], []
    for ci in range(4):
        cid = f"c{ci}"
        cases.append({"case_id": cid, **pack_mask(truth[None], (3, 10, 20), "gt")})
        for w in range(5):  # workers: the truth shifted by a pixel or two, some grown
            m = np.roll(truth, tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
            eps.append(
                {
                    "annotator": "crowd",
                    "case_id": cid,
                    "replicate": w,
                    "seconds_total": 10.0 + w,
                    "score_z0": 3,
                    "score_nz": 1,
                    "size_band": "6-10",
                    "texture_group": "solid",
                    **pack_mask(m[None], (3, 10, 20)),
                }
            )
    e, cs = pd.DataFrame(eps), pd.DataFrame(cases)
    crop, org = unpack_mask(e.iloc[0])
    assert org[0] == 3 and crop.shape[0] == 1
    draws = C.crowd_draws(e, cs, "crowd", ks=(1, 3, 5), draws=10, seed=0)
    curve = C.crowd_curve(draws, n_boot=100)
    maj = curve[curve["method"] == "majority"].set_index("k")
    stp = curve[curve["method"] == "staple"].set_index("k")
    assert maj.loc[5, "dice"] > maj.loc[1, "dice"] and stp.loc[5, "dice"] > stp.loc[1, "dice"]
    assert maj.loc[5, "seconds"] == pytest.approx(10 + 11 + 12 + 13 + 14)
    assert (draws.groupby(["k", "method", "case_id"]).size().loc[5] == 1).all()  # the whole pool: once
    assert C.workers_needed(curve, 0.0, "majority") == 1 and C.workers_needed(curve, 1.01, "majority") is None
    sat = C.saturation_k(curve, "staple")
    assert sat["k_max"] == 5 and sat["k_share"] in (1, 3, 5)


def test_saturation_on_a_known_curve():
    curve = pd.DataFrame(
        {"method": "m", "k": np.arange(1, 10), "dice": [0.60, 0.70, 0.76, 0.79, 0.80, 0.802, 0.803, 0.804, 0.804]}
    )
    s = C.saturation_k(curve, "m", share=0.9, min_gain=0.005)
    assert s["k_share"] == 4 and s["k_marginal"] == 5
    assert C.workers_needed(curve.assign(lo=curve["dice"] - 0.05), 0.745, "m", conservative=True) == 5


# ---- learning ---------------------------------------------------------------------------------
def _sequence(gap_at, n_persons=12, length=30, noise=0.01, seed=0):
    """Learner = reference - 0.2 * exp(-position / tau); the gap closes to 0.02 at ``gap_at``."""
    rng = np.random.default_rng(seed)
    tau = gap_at / np.log(0.2 / 0.02)
    rows = []
    for r in range(n_persons):
        diff = rng.uniform(0.6, 0.9, length)  # case difficulty, shared by both arms of person r
        for p in range(length):
            rows.append(
                {"annotator": "ref", "replicate": r, "position": p, "final_dice": diff[p] + rng.normal(0, noise)}
            )
            rows.append(
                {
                    "annotator": "learner",
                    "replicate": r,
                    "position": p,
                    "final_dice": diff[p] - 0.2 * np.exp(-p / tau) + rng.normal(0, noise),
                }
            )
    return pd.DataFrame(rows)


def test_cases_to_reach_finds_the_crossing_with_an_interval():
    e = _sequence(gap_at=10)
    r = L.cases_to_reach(e, "learner", "ref", margin=0.02, window=3, n_boot=300, seed=0)
    assert 8 <= r["cases"] <= 12 and r["lo"] <= r["cases"] <= r["hi"] and r["never_share"] == 0
    stay = L.cases_to_reach(e, "learner", "ref", margin=0.02, window=3, n_boot=100, seed=0, mode="stay")
    assert stay["cases"] >= r["cases"]
    fit = L.cases_to_reach(e, "learner", "ref", margin=0.02, window=3, n_boot=100, seed=0, mode="exp")
    assert 9 <= fit["cases"] <= 11 and fit["lo"] <= fit["cases"] <= fit["hi"]
    assert L.exp_crossing(np.full(20, 0.01), -0.02) == 0 and L.exp_crossing(np.full(20, -0.1), -0.02) is None
    never = L.cases_to_reach(_sequence(gap_at=200), "learner", "ref", margin=0.02, window=3, n_boot=100)
    assert never["cases"] is None and never["hi"] is None and never["never_share"] > 0.9
    curves = L.learning_curve(e, window=3, n_boot=50)
    assert set(curves["annotator"]) == {"ref", "learner"} and curves["case_number"].max() == 30


# ---- a report from a stub run -----------------------------------------------------------------
def test_dice_time_curves_end_at_each_groups_final_dice():
    # group 'slow' has one long episode (30 s) among short ones: at the default horizon every
    # episode has ended, so each curve's last point is its group's mean final Dice
    e, a = _episodes_and_actions()
    e2, a2 = e.copy(), a.copy()
    for df in (e2, a2):
        df["annotator"] = "slow"
    a2.loc[(a2["case_id"] == "c2") & (a2["kind"] == "accept"), "seconds_total"] = 30.0
    a2.loc[(a2["case_id"] == "c2") & (a2["kind"] == "undo"), "seconds_total"] = 29.0
    a2.loc[(a2["case_id"] == "c2") & (a2["kind"] == "point"), "seconds_total"] = 20.0
    e2.loc[e2["case_id"] == "c2", "seconds_total"] = 30.0
    # within the slow episode the Dice rises above the final one before an undo takes it back
    a2.loc[(a2["case_id"] == "c2") & (a2["kind"] == "point"), "dice"] = 0.99
    e_all, a_all = pd.concat([e, e2], ignore_index=True), pd.concat([a, a2], ignore_index=True)
    curves = M.dice_time_curves(a_all, e_all, n_grid=61, n_boot=20)
    last = curves.sort_values("t").groupby("annotator")["dice"].last()
    final = e_all.groupby("annotator")["final_dice"].mean()
    assert last.to_dict() == pytest.approx(final.to_dict())
    assert curves["t"].max() == pytest.approx(30.0)
    # mid-episode (t = 25 s) the slow group's curve holds the point's 0.99, not the final 0.70
    mid = curves[(curves["annotator"] == "slow") & (curves["t"] == 25.0)]["dice"].iloc[0]
    assert mid == pytest.approx((0.9 + 0.99 + 0.95) / 3)


def test_reports_from_stub_runs(tmp_path):
    from hiseg_sim.analysis.report import build_report
    from hiseg_sim.experiments import run_study, spec_from_dict
    from tests.experiment_support import stub_spec_dict

    d = stub_spec_dict(n_cases=4, replicates=4, episode_fn="harness")
    d["study"]["kind"] = "crowd"
    d["analysis"] = {"worker": "loose", "reference": "tight", "ks": [1, 2, 3], "draws": 5, "n_boot": 100}
    run = run_study(
        spec_from_dict(d), tmp_path / "crowd", executor="serial", cache_dir=str(tmp_path / "c"), progress=False
    )
    rep = build_report(run.dir)
    assert rep.md_path.is_file() and rep.html_path.is_file() and all(p.is_file() for p in rep.figures)
    assert set(rep.headline["curve"]) == {"majority", "staple"} and "saturation_staple" in rep.headline
    text = rep.md_path.read_text()
    assert "Fusing loose masks" in text and "figures/crowd_fusion.png" in text
    d["study"]["kind"] = "groups"
    d["analysis"] = {"reference": "tight", "n_boot": 100}
    run = run_study(
        spec_from_dict(d), tmp_path / "groups", executor="serial", cache_dir=str(tmp_path / "c"), progress=False
    )
    rep = build_report(run.dir)
    assert {"tight", "loose"} == set(rep.headline["groups"]) and len(rep.figures) == 4
    html = rep.html_path.read_text()
    assert "<table>" in html


def _stub_groups_run(tmp_path):
    from hiseg_sim.experiments import run_study, spec_from_dict
    from tests.experiment_support import stub_spec_dict

    d = stub_spec_dict(n_cases=4, replicates=2, episode_fn="harness")
    d["analysis"] = {"reference": "tight", "n_boot": 100}
    return run_study(
        spec_from_dict(d), tmp_path / "groups", executor="serial", cache_dir=str(tmp_path / "c"), progress=False
    )


def test_report_leads_with_findings_embeds_figures_defines_columns(tmp_path):
    import re

    from hiseg_sim.analysis.report import _glossary, build_report
    from hiseg_sim.studies.groups import KIND

    run = _stub_groups_run(tmp_path)
    rep = build_report(run.dir)
    html = rep.html_path.read_text()
    h2 = re.findall(r"<h2>(.*?)</h2>", html)
    assert h2[0] == "Key findings" and h2[-2:] == ["What the columns mean", "About this run"]
    assert "Config hash" not in html.split("<h2>")[1] and "Config hash" in html.split("<h2>")[-1]
    # the figures travel inside the one HTML file; the Markdown links the PNGs beside it
    assert "src='figures/" not in html and html.count("src='data:image/png;base64,") == len(rep.figures) == 4
    assert "](figures/dice_vs_time.png)" in rep.md_path.read_text()
    # the paired difference carries its interval and whether it is significant
    finding = next(f for f in rep.headline["findings"] if f.startswith("loose against tight"))
    assert re.search(r"Dice [+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\], (significant|not significant)", finding)
    # every column of every table is defined
    secs, _ = KIND.sections(run, {"reference": "tight", "n_boot": 50}, tmp_path / "again")
    assert _glossary(secs)[1] == []
    assert "stopped unsatisfied" in html.split("What the columns mean")[1]
    # CSV names are whole words
    names = sorted(p.stem for p in (run.dir / "tables").glob("*.csv"))
    assert names == [
        "dice_after_k_prompts",
        "dice_by_size_band",
        "dice_by_texture_group",
        "noc_prompts_to_dice_level",
        "paired_differences_vs_tight",
        "per_group_summary",
        "time_to_dice_level",
    ]


def test_table_file_names_cut_between_words():
    from hiseg_sim.analysis.report import table_file_name

    name = table_file_name("Simulated seconds to reach each Dice level (median over the episodes that reach it)")
    assert name == "simulated_seconds_to_reach_each_dice_level"
    assert len(table_file_name("x" * 80)) == 48


def test_staple_stops_on_a_pair_whose_em_crawls():
    """Two crowd workers' 3-D masks from a run (13 x 61 x 77; one worker outlined 20 voxels): EM
    without an iteration limit takes over 20,000 iterations (about 30 s) on them; capped, the fused
    mask is the same one in well under a second."""
    import time
    from pathlib import Path

    import SimpleITK as sitk

    from hiseg_sim.analysis.crowd import STAPLE_MAX_ITERATIONS, fuse_staple

    data = np.load(Path(__file__).parent / "data" / "staple_slow_pair.npz")
    shape = tuple(int(v) for v in data["shape"])
    masks = np.unpackbits(data["masks"], count=int(np.prod(shape))).astype(bool).reshape(shape)
    t0 = time.perf_counter()
    fused = fuse_staple(masks)
    assert time.perf_counter() - t0 < 10.0
    f = sitk.STAPLEImageFilter()
    f.SetForegroundValue(1.0)
    f.SetMaximumIterations(3 * STAPLE_MAX_ITERATIONS)
    longer = sitk.GetArrayFromImage(f.Execute([sitk.GetImageFromArray(m.astype(np.uint8)) for m in masks])) >= 0.5
    assert f.GetElapsedIterations() > STAPLE_MAX_ITERATIONS  # the pair does crawl past the cap
    np.testing.assert_array_equal(fused, longer)


def test_a_learning_curve_that_keeps_falling_is_shown_as_such_not_as_the_fits_bound():
    """A paired gap that widens steadily over 20 cases: the exponential fit runs to its bound
    (asymptote -2, tau in the hundreds); the table says the gap falls throughout. A curve that
    levels off keeps its asymptote; the module's examples run."""
    import doctest

    p = np.arange(20.0)
    falling = L.fit_exponential(-0.04 - 0.005 * p)
    assert falling is not None and falling[2] > 200
    assert L.fit_text(falling, 20) == f"{falling[0]:+.3f} → falls throughout (no level within 20 cases)"
    level = L.fit_exponential(-0.02 - 0.1 * np.exp(-p / 3.0))
    assert L.fit_text(level, 20) == "-0.120 → -0.020 (3.0)"
    assert doctest.testmod(L, verbose=False).failed == 0


def _sequence_episodes(learn_per_case: float, seed: int = 0) -> pd.DataFrame:
    """8 persons x 20 of 40 cases, harder cases tending to come later in every order (each case still
    at varied places); Dice = the case's ease + practice."""
    rng = np.random.default_rng(seed)
    ease = np.linspace(0.9, 0.5, 40)  # case k's Dice without practice: later ids are harder
    rows = []
    for r in range(8):
        pick = rng.choice(40, 20, replace=False)
        cases = pick[np.argsort(pick + rng.normal(0, 12, 20))]
        for pos, k in enumerate(cases):
            d = ease[k] + learn_per_case * pos + rng.normal(0, 0.02)
            rows.append({"annotator": "arm", "replicate": r, "position": pos, "case_id": f"c{k}", "final_dice": d})
    return pd.DataFrame(rows)


def test_case_adjusted_gain_removes_the_case_mix_and_keeps_the_learning():
    flat = _sequence_episodes(0.0)
    raw = L.end_means(flat, "arm").mean()
    assert raw["last"] - raw["first"] < -0.15  # the orders end on hard cases
    est, lo, hi = L.case_adjusted_gain(flat, "arm", n_boot=500)
    assert lo < 0 < hi and abs(est) < 0.03
    learner = _sequence_episodes(0.01)
    raw = L.end_means(learner, "arm").mean()
    assert raw["last"] - raw["first"] < 0  # the case mix hides the learning
    est, lo, hi = L.case_adjusted_gain(learner, "arm", n_boot=500)
    assert 0.05 < lo and abs(est - 0.15) < 0.03  # 15 places x 0.01 per case
    with pytest.raises(ValueError, match="no episodes of 'other'"):
        L.case_adjusted_gain(flat, "other")
