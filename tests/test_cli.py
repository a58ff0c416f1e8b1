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
def test_demo_writes_table_csv_and_overlay(tmp_path):
    res = runner.invoke(app, ["demo", "--limit", "2", "--out", str(tmp_path), "--no-progress"])
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
