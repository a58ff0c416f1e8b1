"""On-disk cache of built phantom cases, shared by every process of a machine.

Building a phantom around a LIDC nodule takes 0.1–0.6 s; a sweep's workers each need the same
cases, and every run needs them again. The cache keeps each built :class:`~hiseg_sim.data.case.Case`
in ``<cache root>/cases/<key>.pkl`` where ``key`` hashes the nodule id, the phantom seed and the
*source code of the generator* (every ``hiseg_sim/data/phantom*.py``, ``lidc*.py`` and ``case.py``),
so changing the generator invalidates old entries by itself.

Entries are written to a temporary file and renamed into place (atomic on POSIX), and carry the
SHA-256 of their payload: a file that is truncated, corrupt or fails the checksum is reported with
a :class:`~hiseg_sim.segmenters.cache.CorruptCacheWarning`, removed, and the case is rebuilt.

The root is ``$HISEG_CASE_CACHE`` if set (``0`` or ``off`` turns the cache off), else
``~/.cache/hiseg-sim/cases``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from hiseg_sim.data.case import Case

__all__ = ["case_cache_dir", "generator_version", "cached_case"]

_MAGIC = b"HISEGCASE1"


class CorruptCaseCacheWarning(UserWarning):
    """A cached case could not be read or failed its checksum; it was removed and rebuilt."""


def case_cache_dir() -> Path | None:
    """Where built cases are cached, or ``None`` if ``$HISEG_CASE_CACHE`` turns the cache off."""
    env = os.environ.get("HISEG_CASE_CACHE", "").strip()
    if env.lower() in ("0", "off", "no", "false"):
        return None
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "hiseg-sim" / "cases"


@lru_cache(maxsize=1)
def generator_version() -> str:
    """A hash of the generator's source files: an edit to any of them invalidates cached cases."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for p in sorted([*here.glob("phantom*.py"), *here.glob("lidc*.py"), here / "case.py"]):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _key(nodule_id: str, seed: int) -> str:
    return hashlib.sha256(f"{nodule_id}|{int(seed)}|{generator_version()}".encode()).hexdigest()[:32]


def _read(path: Path) -> Case | None:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        if not raw.startswith(_MAGIC):
            raise ValueError("not a hiseg-sim case file")
        digest, payload = raw[len(_MAGIC):len(_MAGIC) + 32], raw[len(_MAGIC) + 32:]
        if hashlib.sha256(payload).digest() != digest:
            raise ValueError("checksum mismatch")
        case = pickle.loads(payload)
        if not isinstance(case, Case):
            raise ValueError(f"holds a {type(case).__name__}, not a Case")
        return case
    except Exception as exc:  # noqa: BLE001 - any unreadable entry is rebuilt
        warnings.warn(f"case cache entry {path} is unreadable ({exc}); removed, the case is rebuilt",
                      CorruptCaseCacheWarning, stacklevel=3)
        path.unlink(missing_ok=True)
        return None


def _write(path: Path, case: Case) -> None:
    payload = pickle.dumps(case, protocol=pickle.HIGHEST_PROTOCOL)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".pkl")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + hashlib.sha256(payload).digest() + payload)
        os.replace(tmp, path)
    except OSError as exc:  # a read-only or full disk: the case is still returned, just not kept
        Path(tmp).unlink(missing_ok=True)
        warnings.warn(f"could not write the case cache entry {path}: {exc}", stacklevel=3)


def cached_case(nodule_id: str, seed: int, build: Callable[[], Case], cache_dir: str | os.PathLike | None | bool = True) -> Case:
    """The case ``build()`` makes for ``(nodule_id, seed)``, from the cache when it is there.

    Args:
        cache_dir: a directory, ``True`` for :func:`case_cache_dir`, ``False``/``None`` for no cache.
    """
    root = case_cache_dir() if cache_dir is True else (Path(cache_dir) if cache_dir else None)
    if root is None:
        return build()
    path = root / f"{_key(nodule_id, seed)}.pkl"
    case = _read(path)
    if case is None:
        case = build()
        _write(path, case)
    return case
