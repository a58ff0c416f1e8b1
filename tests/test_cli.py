"""The command line as a user types it (typer's CliRunner, same process)."""

import json

import pytest
from typer.testing import CliRunner

from hiseg_sim.cli import app

runner = CliRunner()


def test_help_lists_commands():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("demo", "lidc", "calibrate"):
        assert cmd in res.output


def test_lidc_readers_json_schema():
    res = runner.invoke(app, ["lidc", "readers", "--split", "holdout", "--json", "--no-progress"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["n_nodules"] > 300
    assert set(out["by_size"]) == {"<6", "6-10", "10-20", ">=20"}
    assert set(out["by_texture"]) == {"1", "2", "3", "4", "5"}
    assert 0.6 < out["pairwise_dice_mean"] < 0.9


def test_calibrate_refuses_to_fit_on_holdout():
    res = runner.invoke(app, ["calibrate", "--split", "holdout", "--fit"])
    assert res.exit_code != 0
    assert "holdout" in res.output


@pytest.mark.integration
def test_demo_runs_the_group_study_and_reports_it(tmp_path):
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--cases", "2", "--out", str(out), "--executor", "serial"])
    assert res.exit_code == 0, res.output
    from hiseg_sim.experiments.spec import load_spec
    from hiseg_sim.experiments.storage import load_run

    arms = [a.label for a in load_spec("demo").annotators]
    data = load_run(out)
    e = data.episodes
    assert len(e) == 2 * len(arms) and set(e["annotator"]) == set(arms)
    # people work through the nodules in order: positions 0 and 1 of one sequence per arm
    assert sorted(e.groupby("annotator")["position"].apply(sorted).iloc[0]) == [0, 1]
    for name in ("expert_radiologist", "crowd_worker", "auto_box"):
        assert name in res.output
    html = (out / "report.html").read_text()
    assert "<img" in html and (out / "report.md").is_file()
    # run again: resumes, nothing new to run, the same rows
    res2 = runner.invoke(app, ["demo", "--cases", "2", "--out", str(out), "--executor", "serial"])
    assert res2.exit_code == 0, res2.output
    assert load_run(out).episodes.equals(e)


@pytest.mark.integration
def test_boxes_writes_table_csv_and_overlay(tmp_path):
    res = runner.invoke(app, ["boxes", "--limit", "2", "--out", str(tmp_path), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "Dice median" in res.output
    rows = (tmp_path / "dice.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("case_id,")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["n"] == 2 and summary["encoder_calls"] == 2
    png = (tmp_path / "overlay.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_calibrate_holdout_json_schema():
    res = runner.invoke(app, ["calibrate", "--split", "holdout", "--json", "--no-progress", "--reps", "2"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out) >= {"real_pairwise_dice", "sim_pairwise_dice", "ks", "by_size"}
    for band in ("<6", "6-10", "10-20", ">=20"):
        assert {"real", "sim"} <= set(out["by_size"][band])


def test_run_unknown_study_exits_2_and_lists_the_shipped_ones():
    res = runner.invoke(app, ["run", "experiments/nope.toml"])
    assert res.exit_code == 2
    assert "no such study file" in res.output and "hiseg_groups" in res.output


def test_help_lists_study_commands():
    res = runner.invoke(app, ["--help"])
    for cmd in ("run", "simulate", "report", "bench"):
        assert cmd in res.output
