"""The study runner: specs, seeds, executors, shards, resume after SIGKILL, corrupt shards.

Every run here uses the TEST STUB segmenter (``stub_env``, tests.env_support.EnvStubSegmenter), stub
annotators and six small synthetic cases, so a whole study takes about a second serially.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pandas as pd
import pytest

from hiseg_sim.experiments import (
    CorruptShardWarning,
    RunMismatchError,
    SpecError,
    load_run,
    load_spec,
    run_study,
    spec_from_dict,
)
from hiseg_sim.experiments.spec import shipped_specs_dir
from hiseg_sim.experiments.units import episode_seed, plan_units, sequence_order
from tests.experiment_support import stub_spec_dict

REPO = Path(__file__).resolve().parents[1]
HARNESS = "harness"


def _spec(**kw):
    return spec_from_dict(stub_spec_dict(**kw))


def _rows(data) -> tuple[pd.DataFrame, pd.DataFrame]:
    return data.episodes.reset_index(drop=True), data.actions.reset_index(drop=True)


def _same(a, b) -> None:
    for x, y in zip(_rows(a), _rows(b)):
        pd.testing.assert_frame_equal(x, y, check_exact=True)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("emb-cache"))


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory, cache_dir):
    """The reference: the stub study through the real harness, serially, uninterrupted."""
    out = tmp_path_factory.mktemp("serial")
    return run_study(_spec(episode_fn=HARNESS), out, executor="serial", cache_dir=cache_dir, progress=False)


def test_a_serial_run_with_its_own_thread_count_gives_the_process_its_setting_back(tmp_path, cache_dir):
    import torch

    from hiseg_sim.segmenters.threads import get_threads, set_threads

    set_threads(2)
    try:
        data = run_study(
            _spec(episode_fn=HARNESS), tmp_path, executor="serial", cache_dir=cache_dir, progress=False, threads=1
        )
        assert data.meta["sessions"][-1]["executor"] == "serial" and len(data.episodes)
        # the run used one thread, but the next serial run in this process starts from two again
        assert torch.get_num_threads() == 2 and get_threads() == 2
    finally:
        set_threads(None)


# ---- specs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted(shipped_specs_dir().glob("*.toml")), ids=lambda p: p.stem)
def test_shipped_studies_validate(path):
    spec = load_spec(path)
    assert spec.name == path.stem and spec.annotators
    assert len(spec.config_hash()) == 16


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda d: d["run"].update(replicate=2), "[run] unknown key 'replicate'; did you mean 'replicates'?"),
        (lambda d: d["run"].update(workers="two"), "[run] workers: must be an integer >= 0"),
        (lambda d: d["run"].update(executor="threads"), "[run] executor: must be one of serial, process, ray"),
        (lambda d: d["study"].pop("name"), "[study] name: missing"),
        (lambda d: d["study"].update(kind="survey"), "[study] kind: unknown study kind 'survey'. Study kinds:"),
        (lambda d: d.update(analysis={"draw": 30}), "[analysis] unknown key 'draw'"),
        (
            lambda d: d.update(analysis={"refrence": "tight"}),
            "[analysis] unknown key 'refrence'; did you mean 'reference'?",
        ),
        (lambda d: d.update(analysis={"reference": "nobody"}), "[analysis] reference: 'nobody' is not an arm label"),
        (lambda d: d["annotators"][1].update(label="tight"), "label: 'tight' is used by more than one arm"),
        (
            lambda d: d["annotators"][0].update(name="expert_radiolgist"),
            "[annotators #1] name: unknown annotator 'expert_radiolgist'; did you mean 'expert_radiologist'?",
        ),
        (lambda d: d["annotators"][0].update(feedbak="score"), "[annotators #1] unknown key 'feedbak'"),
        (lambda d: d["annotators"][0].update(practice=3), "[annotators #1] practice: only with [run] design"),
        (lambda d: d["run"].update(design="sequence", length=0), "[run] length: must be an integer >= 1"),
        (lambda d: d["cases"].update(per_stratum=2), "[cases] per_stratum: only for a cohort"),
        (
            lambda d: d["segmenters"].update(names=["litemedsm"]),
            "unknown segmenter 'litemedsm'; did you mean 'litemedsam'?",
        ),
        (lambda d: d.update(analysis=3), "[top level] analysis: must be a table"),
    ],
)
def test_spec_errors_name_the_key(mutate, needle):
    d = stub_spec_dict()
    mutate(d)
    with pytest.raises(SpecError) as err:
        spec_from_dict(d, "x.toml")
    assert str(err.value).startswith("x.toml: ") and needle in str(err.value), str(err.value)


def test_spec_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[study\nname = 1")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="no such study file"):
        load_spec(tmp_path / "missing.toml")


def test_spec_round_trip_and_hash():
    s = _spec()
    assert spec_from_dict(s.to_dict()) == s
    assert s.with_run(executor="serial", workers=3).config_hash() == s.config_hash()  # how it runs: not hashed
    d = stub_spec_dict()
    d["study"]["seed"] = 8
    assert spec_from_dict(d).config_hash() != s.config_hash()


# ---- seeds and units ------------------------------------------------------------------------------
def test_seeds_and_units_are_deterministic():
    assert episode_seed(7, "a", "c1", 0) == episode_seed(7, "a", "c1", 0)
    seeds = {episode_seed(7, a, c, r) for a in "ab" for c in ("c1", "c2") for r in range(3)}
    assert len(seeds) == 12
    s = _spec()
    ids = [f"synth-{i:02d}" for i in range(6)]
    u1, u2 = plan_units(s, ids), plan_units(s, list(ids))
    assert u1 == u2 and len(u1) == 6 and all(len(u.episodes) == 4 for u in u1)
    assert sequence_order(7, ids, 1, 4) == sequence_order(7, ids, 1, 4) != sequence_order(7, ids, 2, 4)


@pytest.mark.parametrize("design", ["sequence", "crossed"])
def test_paired_arms_of_one_annotator_meet_the_same_draws(design):
    d = stub_spec_dict(design=design, length=4 if design == "sequence" else None)
    unpaired = spec_from_dict(d)
    d["run"]["paired"] = True
    paired = spec_from_dict(d)
    ids = [f"synth-{i:02d}" for i in range(6)]

    def seeds(spec):
        out: dict = {}
        for u in plan_units(spec, ids):
            for ep in u.episodes:
                out.setdefault(ep.arm, {})[(ep.case_id, ep.replicate, ep.position)] = ep.seed
        return out

    p, u = seeds(paired), seeds(unpaired)
    # both arms are stub_box: paired, replicate r of each meets the same seed on each case
    assert p["tight"] == p["loose"]
    assert all(u["tight"][k] != u["loose"][k] for k in u["tight"])
    # the key is part of the configuration only when set, so older studies keep their hashes
    assert "paired" not in unpaired.result_dict()["run"] and paired.config_hash() != unpaired.config_hash()
    d["run"]["paired"] = "yes"
    with pytest.raises(SpecError, match="paired"):
        spec_from_dict(d)


# ---- executors ------------------------------------------------------------------------------------
def test_serial_run_tables(serial_run):
    e, a = _rows(serial_run)
    assert len(e) == 6 * 2 * 2 and set(e["annotator"]) == {"tight", "loose"}
    assert (e["dice_check"] - e["final_dice"]).abs().max() < 1e-9  # the stored mask is the env's final mask
    assert {"hd95", "nsd", "mask_bits", "size_band", "texture_group", "seed"} <= set(e.columns)
    assert len(a) == e["n_actions"].sum() and a["is_prompt"].any()
    assert len(serial_run.cases) == 6 and "gt_bits" in serial_run.cases
    meta = serial_run.meta
    assert meta["status"] == "complete" and meta["units_complete"] == 6
    assert {"python", "numpy", "torch", "hiseg_sim"} <= set(meta["versions"])
    assert meta["seeds"]["study_seed"] == 7 and "SeedSequence" in meta["seeds"]["scheme"]
    assert meta["segmenters"]["stub_env"]["weights_sha256"] == "0" * 64


def test_process_pool_gives_the_serial_rows(serial_run, tmp_path, cache_dir):
    proc = run_study(
        _spec(episode_fn=HARNESS), tmp_path, executor="process", workers=2, cache_dir=cache_dir, progress=False
    )
    _same(serial_run, proc)
    assert proc.meta["sessions"][-1]["workers"] == 2


def test_ray_gives_the_serial_rows(serial_run, tmp_path, cache_dir):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'hiseg-sim[ray]'); not installed here")
    ray_run = run_study(
        _spec(episode_fn=HARNESS), tmp_path, executor="ray", workers=2, cache_dir=cache_dir, progress=False
    )
    _same(serial_run, ray_run)


# ---- resume ---------------------------------------------------------------------------------------
_KILL_SCRIPT = textwrap.dedent("""
    import json, sys
    from hiseg_sim.experiments import run_study, spec_from_dict
    if __name__ == "__main__":
        spec = spec_from_dict(json.loads(sys.argv[1]))
        run_study(spec, sys.argv[2], executor="process", workers=2, cache_dir=sys.argv[3], progress=False)
