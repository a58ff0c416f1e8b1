"""Encode the slices a person is about to prompt, before they prompt them.

The 3-D env encodes a slice when it is first prompted (about 0.6 s for LiteMedSAM on two cores),
so a click on a slice just scrolled to would wait for the encoder. The prefetcher encodes the
slice in view and its neighbours in a background thread, with its own segmenter instance writing
to the shared on-disk embedding cache; the env's segmenter then reads the embedding from disk (a
few ms). The env's own objects are never touched from the thread, and :func:`encode_once`'s file
lock keeps the two from encoding one slice twice. The thread runs at a low CPU priority (nice 10):
on two busy cores a decode the person waits for is not slowed much by an encode nobody waits for
yet. New work replaces the work still queued: it was for where the person was before.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from hiseg_sim.env.encoding import encode_once

__all__ = ["Prefetcher"]


class Prefetcher:
    """A daemon thread encoding queued work with a segmenter built on first use.

    Work is a ``float32`` ``(H, W)`` HU slice to encode, or a callable ``task(segmenter)`` (e.g. a
    scratch env reset on the next nodule, which encodes its start slice).

    Args:
        build: makes the thread's segmenter (it must write to the same disk cache as the env's).
        window: ``(level, width)`` HU, the env's window.
        max_queue: older requests are dropped beyond this.
    """

    def __init__(self, build: Callable[[], Any], window: tuple[float, float], max_queue: int = 8) -> None:
        self._build = build
        self._window = window
        self._queue: queue.Queue = queue.Queue()
        self._max = max_queue
        self._seen: set[str] = set()
        self._seg: Any = None
        self._pending = 0
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="hiseg-annotate-prefetch", daemon=True)
        self._thread.start()

    def _put(self, item: Any, replace: bool = False) -> None:
        with self._cond:
            while self._queue.qsize() > (0 if replace else self._max):
                try:
                    self._queue.get_nowait()
                    self._pending -= 1
                except queue.Empty:
                    break
            self._pending += 1
            self._queue.put(item)

    def request(self, slices: list[np.ndarray], replace: bool = True) -> None:
        """Queue ``float32`` ``(H, W)`` HU slices, most wanted first (already-encoded ones are skipped);
        ``replace`` drops the work still queued (it was for where the person was before)."""
        for i, sl in enumerate(slices):
            self._put(np.ascontiguousarray(sl, np.float32), replace=replace and i == 0)

    def request_task(self, task: Callable[[Any], None], replace: bool = True) -> None:
        """Queue ``task(segmenter)``, run in the thread with the thread's segmenter."""
        self._put(task, replace=replace)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until all queued work is done (tests and benchmarks); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout)

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        try:  # Linux: this thread only, at a low priority, so a decode the person waits for goes first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        except (AttributeError, OSError):  # pragma: no cover - other platforms
            pass
        while True:
            item = self._queue.get()
            if item is None:
                break
            try:
                if self._seg is None:
                    self._seg = self._build()
                if callable(item):
                    item(self._seg)
                else:
                    key = self._seg.embedding_key(item, self._window)
                    if key not in self._seen:
                        encode_once(self._seg, item, self._window)
                        self._seen.add(key)
            except Exception as exc:  # noqa: BLE001 - a failed prefetch only costs the person a wait
                warnings.warn(
                    f"prefetching an embedding failed ({type(exc).__name__}: {exc}); "
                    "slices will be encoded when prompted",
                    RuntimeWarning,
                    stacklevel=1,
                )
            finally:
                with self._cond:
                    self._pending -= 1
                    self._cond.notify_all()
