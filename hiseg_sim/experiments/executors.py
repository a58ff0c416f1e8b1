"""Executors: run work units serially, on a local process pool, or on Ray; yield results as they finish.

All three take the same picklable worker config (:func:`~hiseg_sim.experiments.worker.worker_config`)
and give the same rows for the same units (episode seeds belong to the episodes, not to the
executor; see :mod:`hiseg_sim.experiments.units`). Only the driver writes shards, so a killed run
leaves no half-written file behind a worker's back.

=========  ===============================================================================
name       what runs the units
=========  ===============================================================================
serial     the calling process; torch keeps its own thread count (a ``threads`` given for
           the run holds for that run only)
process    (default) ``concurrent.futures.ProcessPoolExecutor`` with a ``forkserver`` (or
           ``spawn``) context, ``workers`` processes (default all cores); each builds its
           context once in the pool initializer, with intra-op threads ``max(1, cores //
           workers)`` (:func:`hiseg_sim.segmenters.threads_for`)
ray        Ray core tasks (optional extra ``ray``), one task per unit (a crossed unit is one
           case: the batch per case); the context, and so the segmenter, is a cached global
           of each Ray worker process, built by its first task. ``ray.init(num_cpus=workers,
           include_dashboard=False)`` locally unless Ray is already initialised.
=========  ===============================================================================

Given ``pre_encode`` (batches of :class:`~hiseg_sim.experiments.worker.SliceJob`, planned by the
runner), an executor first hands those batches to its workers, then the units, on the same
workers (no second start-up); it yields an :class:`~hiseg_sim.experiments.worker.EncodeResult`
per batch and a :class:`~hiseg_sim.experiments.worker.UnitResult` per unit. Units are queued
behind the batches, not after a barrier: a worker done with the batches starts on units while
the last batches finish, and a unit that reaches a slice still being encoded waits on that
slice's lock rather than encoding it again.

No process of the pool outlives its driver. Each worker watches the driver's pid from a thread (a
pidfd on Linux, else polling) and exits the moment the driver ends, ``kill -9`` included; a
worker started by the forkserver also asks Linux for SIGKILL should the forkserver die
(``PR_SET_PDEATHSIG``). The forkserver exits by itself once the driver and the workers are gone
(its "alive" pipe, held by them all, reaches end of file). It is not tied to the driver with
``PR_SET_PDEATHSIG``: that fires when the driver *thread* that started it ends, and the forkserver
is shared by every pool of the driver. Workers ignore SIGINT; on Ctrl-C, an error or a closed
generator the driver cancels what is queued and kills the running workers instead of waiting for
their units (whose rows would be dropped anyway).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager

from hiseg_sim.experiments.spec import EXECUTORS
from hiseg_sim.experiments.units import WorkUnit
from hiseg_sim.experiments.worker import (
    EncodeResult,
    SliceJob,
    UnitResult,
    WorkerContext,
    cached_context,
    encode_in_worker,
    init_worker,
    run_unit_in_worker,
)

#: What an executor yields: one result per pre-encoding batch and one per unit, as each finishes.
Result = UnitResult | EncodeResult
Batches = Sequence[Sequence[SliceJob]]

__all__ = [
    "available_cores",
    "map_ordered",
    "resolve_workers",
    "run_serial",
    "run_process",
    "run_ray",
    "run_units",
    "UnitFailed",
    "Result",
]


class UnitFailed(RuntimeError):
    """A work unit raised; the message names the unit (completed units are kept)."""


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(workers: int | None, n_units: int) -> int:
    """``workers`` (0 or None = all cores), never more than there are units."""
    n = available_cores() if not workers else int(workers)
    return max(1, min(n, max(1, n_units)))


def _threads_for(workers: int) -> int:
    try:
        from hiseg_sim.segmenters.threads import threads_for
    except ImportError:  # pragma: no cover
        return max(1, available_cores() // max(1, workers))
    return threads_for(workers)


def _batch_failed(batch: Sequence[SliceJob], exc: BaseException, where: str = "") -> UnitFailed:
    first = batch[0] if batch else None
    what = f"{first.case_id} slice {first.z}" if first else "an empty batch"
    return UnitFailed(f"pre-encoding ({what}, {len(batch)} slice(s)) failed{where}: {type(exc).__name__}: {exc}")


def run_serial(
    units: Sequence[WorkUnit], cfg: dict, workers: int | None = None, pre_encode: Batches = ()
) -> Generator[Result, None, None]:
    """Run ``units`` one after another in this process. A thread count in ``cfg`` holds for this
    run only: the process's own setting comes back afterwards (else a ``serial:1`` benchmark run
    would leave every later serial run in the process on one thread)."""
    from hiseg_sim.segmenters.threads import restored_threads

    with restored_threads():
        ctx = WorkerContext({**cfg, "threads": cfg.get("threads"), "workers": 1})
        for batch in pre_encode:
            try:
                yield ctx.encode_slices(list(batch))
            except Exception as exc:
                raise _batch_failed(batch, exc) from exc
        for u in units:
            try:
                yield ctx.run_unit(u)
            except Exception as exc:
                raise UnitFailed(
                    f"unit {u.unit_id} ({u.segmenter}, cases {list(u.case_ids)[:3]}) failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc


#: Modules the forkserver imports once, so each pool worker is forked with them already loaded
#: (importing torch, ONNX Runtime and the package costs a worker about 1-2 s otherwise).
PRELOAD = [
    "hiseg_sim.experiments.worker",
    "hiseg_sim.segmenters",
    "hiseg_sim.env",
    "hiseg_sim.annotators.registry",
    "onnxruntime",
]

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> bool:
    """Ask Linux to SIGKILL this process when its parent ends (strictly: the parent's thread that
    started it). False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):  # pragma: no cover - no prctl in this libc
        return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _watch_driver(pid: int) -> None:
    """End this process (``os._exit``) as soon as process ``pid`` ends, from a daemon thread."""
    try:
        fd = os.pidfd_open(pid)  # readable once the process has ended; immune to pid reuse
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # not Linux >= 5.3: poll
        fd = None

    def watch() -> None:
        if fd is not None:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.poll()
        else:
            while _pid_alive(pid):
                time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="hiseg-sim-driver-watch", daemon=True).start()