""")


def test_sigkill_midway_then_resume_gives_the_uninterrupted_rows(tmp_path, cache_dir):
    spec_d = stub_spec_dict(n_cases=8, episode_fn="stub_slow")
    out = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HISEG_STUB_DELAY_S": "0.15",
    }  # slow in the killed run only: the same spec runs at full speed below
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(spec_d), str(out), cache_dir],
        cwd=REPO,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    shards = out / "shards"
    deadline = time.time() + 90
    try:
        while time.time() < deadline:
            if len(list(shards.glob("*.manifest.json"))) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner and its pool workers, no clean-up allowed
        proc.wait()
    n_before = len(list(shards.glob("*.manifest.json")))
    assert 2 <= n_before < 8, f"kill landed at {n_before} of 8 units: {proc.stderr.read().decode()[-2000:]}"
    assert json.loads((out / "run.json").read_text())["status"] == "running"  # it never got to say otherwise
    resumed = run_study(spec_from_dict(spec_d), out, executor="serial", cache_dir=cache_dir, progress=False)
    assert resumed.meta["sessions"][-1]["units_skipped"] == n_before
    whole = run_study(
        spec_from_dict(spec_d), tmp_path / "whole", executor="serial", cache_dir=cache_dir, progress=False
    )
    _same(resumed, whole)
    e = resumed.episodes
    assert not e.duplicated(["annotator", "case_id", "replicate"]).any() and len(e) == 8 * 4


def test_corrupt_and_partial_shards_are_detected_and_rerun(serial_run, tmp_path, cache_dir):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(serial_run.dir, out)
    shards = sorted((out / "shards").glob("*.episodes.parquet"))
    truncated, orphaned = shards[0], shards[1]
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])  # a half-written file
    orphaned.unlink()  # actions + cases shards without their episodes
    (out / "shards" / ".x.episodes.parquet.abc.tmp").write_bytes(b"junk")  # a killed writer's temporary
    with pytest.warns(CorruptShardWarning) as rec:
        again = run_study(_spec(episode_fn=HARNESS), out, executor="serial", cache_dir=cache_dir, progress=False)
    msgs = " ".join(str(w.message) for w in rec)
    assert truncated.name in msgs and "unreadable" in msgs
    assert orphaned.name.split(".")[0] in msgs and "interrupted before its episodes shard" in msgs
    assert again.meta["sessions"][-1]["units_run"] == 2
    assert not list((out / "shards").glob("*.tmp"))
    _same(serial_run, again)


def test_another_configuration_is_refused(serial_run, tmp_path, cache_dir):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(serial_run.dir, out)
    d = stub_spec_dict(episode_fn=HARNESS)
    d["study"]["seed"] = 99
    with pytest.raises(RunMismatchError, match="another configuration"):
        run_study(spec_from_dict(d), out, executor="serial", cache_dir=cache_dir, progress=False)
    fresh = run_study(spec_from_dict(d), out, executor="serial", cache_dir=cache_dir, progress=False, fresh=True)
    assert fresh.meta["config_hash"] != serial_run.meta["config_hash"]
    assert not fresh.episodes["seed"].isin(serial_run.episodes["seed"]).any()


def test_resume_with_nothing_left_runs_nothing(serial_run, tmp_path, cache_dir):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(serial_run.dir, out)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptShardWarning)
        again = run_study(_spec(episode_fn=HARNESS), out, executor="process", cache_dir=cache_dir, progress=False)
    assert again.meta["sessions"][-1]["units_run"] == 0
    _same(serial_run, again)


# ---- sequence design ------------------------------------------------------------------------------
def test_sequence_design_keeps_one_person_and_feedback(tmp_path, cache_dir):
    d = stub_spec_dict(design="sequence", length=5, replicates=2, episode_fn=HARNESS)
    d["annotators"][0].update(feedback="worked_example", practice=3)
    d["annotators"][1].update(feedback="score")
    data = run_study(spec_from_dict(d), tmp_path, executor="serial", cache_dir=cache_dir, progress=False)
    e = data.episodes
    assert len(e) == 2 * 2 * 5
    assert (e["cases_seen"] == e["position"]).all()  # the same annotator object went through the sequence
    t = e[e["annotator"] == "tight"].set_index(["replicate", "position"]).sort_index()
    lo = e[e["annotator"] == "loose"].set_index(["replicate", "position"]).sort_index()
    assert (t["case_id"] == lo["case_id"]).all()  # both arms meet the same cases in the same order
    assert list(t.loc[0, "feedback"]) == ["worked_example"] * 3 + ["none"] * 2
    assert set(lo["feedback"]) == {"score"}
    # what the teacher showed after the previous case (the stub records the kind of Feedback it got)
    assert list(t.loc[0, "last_feedback"]) == ["none", "worked_example", "worked_example", "worked_example", "none"]
    assert list(lo.loc[0, "last_feedback"]) == ["none", "score", "score", "score", "score"]
    assert len(load_run(tmp_path).episodes) == 20


def test_sequence_length_defaults_to_every_case():
    d = stub_spec_dict(design="sequence", replicates=2, n_cases=6)
    spec = spec_from_dict(d)
    ids = [f"c{i}" for i in range(6)]
    units = plan_units(spec, ids)
    assert len(units) == 2 * 2  # arms x replicates
    for u in units:
        assert sorted(ep.case_id for ep in u.episodes) == ids  # each person sees every case once
        assert [ep.position for ep in u.episodes] == list(range(6))


def test_segmenter_runtime_suffix_is_validated():
    d = stub_spec_dict()
    d["segmenters"]["names"] = ["litemedsam@torch"]
    assert spec_from_dict(d).segmenters == ("litemedsam@torch",)
    d["segmenters"]["names"] = ["litemedsam@tpu"]
    with pytest.raises(SpecError, match="unknown runtime 'tpu'"):
        spec_from_dict(d)


@pytest.mark.parametrize("field", ["source", "annotator", "segmenter", "episode_fn"])
def test_a_spec_naming_a_python_callable_is_refused_before_anything_runs(field, tmp_path):
    """``os:system`` in any field that names a component is a one-line spec error; nothing is called."""
    marker = tmp_path / "ran"
    d = stub_spec_dict()
    if field == "source":
        d["cases"] = {"source": "os:system", "kwargs": {"command": f"touch {marker}"}}
    elif field == "annotator":
        d["annotators"][0].update(name="os:system", overrides={"command": f"touch {marker}"})
    elif field == "segmenter":
        d["segmenters"]["names"] = ["os:system"]
    else:
        d["run"]["episode_fn"] = "os:system"
    with pytest.raises(SpecError) as err:
        spec_from_dict(d, "x.toml")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("x.toml: ") and "'os:system'" in msg, msg
    assert not marker.exists()
