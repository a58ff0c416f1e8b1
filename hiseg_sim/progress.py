"""Progress bars for long work (tqdm on stderr; off when ``enabled`` is False or ``HISEG_NO_PROGRESS`` is set)."""

from __future__ import annotations

import os
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress_iter(items: Iterable[T], desc: str = "", total: int | None = None, enabled: bool = True,
                  unit: str = "case") -> Iterator[T]:
    """Iterate ``items`` with a progress bar on stderr."""
    if not enabled or os.environ.get("HISEG_NO_PROGRESS"):
        yield from items
        return
    from tqdm.auto import tqdm

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with tqdm(items, desc=desc, total=total, unit=unit, dynamic_ncols=True, leave=False) as bar:
        yield from bar