def _init_pool_worker(driver_pid: int, cfg: dict) -> None:
    """Pool initializer: tie this worker's life to the driver's, leave Ctrl-C to the driver, build the context."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != driver_pid:
        # Started by the (single-threaded) forkserver: die with it. A worker the driver started
        # itself (spawn) relies on the watch alone: the kernel would tie it to the driver's
        # starting thread, which need not live as long as the driver.
        _die_with_parent()
    _watch_driver(driver_pid)
    init_worker(cfg)


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel what is queued and kill the running workers now; then release the pool."""
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        try:
            proc.kill()
        except (OSError, ValueError, AttributeError):  # already ended or closed
            pass
    for proc in procs:
        try:
            proc.join(timeout=10)
        except (OSError, ValueError, AttributeError, AssertionError):
            pass


@contextmanager
def _owned(pool: ProcessPoolExecutor) -> Iterator[ProcessPoolExecutor]:
    """``pool`` for a block: shut down (waiting) when the block completes, its workers killed
    (:func:`_stop_pool`) when the block is left early: an error, Ctrl-C, a generator closed."""
    try:
        yield pool
    except BaseException:
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)


def _mp_context(method: str | None):
    if method is None:
        method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        ctx.set_forkserver_preload(PRELOAD)
    return ctx


def run_process(
    units: Sequence[WorkUnit],
    cfg: dict,
    workers: int | None = None,
    pre_encode: Batches = (),
    start_method: str | None = None,
) -> Generator[Result, None, None]:
    """Run ``units`` on a local process pool; yield each result as it completes.

    Stopped early (an error, Ctrl-C, the generator closed), it kills its workers rather than
    waiting for their units; no worker outlives the driver (see the module docstring)."""
    if not units:
        return
    n = resolve_workers(workers, max(len(units), len(pre_encode)))
    wcfg = {**cfg, "threads": cfg.get("threads") or _threads_for(n), "workers": n}
    with _owned(
        ProcessPoolExecutor(
            max_workers=n,
            mp_context=_mp_context(start_method),
            initializer=_init_pool_worker,
            initargs=(os.getpid(), wcfg),
        )
    ) as pool:
        batches = {pool.submit(encode_in_worker, list(b)): b for b in pre_encode}
        futures = {pool.submit(run_unit_in_worker, u): u for u in units}
        pending: set[Future] = set(futures) | set(batches)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in [f for f in done if f in batches]:
                try:
                    yield f.result()
                except Exception as exc:
                    raise _batch_failed(batches[f], exc, " in a worker") from exc
            for f in sorted((f for f in done if f in futures), key=lambda f: futures[f].unit_id):
                u = futures[f]
                try:
                    res = f.result()
                except Exception as exc:
                    raise UnitFailed(
                        f"unit {u.unit_id} ({u.segmenter}, cases {list(u.case_ids)[:3]}) failed in a "
                        f"worker: {type(exc).__name__}: {exc}"
                    ) from exc
                yield res


