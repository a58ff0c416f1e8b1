"""How many threads one process gives PyTorch and ONNX Runtime, so that pool workers share the cores.

The rule: **intra-op threads per process = max(1, cores // workers)**; inter-op threads = 1.
``cores`` is the number of CPUs this process may run on (``os.sched_getaffinity``), ``workers``
the number of processes that decode at the same time (process-pool or vector-env workers).
A decode is a chain of small matrix products, so one process gains little from inter-op
parallelism, and two processes each running ``cores`` threads on the same cores spend their time
in each other's spin-waits.

Use it like this:

- in each worker, before the first segmenter is built (a pool ``initializer`` is the place):
  ``hiseg_sim.segmenters.set_threads(workers=n_workers)``;
- or export ``HISEG_THREADS=<n>`` before starting the processes: :func:`hiseg_sim.segmenters.build`
  applies it (it wins over ``workers``).

Without either, torch keeps its own default and ONNX Runtime sessions use the same number
(``torch.get_num_threads()``), so the two runtimes are compared on equal terms. ONNX Runtime
sessions follow a later :func:`set_threads` (and a fork into a pool worker): they are remade with
the new count on their next call.

On a machine that other jobs keep busy, fewer threads win: with a load average near 7 on 2
shared AMD EPYC cores, one LiteMedSAM decode took 70 ms in ONNX Runtime with 1 thread and 105 ms with
2, and 123 ms vs 820 ms in PyTorch (whose thread pool waits on descheduled threads). Set
``HISEG_THREADS=1`` there.

>>> threads_for(workers=4, cores=2)
1
>>> threads_for(workers=1, cores=8)
8
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["available_cores", "get_threads", "set_threads", "threads_for", "apply_env"]

_state: dict[str, int | None] = {"threads": None}


def available_cores() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def threads_for(workers: int = 1, cores: int | None = None) -> int:
    """The rule: ``max(1, cores // workers)``."""
    cores = available_cores() if cores is None else int(cores)
    return max(1, cores // max(1, int(workers)))


def _env_threads() -> int | None:
    raw = os.environ.get("HISEG_THREADS", "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError as exc:
        raise ValueError(f"HISEG_THREADS must be a positive integer; got {raw!r}") from exc
    if n < 1:
        raise ValueError(f"HISEG_THREADS must be a positive integer; got {raw!r}")
    return n


def set_threads(n: int | None = None, *, workers: int | None = None) -> int:
    """Set this process's intra-op threads for torch and for ONNX Runtime sessions made from now on.

    Args:
        n: threads; default ``$HISEG_THREADS``, else :func:`threads_for` ``(workers)``.
        workers: processes sharing the cores (default 1).

    Returns:
        the number of threads set. Inter-op threads are set to 1 where torch still allows it
        (only before its first parallel region).
    """
    if n is None:
        n = _env_threads() or threads_for(workers or 1)
    n = int(n)
    if n < 1:
        raise ValueError(f"threads must be >= 1; got {n}")
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work already ran: torch forbids a change
        pass
    _state["threads"] = n
    return n


@contextlib.contextmanager
def restored_threads():
    """Put this process's thread setting (torch's intra-op threads and :func:`get_threads`'s
    choice for new ONNX Runtime sessions) back as it was on leaving the block, whatever
    :func:`set_threads` did inside it."""
    before = (torch.get_num_threads(), _state["threads"])
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        _state["threads"] = before[1]


def get_threads() -> int:
    """Intra-op threads for a new ONNX Runtime session (what :func:`set_threads` set, else torch's)."""
    return int(_state["threads"] or torch.get_num_threads())


def apply_env() -> None:
    """Apply ``$HISEG_THREADS`` once, if set and :func:`set_threads` has not been called."""
    n = _env_threads()
    if n is not None and _state["threads"] is None:
        set_threads(n)
