"""What a long command shows on stderr while it works: bars, phases without a count, status lines.

- :func:`bar` / :func:`progress_iter`: a bar over counted work whose ETA is the average pace since
  the first item finished. Start-up (spawning workers, loading a model) is left out of the pace,
  and no estimate is shown before three items have finished after the first, so the ETA does not
  swing from minutes to seconds as units of uneven length come back.
- :func:`phase`: work with no count (a report being built, a network trained in a worker): after
  two seconds a line ``<what> … 0:12`` that counts up until the work ends, so nothing is silent
  for long.
- :func:`note`: one status line (a resumed run, a reused result) printed without breaking a bar.

Everything is off when ``enabled`` is False or ``$HISEG_NO_PROGRESS`` is set; :func:`note` lines
are status, not decoration, and are always printed.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

__all__ = ["bar", "is_enabled", "note", "phase", "progress_iter"]

#: Items that must finish after the first one before an ETA is shown.
_MIN_PACED = 3
#: The clock of the pace (a name of its own so a test can drive it).
_clock = time.monotonic


def is_enabled(enabled: bool = True) -> bool:
    """Whether bars and phases are shown: ``enabled`` and ``$HISEG_NO_PROGRESS`` unset."""
    return bool(enabled) and not os.environ.get("HISEG_NO_PROGRESS")


def _tqdm_class():
    from tqdm.auto import tqdm

    class SteadyBar(tqdm):
        """tqdm whose rate (and so ETA) is the mean pace since the first item finished."""

        def __init__(self, *args, **kwargs):
            self._first_t: float | None = None
            self._first_n = 0
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if self._first_t is None and n:
                self._first_t, self._first_n = _clock(), self.n + n
            return super().update(n)

        @property
        def format_dict(self):
            d = super().format_dict
            paced = self.n - self._first_n
            if self._first_t is not None and paced >= _MIN_PACED:
                d["rate"] = paced / max(_clock() - self._first_t, 1e-9)
            else:
                d["rate"] = 0.0  # tqdm prints '?' for the ETA until there is a pace to go by
            return d

    return SteadyBar


def bar(total: int | None, desc: str = "", unit: str = "item", enabled: bool = True, initial: int = 0):
    """A progress bar on stderr with a steady ETA (see the module docstring), or ``None`` when off.

    Call ``.update(n)`` as work finishes and ``.close()`` at the end (or use it as a context manager).
    """
    if not is_enabled(enabled):
        return None
    return _tqdm_class()(
        total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, leave=False, file=sys.stderr
    )


def progress_iter(
    items: Iterable[T], desc: str = "", total: int | None = None, enabled: bool = True, unit: str = "case"
) -> Iterator[T]:
    """Iterate ``items`` with a progress bar on stderr."""
    if not is_enabled(enabled):
        yield from items
        return
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    b = bar(total, desc, unit)
    try:
        for item in items:
            yield item
            b.update(1)
    finally:
        b.close()


@contextmanager
def phase(desc: str, enabled: bool = True, after: float = 2.0) -> Iterator[None]:
    """Show ``desc … <elapsed>`` on stderr while the block runs, once it has run ``after`` seconds.

    On a terminal the line counts up each second and is cleared at the end; into a file or pipe it
    is written once. A block shorter than ``after`` prints nothing.
    """
    if not is_enabled(enabled):
        yield
        return
    stop = threading.Event()

    def tick() -> None:
        if stop.wait(after):
            return
        if not sys.stderr.isatty():
            note(f"{desc} …")
            stop.wait()
            return
        from tqdm.auto import tqdm

        t = tqdm(
            total=None,
            desc=desc,
            bar_format="{desc} … {elapsed}",
            leave=False,
            file=sys.stderr,
            initial=0,
            mininterval=0.5,
        )
        try:
            while not stop.wait(1.0):
                t.refresh()
        finally:
            t.close()

    th = threading.Thread(target=tick, name=f"phase: {desc}", daemon=True)
    th.start()
    try:
        yield
    finally:
        stop.set()
        th.join()


def note(message: str) -> None:
    """Print one status line on stderr (between bars, not through them)."""
    try:
        from tqdm.auto import tqdm

        tqdm.write(message, file=sys.stderr)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        print(message, file=sys.stderr, flush=True)
