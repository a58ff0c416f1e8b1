"""What a worker holds and does: segmenters built once, cases built on demand, units run to rows.

One :class:`WorkerContext` lives in each worker process (the process pool's initializer, a
cached global in a Ray worker, or the driver itself for the serial executor). It is made from a
picklable *worker config* (:func:`worker_config`): the study spec as a dict, the embedding cache
directory and the thread count. The segmenter — the expensive part, seconds to build — is built
once per worker and name and shared by every env of that worker; the embedding cache on disk is
shared by all workers (:func:`hiseg_sim.env.encoding.encode_once` makes sure a slice is encoded
once across them). An env is cheap (milliseconds) and holds its case list, so each unit gets
one env around the shared segmenter.

Pre-encoding. Left to the episodes, the encoder runs when a person first looks at a slice, and
two workers whose people reach the same slice together wait on each other's lock. So before the
episodes the driver plans the slices they will look at (:func:`plan_slice_jobs`: each episode's
env is reset with its own seed, which fixes its viewport, while a stand-in segmenter encodes
nothing), drops the duplicates, and the executor hands them out in small batches
(:meth:`WorkerContext.encode_slices`) ahead of the units: every core encodes distinct slices, and
the episodes then find their embeddings in the shared cache. Two scopes:

- ``"start"`` (default): each episode's start slice, which its reset always encodes, so nothing
  planned is wasted; in 3-D the slices a person moves on to are encoded by the episode, on
  whichever worker runs it. With the 3-D annotators of today (about 3 slices an episode, on
  ``bench_3d``) this is the cheaper plan: ``"nodule"`` planned twice the slices they used.
- ``"nodule"``: also the slab's slices that hold the nodule in the viewport, plus
  :data:`PRE_ENCODE_MARGIN` on each side (people scroll past the end to see that it has ended):
  for people who go through the whole nodule; a planned slice nobody looks at is wasted work.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hiseg_sim.codec import jsonable
from hiseg_sim.experiments.cases import CaseSource
from hiseg_sim.experiments.episode import case_record, final_mask_record, trace_rows
from hiseg_sim.experiments.spec import EPISODES, StudySpec, spec_from_dict
from hiseg_sim.experiments.units import WorkUnit

__all__ = [
    "PRE_ENCODE_MARGIN",
    "PRE_ENCODE_SCOPES",
    "EncodeResult",
    "SliceJob",
    "UnitResult",
    "WorkerContext",
    "worker_config",
    "build_segmenter",
    "build_annotator_for",
    "plan_slice_jobs",
    "batch_slice_jobs",
]

#: Slices beyond the nodule's first and last (in the viewport) that the ``"nodule"`` plan includes.
PRE_ENCODE_MARGIN = 1
#: What :func:`plan_slice_jobs` plans (see the module docstring).
PRE_ENCODE_SCOPES = ("start", "nodule")


@dataclass
class UnitResult:
    """Rows of one work unit: ``tables`` maps ``"episodes"``, ``"actions"``, ``"cases"`` to lists of
    dicts; ``info`` holds what is not a result (worker pid, wall seconds, segmenter weights)."""

    unit_id: str
    tables: dict[str, list[dict]]
    info: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SliceJob:
    """One viewport slice to encode ahead of the episodes: the crop ``size`` x ``size`` at
    ``(y0, x0)`` of volume slice ``z`` of ``case_id``, in ``window``, for ``segmenter``."""

    segmenter: str
    case_id: str
    z: int
    y0: int
    x0: int
    size: int
    window: tuple[float, float]


@dataclass
class EncodeResult:
    """What a batch of :class:`SliceJob` cost a worker: ``info`` holds ``slices``,
    ``encoder_calls`` (slices not already cached), ``encoder_s``, ``wall_s`` and ``pid``."""

    info: dict


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


def build_annotator_for(arm, replicate: int = 0, seed: int = 0) -> Any:
    """The annotator of an arm's person ``replicate``: ``build_annotator(name, **overrides)`` (a
    registered name); a ``posterior`` arm's person is one posterior draw (``arm.overrides_for``)."""
    from hiseg_sim.annotators.registry import build_annotator

    overrides = arm.overrides_for(replicate, seed) if hasattr(arm, "overrides_for") else arm.overrides
    return build_annotator(arm.name, **overrides)


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

    def encode_slices(self, jobs: list[SliceJob]) -> EncodeResult:
        """Encode each job's slice into the shared cache unless it is there already."""
        from hiseg_sim.env.encoding import encode_once
        from hiseg_sim.env.viewport import AIR_HU, crop2d

        t0 = time.perf_counter()
        calls, enc_s = 0, 0.0
        for job in jobs:
            seg = self.segmenter(job.segmenter)
            case = self.cases.load([job.case_id])[0]
            hu = crop2d(case.volume_hu[job.z], job.y0, job.x0, job.size, fill=AIR_HU)
            cache, key_fn = getattr(seg, "cache", None), getattr(seg, "embedding_key", None)
            if cache is not None and key_fn is not None and cache.contains(key_fn(hu, job.window)):
                continue
            before = _work(seg)
            encode_once(seg, hu, job.window)
            after = _work(seg)
            if before is not None and after is not None:
                calls += after["encoder_calls"] - before["encoder_calls"]
                enc_s += after["encoder_s"] - before["encoder_s"]
        info = {
            "slices": len(jobs),
            "encoder_calls": calls,
            "encoder_s": enc_s,
            "wall_s": time.perf_counter() - t0,
            "pid": os.getpid(),
        }
        return EncodeResult(info)

    def run_unit(self, unit: WorkUnit) -> UnitResult:
        """Run every episode of ``unit`` in order; return its rows."""
        t0 = time.perf_counter()
        seg = self.segmenter(unit.segmenter)
        work_before = _work(seg)
        cases = self.cases.load(unit.case_ids)
        by_id = {c.case_id: c for c in cases}
        meta = self._catalogue()
        env = self.make_env(cases, seg)
        arms = {a.label: a for a in self.spec.annotators}
        episodes, actions = [], []
        slice_keys: list[str] | None = None
        persistent = None
        if unit.design == "sequence":
            assert unit.arm is not None  # a sequence unit is one person of one arm
            persistent = build_annotator_for(arms[unit.arm], unit.replicate or 0, self.spec.seed)
        try:
            for ep in unit.episodes:
                arm = arms[ep.arm]
                annotator = (
                    persistent if persistent is not None else build_annotator_for(arm, ep.replicate, self.spec.seed)
                )
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
            stats = getattr(env.unwrapped, "encoder_stats", None)
            slice_keys = list(stats()["keys"]) if callable(stats) else None
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
        now = _work(seg)
        if work_before is not None and now is not None:  # the segmenter's work for this unit (timing, not a result)
            info["work"] = {k: now[k] - work_before[k] for k in now}
        if slice_keys is not None:  # the embeddings the episodes used: the study's distinct slices
            info["slice_keys"] = slice_keys
        return UnitResult(unit.unit_id, {"episodes": episodes, "actions": actions, "cases": case_rows}, info)


