"""Run a study: cases x annotators x segmenters x seeds → work units → episodes → Parquet shards.

>>> from hiseg_sim.experiments import run_study
>>> data = run_study("experiments/demo.toml", executor="process")       # doctest: +SKIP
>>> data.episodes.groupby("annotator").dice.mean()                       # doctest: +SKIP

:func:`run_study` plans the units (:mod:`~hiseg_sim.experiments.units`), skips those whose shards
are already whole in ``runs/<study>/`` (resume), runs the rest on the chosen executor
(:mod:`~hiseg_sim.experiments.executors`) and writes each unit's shards as it completes
(:mod:`~hiseg_sim.experiments.storage`), holding the directory's write lock throughout: a second
run into the same directory is refused at once. Interrupt it at any point (even ``kill -9``) and
call it again: it finishes what is missing and the tables are exactly those of an uninterrupted run.

With more than one worker, the slices the episodes are known to look at (their start slices, or
the whole nodule with ``pre_encode="nodule"``) are queued first, split across the workers
(:func:`~hiseg_sim.experiments.worker.plan_slice_jobs`), and each is encoded once: the episodes
find them in the shared cache, or, when a unit starts before another worker's batch reached its
slice, encode it themselves under the slice's lock. What the workers' segmenters did (encoder and decoder calls and seconds,
pre-encoding included) and the distinct slices the episodes used are summed into the run's
session record, ``run.json``'s ``sessions``.
"""

from __future__ import annotations

import os
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hiseg_sim.experiments.cases import CaseSource
from hiseg_sim.experiments.executors import resolve_workers, run_units
from hiseg_sim.experiments.spec import StudySpec, load_spec
from hiseg_sim.experiments.storage import RunData, RunStore, load_run, run_dir_for
from hiseg_sim.experiments.units import WorkUnit, plan_units
from hiseg_sim.experiments.worker import (
    EncodeResult,
    batch_slice_jobs,
    plan_slice_jobs,
    worker_config,
)

__all__ = ["SEED_SCHEME", "RunPlan", "plan_study", "run_study", "default_run_dir"]

SEED_SCHEME = (
    "episode seed = SeedSequence([study_seed, sha256_u64(arm_label), sha256_u64(case_id), replicate])"
    ".generate_state(1, uint32)[0]; sequence order = SeedSequence([study_seed, sha256_u64('sequence-order'), "
    "replicate]) permutation"
)


@dataclass
class RunPlan:
    """What :func:`run_study` will do: the spec (with overrides applied), the units and where to write."""

    spec: StudySpec
    units: list[WorkUnit]
    run_dir: Path
    cache_dir: str
    cases: list[dict]

    @property
    def n_episodes(self) -> int:
        return sum(len(u.episodes) for u in self.units)


def default_run_dir(spec: StudySpec, runs_root: str | os.PathLike = "runs") -> Path:
    """``runs_root/<study name>``; a name that is not plain (``..``, hidden, with ``/``) is refused
    (:func:`~hiseg_sim.experiments.storage.run_dir_for`)."""
    return run_dir_for(runs_root, spec.name)