def map_ordered(fn, jobs: Sequence, workers: int | None = 1, start_method: str | None = None) -> Iterator:
    """``fn(job)`` for each of ``jobs``, yielded in their order, on up to ``workers`` processes (0 or
    None: all cores; serial for one). ``fn`` must be importable by the workers (a module-level
    function). Stopped early (an error, Ctrl-C, the generator closed), it kills its workers."""
    n = resolve_workers(workers, len(jobs))
    if n == 1:
        for job in jobs:
            yield fn(job)
        return
    with _owned(ProcessPoolExecutor(max_workers=n, mp_context=_mp_context(start_method))) as pool:
        futures = [pool.submit(fn, job) for job in jobs]
        for f in futures:
            yield f.result()


def _ray_task(cfg: dict, key: str, unit: WorkUnit) -> UnitResult:
    import ray

    res = cached_context(key, cfg).run_unit(unit)
    res.info["node"] = ray.get_runtime_context().get_node_id()  # which node of a cluster ran it
    return res


def _ray_encode_task(cfg: dict, key: str, jobs: list[SliceJob]) -> EncodeResult:
    return cached_context(key, cfg).encode_slices(jobs)


def run_ray(
    units: Sequence[WorkUnit], cfg: dict, workers: int | None = None, pre_encode: Batches = ()
) -> Generator[Result, None, None]:
    """Run ``units`` as Ray tasks (one per unit; the segmenter is built once per Ray worker).

    On a Ray cluster the driver is already connected to (``ray.init(address=...)``), the tasks run
    on its nodes; the embedding cache directory must then be one all nodes see."""
    try:
        import ray
    except ImportError as exc:
        raise ImportError("the ray executor needs Ray: pip install 'hiseg-sim[ray]' (or \"ray[default]\")") from exc
    if not units:
        return
    n = resolve_workers(workers, max(len(units), len(pre_encode)))
    started = False
    if not ray.is_initialized():
        # Workers inherit the driver's environment: put what the driver imports from on their path
        # (cheaper than a runtime_env, which goes through Ray's runtime-env agent).
        paths = [os.getcwd()] + [p for p in sys.path if p and os.path.isdir(p)]
        old_pp = os.environ.get("PYTHONPATH")
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths + ([old_pp] if old_pp else [])))
        try:
            ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False, configure_logging=False)
        finally:
            if old_pp is None:
                os.environ.pop("PYTHONPATH", None)
            else:
                os.environ["PYTHONPATH"] = old_pp
        started = True
    else:
        n = resolve_workers(workers or int(ray.cluster_resources().get("CPU", n)), max(len(units), len(pre_encode)))
    wcfg = {**cfg, "threads": cfg.get("threads") or _threads_for(n), "workers": n}
    key = hashlib.sha256(json.dumps(wcfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    # SPREAD: on a cluster, hand tasks to every node rather than packing the driver's node first
    task = ray.remote(num_cpus=1, max_retries=0, scheduling_strategy="SPREAD")(_ray_task)
    encode_task = ray.remote(num_cpus=1, max_retries=0, scheduling_strategy="SPREAD")(_ray_encode_task)
    cfg_ref = ray.put(wcfg)
    batches = {encode_task.remote(cfg_ref, key, list(b)): b for b in pre_encode}
    refs = {task.remote(cfg_ref, key, u): u for u in units}
    pending = list(batches) + list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for r in done:
                if r in batches:
                    try:
                        yield ray.get(r)
                    except Exception as exc:
                        raise _batch_failed(batches[r], exc, " in a Ray task") from exc
                    continue
                u = refs[r]
                try:
                    res = ray.get(r)
                except Exception as exc:
                    raise UnitFailed(
                        f"unit {u.unit_id} ({u.segmenter}, cases {list(u.case_ids)[:3]}) failed in a "
                        f"Ray task: {type(exc).__name__}: {exc}"
                    ) from exc
                yield res
    finally:
        for r in pending:
            ray.cancel(r, force=True)
        if started:
            ray.shutdown()


_RUNNERS = {"serial": run_serial, "process": run_process, "ray": run_ray}


def run_units(
    executor: str, units: Sequence[WorkUnit], cfg: dict, workers: int | None = None, pre_encode: Batches = ()
) -> Generator[Result, None, None]:
    """Dispatch to :func:`run_serial`, :func:`run_process` or :func:`run_ray`."""
    if executor not in _RUNNERS:
        raise ValueError(f"unknown executor {executor!r}; one of {', '.join(EXECUTORS)}")
    return _RUNNERS[executor](units, cfg, workers, pre_encode)
