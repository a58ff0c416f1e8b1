"""The downstream study end to end on synthetic cases: stub segmenter, stub people, a tiny specialist.

Checks the plumbing (specialist rows reach the tables, five label sets, training, the table, the
curve, the report and figures), not the numbers: the nets train for a few steps only.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from hiseg_sim.downstream.study import run_downstream
from hiseg_sim.experiments.spec import spec_from_dict

STUB = "stub_box"
TRAIN = {"steps": 3, "base": 4, "batch": 2, "patch_px": 32}


def _spec(cache_dir: str) -> dict:
    sp = {"cohort": "stub_study_cases", "train": TRAIN, "cache_dir": cache_dir, "rounds": 3}
    return {
        "study": {"name": "ds_stub", "kind": "downstream", "seed": 3},
        "cases": {"source": "stub_study_cases", "kwargs": {"n": 6}},
        "segmenters": {"names": ["stub_env"]},
        "annotators": [
            {"name": STUB, "label": "exp", "overrides": {"half_px": [6, 10]}},
            {"name": STUB, "label": "crowd", "replicates": 2, "overrides": {"half_px": [8, 16]}},
            {"name": STUB, "label": "novice", "overrides": {"half_px": [14, 22]}},
            {"name": "specialist_sam", "label": "sp_n1", "overrides": dict(sp, n_labelled=1)},
            {"name": "specialist_sam", "label": "sp_n2", "overrides": dict(sp, n_labelled=2)},
        ],
        "run": {"replicates": 1, "executor": "serial"},
        "analysis": {
            "seeds": [0],
            "train_steps": 4,
            "train": {"base": 4, "batch": 2, "patch_px": 32},
            "crowd_k": 2,
            "test_cohort": "stub_synthetic_cases",
            "test_neighbours": 1,
            "n_boot": 200,
            "train_workers": 1,
            "arms": {"expert": "exp", "crowd": "crowd", "novice": "novice", "specialist": "sp_n2"},
        },
    }


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ds")
    spec = spec_from_dict(_spec(str(tmp / "cache")))
    summary = run_downstream(spec, tmp / "run", progress=False)
    return tmp, summary


def test_study_runs_end_to_end_and_writes_the_report(result):
    tmp, s = result
    run = tmp / "run"
    assert s["status"] == "complete"
    assert [r["arm"] for r in s["table"]] == ["gt", "expert", "crowd", "novice", "specialist"]
    for r in s["table"]:
        assert 0.0 <= r["lo"] <= r["dice"] <= r["hi"] <= 1.0
        if r["arm"] != "gt":
            assert r["diff_lo"] <= r["diff_vs_gt"] <= r["diff_hi"]
    assert s["label_quality"]["gt"] == 1.0
    assert s["test_cases"] == 3 and s["train_cases"] == 6
    assert {r["n_labelled"] for r in s["curve"]} == {1, 2}
    # n=2 is scored on the 4 study cases it was not trained on, n=1 on 5
    n_cases = {r["n_labelled"]: r["n_cases"] for r in s["curve"] if r["what"] == "final_dice"}
    assert n_cases == {1: 5, 2: 4}
    assert len(s["labelled_for_specialist"]) == 2
    md = (run / "downstream.md").read_text()
    assert "(e) specialist pseudo-labels" in md and "Direction check" in md
    for png in ("downstream_dice.png", "downstream_labels.png", "specialist_curve.png"):
        assert (run / png).stat().st_size > 1000
    assert json.loads((run / "downstream.json").read_text())["table"] == s["table"]
    assert len(list((tmp / "cache" / "specialist").glob("*.pt"))) == 2


def test_specialist_rounds_are_stored_beside_the_people(result):
    tmp, _ = result
    from hiseg_sim.experiments.storage import load_run

    ep = load_run(tmp / "run").episodes
    sp = ep[ep["annotator"].str.startswith("sp_")]
    people = ep[~ep["annotator"].str.startswith("sp_")]
    assert len(sp) == 12 and sp["sp_rounds"].between(1, 3).all() and sp["sp_rounds_bits"].notna().all()
    assert people["sp_rounds"].isna().all()


def test_rerun_resumes_and_gives_the_same_table(result):
    tmp, s = result
    again = run_downstream(spec_from_dict(_spec(str(tmp / "cache"))), tmp / "run", progress=False, report=False)
    assert pd.DataFrame(again["table"]).equals(pd.DataFrame(s["table"]))
    assert again["annotation_sessions"][-1]["units_run"] == 0


def test_report_command_rebuilds_the_downstream_report(result):
    tmp, s = result
    from hiseg_sim.analysis.report import build_report

    run = tmp / "run"
    (run / "downstream.md").unlink()
    (run / "downstream_dice.png").unlink()
    rep = build_report(run)  # what `hiseg-sim report runs/<study>` calls
    md = (run / "downstream.md").read_text()
    assert "(a) ground truth" in md and "Direction check" in md
    assert (run / "downstream_dice.png").stat().st_size > 1000
    assert rep.headline["downstream"] == {r["arm"]: r["dice"] for r in s["table"]}
    assert "Downstream training on simulated labels" in rep.md_path.read_text()


def test_report_command_line_prints_the_downstream_table(result):
    """`hiseg-sim report runs/<downstream study>` rebuilds the report and prints the (a)-(d) table
    from the saved summary (the command hands the kind the run directory, not the summary)."""
    from typer.testing import CliRunner

    from hiseg_sim.cli import app

    tmp, s = result
    res = CliRunner().invoke(app, ["report", str(tmp / "run")])
    assert res.exit_code == 0, res.output
    for r in s["table"]:
        assert f"{r['title']:>30}: test Dice {r['dice']:.3f}" in res.output