def plan_study(
    spec: StudySpec | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    executor: str | None = None,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> RunPlan:
    """Load (if a path) and plan a study without running anything."""
    if not isinstance(spec, StudySpec):
        spec = load_spec(Path(spec))
    changes: dict[str, object] = {}
    if executor is not None:
        changes["executor"] = executor
    if workers is not None:
        changes["workers"] = int(workers)
    if changes:
        spec = spec.with_run(**changes)
    if cache_dir is None:
        cache_dir = spec.run.cache_dir
    if cache_dir is None:
        from hiseg_sim.segmenters.cache import default_cache_dir

        cache_dir = default_cache_dir()
    cases = CaseSource(spec.cases).catalogue()
    units = plan_units(spec, [c["case_id"] for c in cases])
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(spec)
    return RunPlan(spec, units, run_dir, str(Path(cache_dir).expanduser()), cases)


def run_study(
    spec: StudySpec | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    executor: str | None = None,
    workers: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    fresh: bool = False,
    progress: bool = True,
    max_units: int | None = None,
    threads: int | None = None,
    pre_encode: bool | str = True,
) -> RunData:
    """Run (or resume) a study and return its tables.

    Args:
        spec: a :class:`StudySpec`, a TOML path, or a shipped study's name (``"hiseg_groups"``).
        out_dir: run directory (default ``runs/<study name>``).
        executor: ``"serial"``, ``"process"`` or ``"ray"`` (default: the spec's ``[run] executor``).
        workers: processes (0 = all cores; default: the spec's).
        cache_dir: on-disk embedding cache shared by the workers (default: the spec's, else
            :func:`hiseg_sim.segmenters.default_cache_dir`).
        fresh: delete the run's shards first (else resume: complete units are skipped); refused for a
            directory that holds something but no hiseg-sim run.
        progress: a progress bar over units on stderr.
        max_units: run at most this many of the missing units, then stop (the run stays resumable).
        threads: intra-op threads per worker (default: the executor's rule).
        pre_encode: with more than one worker, encode the slices the episodes will look at
            first, split across the workers (see the module docstring): ``True`` or ``"start"``
            (each episode's start slice), ``"nodule"`` (also the nodule's slices in 3-D), ``False``
            (none). Rows are the same either way.

    Raises:
        RunMismatchError: ``out_dir`` holds a run of another configuration; or its subclasses:
            RunLockedError (another process is writing ``out_dir``), NotARunDirError (``fresh`` for a
            directory holding no run), RunNameError (a study name that is not a plain name).
        UnitFailed: a unit raised (the units finished before it are kept).
    """
    plan = plan_study(spec, out_dir, executor=executor, workers=workers, cache_dir=cache_dir)
    store = RunStore(plan.run_dir)
    if fresh:
        store.check_fresh()  # before the lock file is made in a directory that is not a run's
    with store.lock():
        _run_locked(plan, store, fresh, progress, max_units, threads, pre_encode)
    return load_run(plan.run_dir)


_WORK_KEYS = ("encoder_calls", "encoder_s", "decoder_calls", "decoder_s", "cache_hits")


def _run_locked(
    plan: RunPlan,
    store: RunStore,
    fresh: bool,
    progress: bool,
    max_units: int | None,
    threads: int | None,
    pre_encode: bool | str = True,
) -> None:
    spec = plan.spec
    seeds = {"study_seed": spec.seed, "scheme": SEED_SCHEME, "n_episodes": plan.n_episodes}
    meta = store.prepare(spec.to_dict(), spec.config_hash(), seeds, len(plan.units), fresh=fresh)
    done = store.completed([u.unit_id for u in plan.units])
    todo = [u for u in plan.units if u.unit_id not in done]
    if max_units is not None:
        todo = todo[: int(max_units)]
    serial = spec.run.executor == "serial"
    n_workers = 1 if serial else resolve_workers(spec.run.workers, len(todo))
    session: dict[str, Any] = {
        "executor": spec.run.executor,
        "workers": n_workers,
        "units_skipped": len(done),
        "units_run": 0,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "loadavg_start": _loadavg(),
    }
    t0 = time.perf_counter()
    batches: list = []
    if pre_encode and todo and not serial and resolve_workers(spec.run.workers, 1 << 30) > 1:
        scope = "start" if pre_encode is True else str(pre_encode)
        jobs = plan_slice_jobs(spec, todo, CaseSource(spec.cases), scope)
        # a few units (a crossed study of few cases) still keep every worker encoding
        n_workers = resolve_workers(spec.run.workers, max(len(todo), len(jobs)))
        session["workers"] = n_workers
        batches = batch_slice_jobs(jobs, n_workers)
        session["pre_encode"] = {
            "scope": scope,
            "slices": len(jobs),
            "batches": len(batches),
            "plan_s": round(time.perf_counter() - t0, 3),
            "encoder_calls": 0,
            "encoder_s": 0.0,
        }
    cfg = worker_config(spec, plan.cache_dir, threads, n_workers)
    work = dict.fromkeys(_WORK_KEYS, 0)
    slice_keys: set[str] = set()
    nodes: set[str] = set()
    bar = _bar(len(todo), f"{spec.name} ({spec.run.executor})", progress and bool(todo))
    try:
        # closing(): on an error or Ctrl-C here the executor stops its workers now, not when the
        # generator is collected (a traceback keeps it alive; a process pool would wait for them).
        with closing(run_units(spec.run.executor, todo, cfg, n_workers, batches)) as results:
            for res in results:
                if isinstance(res, EncodeResult):
                    pre = session["pre_encode"]
                    pre["encoder_calls"] += res.info["encoder_calls"]
                    pre["encoder_s"] = round(pre["encoder_s"] + res.info["encoder_s"], 3)
                    continue
                for k, v in res.info.get("work", {}).items():
                    if k in work:
                        work[k] += v
                slice_keys.update(res.info.get("slice_keys") or ())
                if res.info.get("node"):
                    nodes.add(res.info["node"])
                store.write_unit(res)
                session["units_run"] += 1
                seg = res.info.get("segmenter")
                if seg and seg not in meta["segmenters"]:
                    meta["segmenters"][seg] = {
                        "weights_sha256": res.info.get("weights_sha256"),
                        "runtime": res.info.get("runtime"),
                    }
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        session.update(
            wall_s=round(time.perf_counter() - t0, 3),
            loadavg_end=_loadavg(),
            work={k: round(v, 3) if isinstance(v, float) else v for k, v in work.items()},
            slices_used=len(slice_keys),
            **({"nodes_used": len(nodes)} if nodes else {}),
        )
        meta["sessions"].append(session)
        complete = len(done) + session["units_run"]  # whole at the start, or written whole since
        meta.update(
            units_complete=complete,
            status="complete" if complete == len(plan.units) else "partial",
            updated=time.strftime("%Y-%m-%dT%H:%M:%S"),
        )
        store.write_meta(meta)


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def _bar(total: int, desc: str, enabled: bool):
    from hiseg_sim.progress import bar

    return bar(total, desc, unit="unit", enabled=enabled)