def _work(seg) -> dict | None:
    """The segmenter's work counters so far (calls and seconds), if it keeps them."""
    snapshot = getattr(getattr(seg, "counters", None), "snapshot", None)
    return snapshot() if callable(snapshot) else None


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


def encode_in_worker(jobs: list[SliceJob]) -> EncodeResult:
    """Encode ``jobs`` with the context :func:`init_worker` built in this process."""
    if "ctx" not in _CTX:
        raise RuntimeError("worker context missing: the pool must be started with initializer=init_worker")
    return _CTX["ctx"].encode_slices(jobs)


# ---- planning the slices to encode ahead of the episodes ----------------------------------------
class _StandIn:
    """The segmenter while :func:`plan_slice_jobs` resets envs: it encodes nothing (no
    ``embedding_key``, so no cache or lock is touched) and is never asked to decode."""

    name = "pre-encode-planner"

    def encode(self, image_hu, window=None):
        return None

    def decode(self, emb, prompt):  # pragma: no cover - the planner takes no step
        raise RuntimeError("the pre-encoding planner does not decode")


def _slab_slices(u, scope: str, margin: int) -> list[int]:
    """Slab indices to encode for the episode just reset on env ``u``."""
    n = int(u.viewport.n_slices)
    want = {int(u.current_slice)}
    if scope == "nodule" and n > 1:
        held = np.flatnonzero(u.scoring_reference().reshape(n, -1).any(axis=1))
        if held.size:
            want.update(range(max(0, int(held[0]) - margin), min(n, int(held[-1]) + margin + 1)))
    return sorted(want)


def plan_slice_jobs(
    spec: StudySpec, units, cases: CaseSource, scope: str = "start", margin: int = PRE_ENCODE_MARGIN
) -> list[SliceJob]:
    """The distinct slices of ``scope`` (one of :data:`PRE_ENCODE_SCOPES`) the episodes of ``units``
    will look at (see the module docstring), in a fixed order: by case, viewport and slice. Empty
    for an env that does not expose its viewport (``viewport``, ``current_slice``,
    ``scoring_reference``, ``window``, ``size``)."""
    import gymnasium as gym

    if scope not in PRE_ENCODE_SCOPES:
        raise ValueError(f"unknown pre-encoding scope {scope!r}; one of {', '.join(PRE_ENCODE_SCOPES)}")
    import hiseg_sim  # noqa: F401  (registers the env ids)

    units = list(units)
    ids = sorted({ep.case_id for u in units for ep in u.episodes})
    if not ids:
        return []
    env = gym.make(spec.env_id, cases=cases.load(ids), segmenter=_StandIn(), cache_dir=None, **spec.env_kwargs)
    try:
        u: Any = env.unwrapped
        jobs: dict[tuple, SliceJob] = {}
        for unit in units:
            for ep in unit.episodes:
                env.reset(seed=int(ep.seed), options={"case_id": ep.case_id})
                if not all(hasattr(u, a) for a in ("viewport", "current_slice", "scoring_reference", "window", "size")):
                    return []
                window = (float(u.window[0]), float(u.window[1]))
                vp = u.viewport
                for z in _slab_slices(u, scope, margin):
                    job = SliceJob(unit.segmenter, ep.case_id, vp.z0 + z, vp.y0, vp.x0, int(u.size), window)
                    jobs.setdefault((job.segmenter, job.case_id, job.y0, job.x0, job.z), job)
    finally:
        env.close()
    return [jobs[k] for k in sorted(jobs)]


def batch_slice_jobs(jobs: list[SliceJob], workers: int, per_batch: int = 4) -> list[list[SliceJob]]:
    """``jobs`` in batches of at most ``per_batch`` (fewer when there are few jobs, so every
    worker gets some), consecutive jobs together (same case and viewport: one case load)."""
    if not jobs:
        return []
    size = max(1, min(int(per_batch), -(-len(jobs) // (2 * max(1, workers)))))
    return [jobs[i : i + size] for i in range(0, len(jobs), size)]


def cached_context(key: str, cfg: dict) -> WorkerContext:
    """The context for ``key`` in this process, built on first use (Ray workers are reused across tasks)."""
    ctx = _CTX.get(key)
    if ctx is None:
        _CTX.clear()
        ctx = _CTX[key] = WorkerContext(cfg)
    return ctx
