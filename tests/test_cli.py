"""The command line as a user types it (typer's CliRunner, same process)."""

import json
import re

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


def _h2s(html: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", html)


@pytest.mark.integration
def test_demo_runs_reports_and_reruns_in_folders_named_by_configuration(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["demo", "--cases", "2", "--executor", "serial"])
    assert res.exit_code == 0, res.output
    out = tmp_path / "runs" / "demo-cases2"
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
    # one file that travels alone: every figure inside it; the findings first, the run's facts last
    assert "<img src='figures/" not in html and '<img src="figures/' not in html
    assert html.count("src='data:image/png;base64,") == 4
    h2 = _h2s(html)
    assert h2[0] == "Key findings" and h2[-1] == "About this run"
    assert (out / "report.md").is_file()
    # another configuration goes to its own folder
    res2 = runner.invoke(app, ["demo", "--cases", "1", "--executor", "serial"])
    assert res2.exit_code == 0, res2.output
    assert len(load_run(tmp_path / "runs" / "demo-cases1").episodes) == len(arms)
    # the same one again: reused, said so, the same rows
    res3 = runner.invoke(app, ["demo", "--cases", "2", "--executor", "serial"])
    assert res3.exit_code == 0, res3.output
    assert "already holds this run, finished" in res3.stderr and "--fresh" in res3.stderr
    assert load_run(out).episodes.equals(e)


@pytest.mark.integration
def test_boxes_writes_table_csv_and_overlay(tmp_path):
    out = tmp_path / "boxes"
    args = ["boxes", "--limit", "2", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "Dice median" in res.output
    assert any(t in res.output for t in ("solid", "part-solid", "ground-glass"))
    rows = (out / "dice.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("case_id,")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 2 and summary["encoder_calls"] == 2
    # the embeddings went to the on-disk cache (the default, as for every command)
    assert any(p.is_file() for p in (tmp_path / "cache").rglob("*"))
    png = (out / "overlay.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "reusing it" in again.stderr
    assert [r.split(",")[:4] for r in (out / "dice.csv").read_text().strip().splitlines()] == [
        r.split(",")[:4] for r in rows
    ]


@pytest.mark.integration
def test_boxes_per_band_draws_its_own_sample_and_sets_it_beside_the_readers(tmp_path, monkeypatch):
    from hiseg_sim.data import cohort

    real = cohort.sample_manifest
    few = [f"LIDC-IDRI-{i:04d}" for i in range(1, 101)]  # a part of the split, to keep it quick
    monkeypatch.setattr(cohort, "sample_manifest", lambda **kw: real(**kw, patients=few))
    out = tmp_path / "sample"
    args = [
        "boxes",
        "--per-band",
        "1",
        "--json",
        "--out",
        str(out),
        "--cache-dir",
        str(tmp_path / "c"),
        "--no-progress",
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    bands = json.loads(res.stdout.strip().splitlines()[-1])["bands"]
    assert {b: v["n"] for b, v in bands.items()} == {"<6": 1, "6-10": 1, "10-20": 1, ">=20": 1}
    assert all(0.0 <= v["box"] <= 1.0 and 0.7 < v["readers"] < 0.95 for v in bands.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == 4 and summary["config"]["sample"]["per_band"] == 1
    assert "building" not in res.stderr  # --no-progress holds for the phantoms too
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "reusing it" in again.stderr


def _junk_weights(tmp_path):
    p = tmp_path / "weights.pth"
    p.write_bytes(b"this is not a PyTorch file")
    return str(p)


#: Common mistakes: the command line, and what the one line must name so the user knows what to do.
MISTAKES = [
    (["boxes", "--segmenter", "sam_vit_b"], "--checkpoint"),
    (["boxes", "--checkpoint", "JUNK"], "leave --checkpoint out"),
    (["boxes", "--segmenter", "litemedsm"], "did you mean 'litemedsam'"),
    (["report", "runs/nope"], "no such directory"),
    (["boxes", "--limit", "0"], "--limit"),
    (["boxes", "--per-band", "5", "--cohort", "holdout"], "not both"),
    (["boxes", "--per-band", "0"], "--per-band"),
    (["simulate", "expert_radiologist", "--segmenter", "sam_vit_b"], "--checkpoint"),
    (["simulate", "expert_radiologst"], "did you mean 'expert_radiologist'"),
    (["boxes", "--checkpoint", "/no/such/file.pth"], "no such file"),
    (["demo", "--cases", "0"], "--cases"),
    (["calibrate", "--split", "holdout", "--fit"], "--split calibration"),
    (["run", "experiments/nope.toml"], "shipped studies"),
    (["simulate", "expert_radiologist", "--env", "4d"], "--env must be 2d or 3d"),
    (["run", "hiseg_groups", "--env", "volume"], "--env must be 2d or 3d"),
]


@pytest.mark.parametrize("argv,fix", MISTAKES, ids=[" ".join(a) for a, _ in MISTAKES])
def test_a_mistake_is_one_line_on_stderr_with_exit_2(argv, fix, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HISEG_SAM_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("HISEG_DEBUG", raising=False)
    argv = [_junk_weights(tmp_path) if a == "JUNK" else a for a in argv]
    res = runner.invoke(app, argv)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert fix in lines[0]
    assert "Traceback" not in res.output and res.stdout == ""


def test_debug_shows_the_error_itself(monkeypatch):
    from hiseg_sim.cli import CliError

    res = runner.invoke(app, ["--debug", "boxes", "--segmenter", "litemedsm"])
    assert isinstance(res.exception, CliError) and res.exit_code != 2
    monkeypatch.setenv("HISEG_DEBUG", "1")
    res = runner.invoke(app, ["boxes", "--segmenter", "litemedsm"])
    assert isinstance(res.exception, CliError)


def test_version():
    from hiseg_sim import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"hiseg-sim {__version__}"


def test_simulate_help_lists_every_profile_and_robot():
    from hiseg_sim.annotators.behaviour.profiles import profile_names
    from hiseg_sim.annotators.registry import ROBOT_NAMES

    res = runner.invoke(app, ["simulate", "--help"], terminal_width=200)
    assert res.exit_code == 0
    names = list(profile_names()) + list(ROBOT_NAMES)
    assert len(names) >= 12
    missing = [n for n in names if not re.search(rf"\b{n}\b", res.output)]
    assert not missing


def test_two_simulations_in_one_folder_each_and_a_rerun_reuses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["--limit", "2", "--segmenter", "stub_env", "--executor", "serial"]  # the stub keeps it fast
    first = runner.invoke(app, ["simulate", "expert_radiologist", *base])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["simulate", "crowd_worker", *base])
    assert second.exit_code == 0, second.output
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["simulate-crowd_worker-n2-stub_env", "simulate-expert_radiologist-n2-stub_env"]
    assert "new run in runs/simulate-crowd_worker-n2-stub_env" in second.stderr
    again = runner.invoke(app, ["simulate", "crowd_worker", *base])
    assert again.exit_code == 0 and "already holds this run, finished (1 of 1 units): reusing it" in again.stderr
    # --out into a folder holding another configuration: refused in one line that names --fresh, which exists
    out = str(tmp_path / "runs" / "simulate-crowd_worker-n2-stub_env")
    clash = runner.invoke(app, ["simulate", "expert_radiologist", *base, "--out", out])
    assert clash.exit_code == 2 and "--fresh" in clash.stderr and len(clash.stderr.strip().splitlines()) == 1
    fresh = runner.invoke(app, ["simulate", "expert_radiologist", *base, "--out", out, "--fresh"])
    assert fresh.exit_code == 0, fresh.output
    assert "starting afresh" in fresh.stderr


def test_simulate_in_3d_prints_per_annotator_json_last(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["--limit", "2", "--segmenter", "stub_env", "--executor", "serial", "--json"]
    res = runner.invoke(app, ["simulate", "expert_radiologist", "robot_medsam_box", "--env", "3d", *base])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "runs" / "simulate-expert_radiologist+robot_medsam_box-n2-stub_env-3d").is_dir()
    last = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(last) == {"expert_radiologist", "robot_medsam_box"}
    for name, row in last.items():
        assert {"dice", "seconds", "accepted", "slices_prompted"} <= set(row), name
        assert 0.0 <= row["dice"] <= 1.0 and 0.0 <= row["accepted"] <= 1.0 and row["seconds"] > 0
    # the expert works through more than one slice of a whole nodule; in 2-D everything is one slice
    assert last["expert_radiologist"]["slices_prompted"] > 1.0
    flat = runner.invoke(app, ["simulate", "expert_radiologist", *base])
    assert flat.exit_code == 0, flat.output
    assert json.loads(flat.stdout.strip().splitlines()[-1])["expert_radiologist"]["slices_prompted"] == 1.0


def test_a_stopped_run_says_how_many_units_are_done(tmp_path, capsys):
    from hiseg_sim.experiments import run_study, spec_from_dict
    from hiseg_sim.studies.base import announce_run
    from tests.experiment_support import stub_spec_dict

    spec = spec_from_dict(stub_spec_dict(n_cases=2, replicates=3))
    out = tmp_path / "run"
    assert announce_run(out, spec.config_hash()) == "new"
    run_study(spec, out, executor="serial", cache_dir=str(tmp_path / "c"), progress=False, max_units=1)
    capsys.readouterr()
    assert announce_run(out, spec.config_hash()) == "partial"
    n = json.loads((out / "run.json").read_text())["n_units"]
    assert n > 1
    assert f"resuming {out}: 1 of {n} units already done" in capsys.readouterr().err


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
