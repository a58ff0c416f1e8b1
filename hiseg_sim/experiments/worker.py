"""What a worker holds and does: segmenters built once, cases built on demand, units run to rows.

One :class:`WorkerContext` lives in each worker process (the process pool's initializer, a
cached global in a Ray worker, or the driver itself for the serial executor). It is made from a
picklable *worker config* (:func:`worker_config`): the study spec as a dict, the embedding cache
directory and the thread count. The segmenter — the expensive part, seconds to build — is built
once per worker and name and shared by every env of that worker; the embedding cache on disk is
shared by all workers (:func:`hiseg_sim.env.encoding.encode_once` makes sure a slice is encoded
once across them). An env is cheap (milliseconds) and holds its case list, so each unit gets
one env around the shared segmenter.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from hiseg_sim.codec import jsonable
from hiseg_sim.experiments.cases import CaseSource
from hiseg_sim.experiments.episode import case_record, final_mask_record, trace_rows
from hiseg_sim.experiments.spec import EPISODES, StudySpec, spec_from_dict
from hiseg_sim.experiments.units import WorkUnit

__all__ = ["UnitResult", "WorkerContext", "worker_config", "build_segmenter", "build_annotator_for"]


@dataclass
class UnitResult:
    """Rows of one work unit: ``tables`` maps ``"episodes"``, ``"actions"``, ``"cases"`` to lists of
    dicts; ``info`` holds what is not a result (worker pid, wall seconds, segmenter weights)."""

    unit_id: str
    tables: dict[str, list[dict]]
    info: dict = field(default_factory=dict)


def worker_config(spec: StudySpec, cache_dir: str | None, threads: int | None, workers: int = 1) -> dict:
    """The picklable recipe of a :class:`WorkerContext`."""
    return {
        "spec": spec.to_dict(),
        "cache_dir": None if cache_dir is None else str(cache_dir),
        "threads": threads,
        "workers": int(workers),
    }


def build_segmenter(name: str, cache_dir: str | None, checkpoint: str | None = None):
    """A segmenter by registry name (``"litemedsam"``, or ``"litemedsam@torch"`` to pick the prompt
    decoder's runtime); see :mod:`hiseg_sim.segmenters`."""
    from hiseg_sim import segmenters

    base, _, runtime = name.partition("@")
    return segmenters.build(base, checkpoint=checkpoint, cache_dir=cache_dir, runtime=runtime or "auto")


def build_annotator_for(arm) -> Any:
    """The annotator of an arm: ``build_annotator(name, **overrides)`` (a registered name)."""
    from hiseg_sim.annotators.registry import build_annotator

    return build_annotator(arm.name, **arm.overrides)


class WorkerContext:
    """Per-process state; see the module docstring."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        self.spec: StudySpec = spec_from_dict(cfg["spec"])
        self.cache_dir = cfg.get("cache_dir")
        self.threads = None
        if cfg.get("threads") is not None:
            self.threads = _set_threads(int(cfg["threads"]))
        self.cases = CaseSource(self.spec.cases)
        self._segs: dict[str, Any] = {}
        self.episode_fn = EPISODES.get(self.spec.run.episode_fn)
        self._meta: dict | None = None

    def segmenter(self, name: str):
        if name not in self._segs:
            ckpt = self.spec.checkpoints.get(name) or self.spec.checkpoints.get(name.partition("@")[0])
            self._segs[name] = build_segmenter(name, self.cache_dir, ckpt)
        return self._segs[name]

    def _catalogue(self) -> dict:
        if self._meta is None:
            self._meta = {r["case_id"]: r for r in self.cases.catalogue()}
        return self._meta

    def make_env(self, cases, segmenter):
        import gymnasium as gym

        import hiseg_sim  # noqa: F401  (registers the env ids in a fresh process)

        return gym.make(
            self.spec.env_id, cases=list(cases), segmenter=segmenter, cache_dir=self.cache_dir, **self.spec.env_kwargs
        )

    def run_unit(self, unit: WorkUnit) -> UnitResult:
        """Run every episode of ``unit`` in order; return its rows."""
        t0 = time.perf_counter()
        seg = self.segmenter(unit.segmenter)
        cases = self.cases.load(unit.case_ids)
        by_id = {c.case_id: c for c in cases}
        meta = self._catalogue()
        env = self.make_env(cases, seg)
        arms = {a.label: a for a in self.spec.annotators}
        episodes, actions = [], []
        persistent = None
        if unit.design == "sequence":
            assert unit.arm is not None  # a sequence unit is one person of one arm
            persistent = build_annotator_for(arms[unit.arm])
        try:
            for ep in unit.episodes:
                arm = arms[ep.arm]
                annotator = persistent if persistent is not None else build_annotator_for(arm)
                res = self.episode_fn(env, annotator, case_id=ep.case_id, seed=ep.seed, feedback=ep.feedback)
                trace, summary = (res.trace, res.summary) if hasattr(res, "summary") else res
                keys = {
                    "unit_id": unit.unit_id,
                    "segmenter": unit.segmenter,
                    "annotator": arm.label,
                    "case_id": ep.case_id,
                    "replicate": ep.replicate,
                    "position": ep.position,
                }
                m = meta.get(ep.case_id, {})
                row = dict(keys)
                row.update(
                    annotator_name=arm.name,
                    seed=ep.seed,
                    feedback=ep.feedback,
                    size_band=m.get("size_band"),
                    texture_group=m.get("texture_group"),
                    diameter_mm=m.get("diameter_mm"),
                    texture=m.get("texture"),
                )
                for k, v in dict(summary).items():
                    if k not in row and k not in ("case_id", "annotator", "seed"):
                        row[k] = jsonable(v)
                row.update(final_mask_record(env, by_id[ep.case_id]))
                episodes.append(row)
                actions.extend(trace_rows(list(trace), keys))
        finally:
            env.close()
        case_rows = [case_record(by_id[c]) for c in unit.case_ids]
        info = {
            "pid": os.getpid(),
            "wall_s": time.perf_counter() - t0,
            "threads": self.threads,
            "segmenter": unit.segmenter,
            "weights_sha256": getattr(seg, "weights_sha256", None),
            "runtime": getattr(seg, "runtime", None),
            "n_episodes": len(unit.episodes),
        }
        return UnitResult(unit.unit_id, {"episodes": episodes, "actions": actions, "cases": case_rows}, info)


def _set_threads(n: int) -> int:
    try:
        from hiseg_sim.segmenters.threads import set_threads
    except ImportError:  # pragma: no cover - segmenters without the helper
        import torch

        torch.set_num_threads(n)
        return n
    return set_threads(n)


# ---- a process-global context (process-pool initializer, Ray workers) ---------------------------
_CTX: dict[str, WorkerContext] = {}


def init_worker(cfg: dict) -> None:
    """Process-pool initializer: build this process's context once."""
    _CTX.clear()
    _CTX["ctx"] = WorkerContext(cfg)


def run_unit_in_worker(unit: WorkUnit) -> UnitResult:
    """Run ``unit`` with the context :func:`init_worker` built in this process."""
    if "ctx" not in _CTX:
        raise RuntimeError("worker context missing: the pool must be started with initializer=init_worker")
    return _CTX["ctx"].run_unit(unit)


def cached_context(key: str, cfg: dict) -> WorkerContext:
    """The context for ``key`` in this process, built on first use (Ray workers are reused across tasks)."""
    ctx = _CTX.get(key)
    if ctx is None:
        _CTX.clear()
        ctx = _CTX[key] = WorkerContext(cfg)
    return ctx
