"""Nothing lost, nothing run that was not meant to: one writer per run directory, checksummed
shards, plain run names, and no process-pool worker outliving its driver.

Every study here is the TEST STUB study of tests/experiment_support.py (stub segmenter, stub
annotators, synthetic cases), built only through its helpers. The command-line tests run the
real ``hiseg-sim run`` in a subprocess whose environment carries a random mark, so every process
it starts (forkserver, pool workers, resource tracker) can be found in /proc after the driver is
gone, whoever adopted it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from hiseg_sim.experiments import (
    CorruptShardWarning,
    SpecError,
    load_run,
    run_study,
    spec_from_dict,
)
from hiseg_sim.experiments.storage import (
    LOCK_NAME,
    NotARunDirError,
    RunLockedError,
    RunNameError,
    RunStore,
    run_dir_for,
)
from tests.experiment_support import stub_spec_dict

REPO = Path(__file__).resolve().parents[1]
MARK_VAR = "HISEG_RUN_SAFETY_MARK"
LINUX_PROC = Path("/proc/self/environ").exists()


# ---- helpers --------------------------------------------------------------------------------------
def _slow_spec_dict(n_cases: int = 8) -> dict:
    """The stub study whose episodes sleep ``$HISEG_STUB_DELAY_S`` (so a run can be caught midway);
    the slow episode function is found in the registry by what it is, not by a name written here."""
    from hiseg_sim.experiments.spec import EPISODES
    from tests.experiment_support import slow_stub_episode

    names = [n for n in EPISODES.names() if EPISODES.get(n) is slow_stub_episode]
    assert len(names) == 1, f"the slow stub episode is registered as {names}"
    return stub_spec_dict(n_cases=n_cases, episode_fn=names[0])


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"no TOML for {type(v).__name__}")


def _write_toml(d: dict, path: Path) -> Path:
    """A study file of the parsed-TOML dict ``d`` (tables, arrays of tables, inline tables)."""
    lines = []
    for key, val in d.items():
        if isinstance(val, dict):
            lines.append(f"[{key}]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in val.items()]
        else:
            for table in val:
                lines.append(f"[[{key}]]")
                lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
    text = "\n".join(lines) + "\n"
    assert tomllib.loads(text) == d
    path.write_text(text)
    return path


def _same(a, b) -> None:
    for t in ("episodes", "actions", "cases"):
        pd.testing.assert_frame_equal(
            getattr(a, t).reset_index(drop=True), getattr(b, t).reset_index(drop=True), check_exact=True
        )


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("hiseg-sim")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "hiseg_sim.cli"]


def _cli_env(mark: str, delay: float) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "HISEG_STUB_DELAY_S": str(delay),
        "HISEG_NO_PROGRESS": "1",
        MARK_VAR: mark,
    }


def _run_cmd(spec_toml: Path, out: Path, cache_dir: str) -> list[str]:
    """``hiseg-sim run`` on the process executor with two workers, no report."""
    return _cli() + ["run", str(spec_toml), "--out", str(out), "--executor", "process", "--workers", "2",
                     "--cache-dir", cache_dir, "--no-report"]  # fmt: skip


def _as_in_a_terminal() -> None:
    """In the child before exec: SIGINT back to its default. A shell starts background jobs with
    SIGINT ignored, and an ignored signal stays ignored across exec, so a test run started with
    ``&`` or ``nohup`` would hand the driver a Ctrl-C it may not hear; a run typed at a terminal
    hears it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_run(spec_toml: Path, out: Path, cache_dir: str, mark: str, delay: float) -> subprocess.Popen:
    """:func:`_run_cmd` started in its own session, hearing Ctrl-C as a run typed at a terminal does."""
    return subprocess.Popen(
        _run_cmd(spec_toml, out, cache_dir),
        cwd=REPO,
        env=_cli_env(mark, delay),
        start_new_session=True,
        preexec_fn=_as_in_a_terminal,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_or_stacks(proc: subprocess.Popen, timeout: float) -> int:
    """``proc``'s exit code; if it is still running after ``timeout`` s, fail with the stack of
    every thread in it (the CLI prints them on SIGUSR1) so the failure says where it hung."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(2.0)
        proc.kill()
        err = proc.communicate()[1].decode(errors="replace")
        pytest.fail(f"still running {timeout:.0f} s later; its threads:\n{err[-6000:]}")


def _marked(mark: str) -> dict[int, str]:
    """Live processes (not zombies) whose environment carries ``mark``: pid → command line."""
    needle = f"{MARK_VAR}={mark}".encode()
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if needle not in (d / "environ").read_bytes().split(b"\0"):
                continue
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:160]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found[int(d.name)] = cmd
    return found


def _wait_for(cond, timeout: float, poll: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll)
    return cond()


def _kill_marked(mark: str) -> None:
    """Clean-up after a failed assertion: SIGKILL what this test started (by pid)."""
    for pid in _marked(mark):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _n_committed(out: Path) -> int:
    return len(list((out / "shards").glob("*.manifest.json")))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("emb-cache"))


@pytest.fixture(scope="module")
def lone_run(tmp_path_factory, cache_dir):
    """The reference: the slow stub study (at full speed: no delay here) run alone, serially."""
    out = tmp_path_factory.mktemp("lone")
    return run_study(spec_from_dict(_slow_spec_dict()), out, executor="serial", cache_dir=cache_dir, progress=False)


# ---- 1. one writer per run directory ----------------------------------------------------------------
def test_a_second_writer_is_refused_at_once_naming_the_holder_and_the_lock(tmp_path):
    store = RunStore(tmp_path / "run")
    with store.lock():
        holder = json.loads(store.holder_path.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        t0 = time.monotonic()
        with pytest.raises(RunLockedError) as err, RunStore(tmp_path / "run").lock():
            pass
        assert time.monotonic() - t0 < 2.0
        msg = str(err.value)
        assert "\n" not in msg
        for part in (
            f"pid {os.getpid()}",
            socket.gethostname(),
            f"started {holder['started']}",
            str(tmp_path / "run" / LOCK_NAME),
        ):
            assert part in msg, msg
    assert not store.holder_path.exists()  # the holder record goes with the lock
    with RunStore(tmp_path / "run").lock():  # and the lock can be taken again
        pass


_HOLD_SCRIPT = textwrap.dedent("""
    import sys, time
    from hiseg_sim.experiments.storage import RunStore
    with RunStore(sys.argv[1]).lock():
        print("held", flush=True)
        time.sleep(120)
""")


def test_the_lock_of_a_killed_writer_does_not_block_the_next(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_SCRIPT, str(run_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held", holder.stderr.read()
        with pytest.raises(RunLockedError, match=f"pid {holder.pid} "), RunStore(run_dir).lock():
            pass
    finally:
        holder.kill()  # SIGKILL: no clean-up in the holder
        holder.wait()
    assert json.loads((run_dir / "run.lock.holder").read_text())["pid"] == holder.pid  # its record is stale
    t0 = time.monotonic()
    with RunStore(run_dir).lock():
        assert time.monotonic() - t0 < 1.0
        assert json.loads((run_dir / "run.lock.holder").read_text())["pid"] == os.getpid()


# ---- 2. checksummed shards ---------------------------------------------------------------------------
def _flip(path: Path, rng: np.random.Generator) -> int:
    """Flip one random bit of ``path``; half of the flips of a Parquet shard land in its footer
    (the file metadata, where the unit id and row count are). Returns the byte offset."""
    data = bytearray(path.read_bytes())
    lo = 0
    if path.suffix == ".parquet" and rng.random() < 0.5:
        footer = int.from_bytes(data[-8:-4], "little")
        lo = max(0, len(data) - 8 - footer)
    pos = int(rng.integers(lo, len(data)))
    data[pos] ^= 1 << int(rng.integers(0, 8))
    path.write_bytes(bytes(data))
    return pos


def test_200_random_bit_flips_are_each_detected_or_harmless_and_resume_to_the_clean_rows(tmp_path, cache_dir):
    spec = spec_from_dict(stub_spec_dict(n_cases=4, replicates=1))
    clean_dir = tmp_path / "clean"
    clean = run_study(spec, clean_dir, executor="serial", cache_dir=cache_dir, progress=False)
    units = sorted(p.name[: -len(".manifest.json")] for p in (clean_dir / "shards").glob("*.manifest.json"))
    files = {u: sorted(p.name for p in (clean_dir / "shards").glob(f"{u}.*")) for u in units}
    assert len(units) == 4 and all(len(f) == 4 for f in files.values())  # three shards and their manifest
    rng = np.random.default_rng(20240611)
    detected = harmless = 0
    # 50 resumes of 4 flips: one single-bit flip in each unit's files (units are stored and checked
    # independently, and every warning names its unit, so each flip's fate is told apart).
    for batch in range(50):
        work = tmp_path / f"flip{batch % 2}"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(clean_dir, work)
        flips = {}
        for u in units:
            name = files[u][int(rng.integers(len(files[u])))]
            pos = _flip(work / "shards" / name, rng)
            flips[u] = (name, pos, (work / "shards" / name).read_bytes())
        if batch < 3:  # a reader leaves a failing unit out (with a warning) and reads the others as they were
            with warnings.catch_warnings(record=True) as rec:
                warnings.simplefilter("always")
                seen = load_run(work)
            out = {u for u in units for w in rec if str(w.message).startswith(f"unit {u}:")}
            for t in ("episodes", "actions"):
                want = getattr(clean, t)
                want = want[~want["unit_id"].isin(out)].reset_index(drop=True)
                got = getattr(seen, t).reset_index(drop=True)
                if len(want):
                    pd.testing.assert_frame_equal(got, want, check_exact=True)
                else:
                    assert got.empty
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            resumed = run_study(spec, work, executor="serial", cache_dir=cache_dir, progress=False)
        msgs = [str(w.message) for w in rec if issubclass(w.category, CorruptShardWarning)]
        n_detected = 0
        for u, (name, pos, flipped) in flips.items():
            what = f"batch {batch}: {name} byte {pos}"
            mine = [m for m in msgs if m.startswith(f"unit {u}:")]
            if mine:
                n_detected += 1
                assert len(mine) == 1 and name in mine[0] and "runs again" in mine[0], (what, mine)
                kept = work / "shards" / "damaged" / name
                assert kept.read_bytes() == flipped, what  # set aside as found, not deleted
            else:
                harmless += 1  # not re-run: its rows, read from the flipped file, are checked below
        detected += n_detected
        assert len(msgs) == n_detected and resumed.meta["sessions"][-1]["units_run"] == n_detected
        _same(resumed, clean)
        assert resumed.meta["status"] == "complete"
    assert detected + harmless == 200 and detected > 0


def _metadata_flip(data: bytes) -> bytes:
    """``data`` (a shard) with one bit flipped inside the Arrow schema stored in its footer, chosen
    so that the schema still reads but the unit's metadata JSON is no longer valid UTF-8."""
    import base64

    import pyarrow as pa
    import pyarrow.parquet as pq

    b64 = pq.read_metadata(pa.BufferReader(data)).metadata[b"ARROW:schema"]
    at = bytes(data).find(b64)
    j = base64.b64decode(b64).find(b'{"unit_id"')
    assert at > 0 and j >= 0
    for char in range(at + (j // 3) * 4, at + (j // 3) * 4 + 16):
        for bit in range(8):
            cand = bytearray(data)
            cand[char] ^= 1 << bit
            try:
                meta = pq.read_table(pa.BufferReader(bytes(cand))).schema.metadata[b"hiseg_sim"]
                meta.decode()
            except UnicodeDecodeError:
                return bytes(cand)
            except Exception:  # noqa: BLE001, S112 - this flip breaks something else: try the next
                continue
    raise AssertionError("no single-bit flip makes the metadata invalid UTF-8")


def _unseal(run_dir: Path) -> None:
    """Make ``run_dir`` look written before manifests existed."""
    for m in (run_dir / "shards").glob("*.manifest.json"):
        m.unlink()
    meta = json.loads((run_dir / "run.json").read_text())
    meta.pop("shard_format")
    (run_dir / "run.json").write_text(json.dumps(meta))


def test_a_run_from_before_manifests_is_adopted_and_a_shard_with_damaged_metadata_reruns(tmp_path, cache_dir):
    spec = spec_from_dict(stub_spec_dict(n_cases=3, replicates=1))
    clean = run_study(spec, tmp_path / "clean", executor="serial", cache_dir=cache_dir, progress=False)
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "clean", old)
    _unseal(old)
    # One bit that makes the shard's own metadata JSON invalid UTF-8 (what used to crash every resume).
    victim = min((old / "shards").glob("*.actions.parquet"))
    victim.write_bytes(_metadata_flip(victim.read_bytes()))
    with pytest.warns(CorruptShardWarning, match=victim.name.replace(".", r"\.")):
        resumed = run_study(spec, old, executor="serial", cache_dir=cache_dir, progress=False)
    assert resumed.meta["sessions"][-1]["units_run"] == 1  # the two whole units were adopted as they are
    assert len(list((old / "shards").glob("*.manifest.json"))) == 3
    _same(resumed, clean)


# ---- 3. plain run names; --fresh deletes only a run ------------------------------------------------
@pytest.mark.parametrize("name", ["..", ".", "", ".hidden", "a/b", "/abs", "../up", "a\\b", "x" * 129, "a\nb", None])
def test_run_names_that_are_not_plain_are_refused_in_one_line(tmp_path, name):
    with pytest.raises(RunNameError) as err:
        run_dir_for(tmp_path, name)
    assert "\n" not in str(err.value) and repr(name) in str(err.value) and "plain name" in str(err.value)


def test_a_plain_run_name_stays_under_its_root_even_through_a_symlink(tmp_path):
    root = tmp_path / "runs"
    assert run_dir_for(root, "hiseg_groups") == root / "hiseg_groups"
    assert run_dir_for(root, "demo-1.2+b") == root / "demo-1.2+b"
    root.mkdir()
    (root / "elsewhere").symlink_to(tmp_path)
    with pytest.raises(RunNameError, match="outside"):
        run_dir_for(root, "elsewhere")


def test_a_study_named_dotdot_writes_nothing_outside_runs(tmp_path, cache_dir, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("keep")
    monkeypatch.chdir(work)  # the default runs root is ./runs
    d = stub_spec_dict(n_cases=2, replicates=1)
    d["study"]["name"] = ".."
    with pytest.raises((SpecError, RunNameError)) as err:
        run_study(spec_from_dict(d), executor="serial", cache_dir=cache_dir, progress=False, fresh=True)
    assert "\n" not in str(err.value) and "'..'" in str(err.value)
    assert sorted(os.listdir(work)) == ["precious.txt"] and sorted(os.listdir(tmp_path)) == ["work"]


def test_fresh_refuses_a_directory_that_holds_no_run_and_deletes_nothing(tmp_path, cache_dir):
    spec = spec_from_dict(stub_spec_dict(n_cases=2, replicates=1))
    mine = tmp_path / "mine"
    (mine / "shards").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep")
    (mine / "shards" / "figure.parquet").write_bytes(b"keep")
    before = sorted(str(p.relative_to(mine)) for p in mine.rglob("*"))
    with pytest.raises(NotARunDirError) as err:
        run_study(spec, mine, executor="serial", cache_dir=cache_dir, progress=False, fresh=True)
    assert "\n" not in str(err.value) and str(mine) in str(err.value)
    assert sorted(str(p.relative_to(mine)) for p in mine.rglob("*")) == before
    # a run directory, a new one and an empty one may all be started afresh
    run = run_study(spec, tmp_path / "new", executor="serial", cache_dir=cache_dir, progress=False, fresh=True)
    again = run_study(spec, tmp_path / "new", executor="serial", cache_dir=cache_dir, progress=False, fresh=True)
    assert again.meta["sessions"][-1]["units_run"] == 2 and len(again.meta["sessions"]) == 1
    (tmp_path / "empty").mkdir()
    _same(run_study(spec, tmp_path / "empty", executor="serial", cache_dir=cache_dir, progress=False, fresh=True), run)


# ---- 4. no process-pool worker outlives its driver ---------------------------------------------------
needs_proc = pytest.mark.skipif(not LINUX_PROC, reason="finds the run's processes in /proc (Linux)")


@needs_proc
def test_kill_9_of_the_driver_leaves_no_worker_and_the_run_resumes_to_the_lone_rows(tmp_path, cache_dir, lone_run):
    spec_toml = _write_toml(_slow_spec_dict(), tmp_path / "stub.toml")
    out, mark = tmp_path / "run", uuid.uuid4().hex
    driver = _start_run(spec_toml, out, cache_dir, mark, delay=0.15)
    try:
        # midway: units committed and the pool up (forkserver, two workers, resource tracker)
        up = _wait_for(lambda: _n_committed(out) >= 2 and len(_marked(mark)) >= 4 or driver.poll() is not None, 90)
        children = {p: c for p, c in _marked(mark).items() if p != driver.pid}
        assert up and driver.poll() is None and len(children) >= 3, (
            children,
            driver.poll(),
            driver.stderr.read().decode()[-2000:] if driver.poll() is not None else "",
        )
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        gone = _wait_for(lambda: not _marked(mark), 10, poll=0.1)
        assert gone, f"alive 10 s after kill -9 of the driver: {_marked(mark)}"
    finally:
        driver.kill()
        driver.wait()
        _kill_marked(mark)
    n_before = _n_committed(out)
    assert 2 <= n_before < 8, f"the kill landed after {n_before} of 8 units"
    resumed = run_study(spec_from_dict(_slow_spec_dict()), out, executor="serial", cache_dir=cache_dir, progress=False)
    assert resumed.meta["sessions"][-1]["units_skipped"] == n_before
    _same(resumed, lone_run)


@needs_proc
def test_ctrl_c_stops_the_run_promptly_leaves_no_child_and_records_the_session(tmp_path, cache_dir):
    spec_toml = _write_toml(_slow_spec_dict(), tmp_path / "stub.toml")
    out, mark = tmp_path / "run", uuid.uuid4().hex
    driver = _start_run(spec_toml, out, cache_dir, mark, delay=2.0)  # 8 s a unit
    try:
        up = _wait_for(lambda: len(_marked(mark)) >= 4 or driver.poll() is not None, 90)
        assert up and driver.poll() is None, driver.stderr.read().decode()[-2000:] if driver.poll() is not None else ""
        time.sleep(1.5)  # the workers are inside their first units, ~6 s from their end
        # SIGINT to the driver alone: stopping the pool is its job. (A terminal's Ctrl-C reaches the
        # whole process group; the forkserver, the resource tracker and the workers ignore it.)
        os.kill(driver.pid, signal.SIGINT)
        t0 = time.monotonic()
        rc = _wait_or_stacks(driver, 30)
        stopped_s = time.monotonic() - t0
        gone = _wait_for(lambda: not _marked(mark), 10, poll=0.1)
        assert gone, f"alive 10 s after Ctrl-C: {_marked(mark)}"
    finally:
        driver.kill()
        driver.wait()
        _kill_marked(mark)
    assert rc != 0 and stopped_s < 4.5, (rc, stopped_s)  # it did not wait for the running units
    meta = json.loads((out / "run.json").read_text())
    assert meta["status"] == "partial" and len(meta["sessions"]) == 1
    assert meta["sessions"][0]["units_run"] == meta["units_complete"] == _n_committed(out) == 0


@needs_proc
def test_sigusr1_prints_where_every_thread_of_a_running_run_is_and_the_run_goes_on(tmp_path, cache_dir):
    spec_toml = _write_toml(_slow_spec_dict(), tmp_path / "stub.toml")
    out, mark = tmp_path / "run", uuid.uuid4().hex
    driver = _start_run(spec_toml, out, cache_dir, mark, delay=2.0)
    try:
        up = _wait_for(lambda: len(_marked(mark)) >= 4 or driver.poll() is not None, 90)
        assert up and driver.poll() is None
        os.kill(driver.pid, signal.SIGUSR1)
        time.sleep(1.5)
        assert driver.poll() is None  # it printed and went on
    finally:
        driver.kill()
        err = driver.communicate()[1].decode(errors="replace")
        _kill_marked(mark)
    assert "Current thread" in err and "run_process" in err, err[-3000:]


# ---- 5. two concurrent runs into one directory -------------------------------------------------------
@needs_proc
def test_two_concurrent_runs_into_one_directory_the_second_is_refused_the_first_is_whole(tmp_path, cache_dir, lone_run):
    spec_toml = _write_toml(_slow_spec_dict(), tmp_path / "stub.toml")
    out, mark = tmp_path / "run", uuid.uuid4().hex
    first = _start_run(spec_toml, out, cache_dir, mark, delay=0.1)
    try:
        holder = out / "run.lock.holder"
        started = _wait_for(lambda: holder.is_file() and (out / "run.json").is_file() or first.poll() is not None, 60)
        assert started and first.poll() is None, first.stderr.read().decode()[-2000:]
        second = subprocess.run(
            _run_cmd(spec_toml, out, cache_dir),
            cwd=REPO,
            env=_cli_env(mark, 0.0),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert first.poll() is None, "the first run ended before the second was refused: the test proves nothing"
        assert second.returncode == 2, (second.returncode, second.stderr[-2000:])
        errors = [line for line in second.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and second.stderr.rstrip().endswith(errors[0]), second.stderr  # one line, the last
        err = errors[0]
        when = json.loads(holder.read_text())["started"]
        for part in (f"pid {first.pid}", socket.gethostname(), f"started {when}", str(out / LOCK_NAME)):
            assert part in err, err
        assert first.wait(timeout=90) == 0, first.stderr.read().decode()[-2000:]
    finally:
        first.kill()
        first.wait()
        _kill_marked(mark)
    data = load_run(out)
    _same(data, lone_run)
    assert data.meta["status"] == "complete" and len(data.meta["sessions"]) == 1
    assert not (out / "shards" / "damaged").exists()
