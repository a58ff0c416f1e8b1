"""Embedding cache: an in-memory LRU in front of an optional on-disk store keyed by content hash.

The encoder is the expensive part of a SAM-family model (about a second per slice on two CPU
cores); every (model, weights, window, slice) is encoded once per sweep. The disk store lets
process-pool and vector-env workers share embeddings: each entry is written to a temporary file
and renamed into place (atomic on POSIX), so a reader never sees half a file.

Each ``.npz`` entry carries the SHA-256 of its feature bytes; an entry that fails to load or whose
checksum does not match is reported with a warning, removed and recomputed by the caller.

The disk store is bounded. A phantom, window or model change gives every slice a new key, and the
old entries are never read again (about 4 MB each; re-running the studies on changed phantoms adds
gigabytes each time). Every hit refreshes the entry's modification time, and after about a
twentieth of the cap has been written the store is scanned and the least recently used entries are
deleted until it holds at most 90 % of the cap. The cap is ``max_disk_bytes``, else
``$HISEG_CACHE_MAX_GB`` (``0`` for no cap), else 20 GB. A write that fails (a full disk, a read-only
directory) warns once and the run goes on with the embedding in memory only.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hiseg_sim.segmenters.types import Embedding, SegmenterError

__all__ = [
    "EmbeddingCache",
    "CorruptCacheWarning",
    "CacheConfigError",
    "CacheWriteWarning",
    "DiskUsage",
    "default_cache_dir",
    "default_max_disk_bytes",
    "disk_usage",
    "prune",
]

#: Cap of the on-disk store when neither ``max_disk_bytes`` nor ``$HISEG_CACHE_MAX_GB`` sets one.
DEFAULT_MAX_DISK_GB = 20.0
#: Unfinished writes (``.tmp-*``) older than this many seconds are left by a killed process.
_STALE_TMP_S = 3600.0


class CorruptCacheWarning(UserWarning):
    """A cache entry on disk could not be read or failed its checksum; it was removed."""


class CacheConfigError(SegmenterError, ValueError):
    """``$HISEG_CACHE_MAX_GB`` is not a size (the command line reports it in one line)."""


class CacheWriteWarning(UserWarning):
    """An embedding could not be written to the disk store; this cache keeps to memory from then on."""


def default_cache_dir() -> Path:
    """``$HISEG_CACHE_DIR`` if set, else ``~/.cache/hiseg-sim/embeddings``."""
    env = os.environ.get("HISEG_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "hiseg-sim" / "embeddings"


def default_max_disk_bytes() -> int | None:
    """``$HISEG_CACHE_MAX_GB`` in bytes (``0`` means no cap), else 20 GB."""
    raw = os.environ.get("HISEG_CACHE_MAX_GB")
    if raw is None or raw.strip() == "":
        return int(DEFAULT_MAX_DISK_GB * 1e9)
    try:
        gb = float(raw)
    except ValueError:
        raise CacheConfigError(f"HISEG_CACHE_MAX_GB={raw!r} is not a number of gigabytes (0 for no cap)") from None
    if not np.isfinite(gb) or gb < 0:
        raise CacheConfigError(f"HISEG_CACHE_MAX_GB={raw!r} must be a size in gigabytes >= 0 (0 for no cap)")
    return None if gb == 0 else int(gb * 1e9)


@dataclass(frozen=True)
class DiskUsage:
    """What an on-disk store holds: its entries' count and bytes, and the oldest and newest use."""

    entries: int
    bytes: int
    oldest: float | None  # modification time (last write or hit), seconds since the epoch
    newest: float | None


def _is_shard(name: str) -> bool:
    return len(name) == 2 and all(c in "0123456789abcdef" for c in name)


def _entries(disk_dir: Path) -> list[tuple[float, int, Path]]:
    """(mtime, size, path) of every finished entry; entries deleted meanwhile are skipped."""
    out: list[tuple[float, int, Path]] = []
    if not disk_dir.is_dir():
        return out
    for sub in os.scandir(disk_dir):
        # Entries live in two-hex-digit folders (``path_for``); other folders, such as cached
        # specialist weights, are not the store's to count or delete.
        if not (_is_shard(sub.name) and sub.is_dir(follow_symlinks=False)):
            continue
        for f in os.scandir(sub.path):
            if not f.name.endswith(".npz") or f.name.startswith(".tmp-"):
                continue
            try:
                st = f.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            out.append((st.st_mtime, st.st_size, Path(f.path)))
    return out


def disk_usage(disk_dir: str | os.PathLike) -> DiskUsage:
    """Count and size of the entries in an on-disk embedding store."""
    ents = _entries(Path(disk_dir))
    if not ents:
        return DiskUsage(0, 0, None, None)
    times = [e[0] for e in ents]
    return DiskUsage(len(ents), sum(e[1] for e in ents), min(times), max(times))


def prune(
    disk_dir: str | os.PathLike,
    *,
    max_bytes: int | None = None,
    older_than_s: float | None = None,
    over: int | None = None,
    dry_run: bool = False,
) -> DiskUsage:
    """Delete entries of an on-disk store, least recently used first; returns what was (or would be) deleted.

    Args:
        max_bytes: keep at most this many bytes (the most recently used entries).
        older_than_s: delete every entry not used for this many seconds.
        over: delete nothing unless the store holds more than this many bytes (with ``max_bytes``
            below it, a store is not pruned again after every few writes).
        dry_run: only report.

    Unfinished writes left by a killed process (older than an hour) are removed too. Entries another
    process deletes meanwhile are skipped; a process that then misses one recomputes it.
    """
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0; got {max_bytes}")
    if older_than_s is not None and older_than_s < 0:
        raise ValueError(f"older_than_s must be >= 0; got {older_than_s}")
    ents = sorted(_entries(Path(disk_dir)))  # oldest use first
    now = time.time()
    total = sum(e[1] for e in ents)
    if over is not None and total <= over:
        ents = []
    doomed: list[tuple[float, int, Path]] = []
    for ent in ents:
        too_old = older_than_s is not None and now - ent[0] > older_than_s
        too_big = max_bytes is not None and total > max_bytes
        if not (too_old or too_big):
            continue
        doomed.append(ent)
        total -= ent[1]
    if not dry_run:
        for _, _, path in doomed:
            path.unlink(missing_ok=True)
        root = Path(disk_dir)
        if root.is_dir():
            for tmp in (t for t in root.glob("*/.tmp-*") if _is_shard(t.parent.name)):
                try:
                    if now - tmp.stat().st_mtime > _STALE_TMP_S:
                        tmp.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
    if not doomed:
        return DiskUsage(0, 0, None, None)
    return DiskUsage(len(doomed), sum(e[1] for e in doomed), doomed[0][0], doomed[-1][0])


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


class EmbeddingCache:
    """LRU of :class:`~hiseg_sim.segmenters.types.Embedding` objects, optionally backed by disk.

    Args:
        max_items: embeddings kept in memory (each about 4 MB for the SAM family).
        disk_dir: directory of the on-disk store, or ``None`` for memory only.
        max_disk_bytes: cap of the on-disk store (least recently used entries go first); ``None``
            takes :func:`default_max_disk_bytes`, ``0`` means no cap.
    """

    def __init__(
        self, max_items: int = 64, disk_dir: str | os.PathLike | None = None, max_disk_bytes: int | None = None
    ) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1; got {max_items}")
        if max_disk_bytes is not None and max_disk_bytes < 0:
            raise ValueError(f"max_disk_bytes must be >= 0 (0 for no cap); got {max_disk_bytes}")
        self.max_items = int(max_items)
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        if max_disk_bytes is None:
            max_disk_bytes = (default_max_disk_bytes() or 0) if self.disk_dir is not None else 0
        self.max_disk_bytes: int | None = int(max_disk_bytes) or None
        self._mem: OrderedDict[str, Embedding] = OrderedDict()
        self.disk_hits = 0
        self.disk_writes = 0
        self.corrupt_entries = 0
        self.pruned_entries = 0
        self.disk_write_failed = False
        # Bytes written since the store was last measured; starts full so the first write measures it.
        self._since_scan = self._scan_every

    def __len__(self) -> int:
        return len(self._mem)

    def __repr__(self) -> str:
        return (
            f"EmbeddingCache(max_items={self.max_items}, disk_dir={str(self.disk_dir) if self.disk_dir else None!r}, "
            f"max_disk_bytes={self.max_disk_bytes})"
        )

    @property
    def _scan_every(self) -> int:
        return max(self.max_disk_bytes // 20, 1) if self.max_disk_bytes else 0

    def path_for(self, key: str) -> Path:
        if self.disk_dir is None:
            raise ValueError("this cache has no disk_dir")
        return self.disk_dir / key[:2] / f"{key}.npz"

    # ---- lookup ----------------------------------------------------------------------------
    def get(self, key: str) -> Embedding | None:
        emb = self._mem.get(key)
        if emb is not None:
            self._mem.move_to_end(key)
            return emb
        if self.disk_dir is None:
            return None
        emb = self._load(key)
        if emb is not None:
            self.disk_hits += 1
            self._remember(emb)
            self._touch(key)
        return emb

    def contains(self, key: str) -> bool:
        """Whether ``key`` is in memory or on disk (the disk entry is not read or checked)."""
        if key in self._mem:
            return True
        return self.disk_dir is not None and self.path_for(key).exists()

    def put(self, emb: Embedding) -> None:
        self._remember(emb)
        if self.disk_dir is not None and not self.disk_write_failed and not self.path_for(emb.key).exists():
            self._store(emb)

    def clear_memory(self) -> None:
        self._mem.clear()

    # ---- internals -------------------------------------------------------------------------
    def _remember(self, emb: Embedding) -> None:
        self._mem[emb.key] = emb
        self._mem.move_to_end(emb.key)
        while len(self._mem) > self.max_items:
            self._mem.popitem(last=False)

    def _touch(self, key: str) -> None:
        """Mark a disk entry as just used, so the cap deletes it last."""
        try:
            os.utime(self.path_for(key))
        except OSError:  # deleted meanwhile, or a read-only store: the order is only a preference
            pass

    def _load(self, key: str) -> Embedding | None:
        path = self.path_for(key)
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                feats = np.array(z["features"], dtype=np.float32)
                meta = json.loads(str(z["meta"]))
            if meta.get("key") != key or meta.get("sha256") != _digest(feats):
                raise ValueError("checksum or key mismatch")
            return Embedding(
                key=key, features=feats, image_hw=tuple(meta["image_hw"]), resized_hw=tuple(meta["resized_hw"])
            )
        except FileNotFoundError:  # pruned by another process between the check and the read: a miss
            return None
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is treated the same way
            self.corrupt_entries += 1
            warnings.warn(
                f"corrupt embedding cache entry {path} ({type(exc).__name__}: {exc}); removed, it will be recomputed",
                CorruptCacheWarning,
                stacklevel=3,
            )
            try:
                path.unlink()
            except OSError:
                pass
            return None

    def _store(self, emb: Embedding) -> None:
        try:
            nbytes = self._write(emb)
        except OSError as exc:
            self.disk_write_failed = True
            hint = (
                "free space, lower HISEG_CACHE_MAX_GB or run `hiseg-sim cache prune`"
                if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                else "check the directory's permissions or pass another --cache-dir"
            )
            warnings.warn(
                f"embedding cache {self.disk_dir} could not be written ({exc.strerror or exc}); this process goes on "
                f"without writing to it, so its slices are encoded again elsewhere: {hint}",
                CacheWriteWarning,
                stacklevel=3,
            )
            return
        self._since_scan += nbytes
        if self.max_disk_bytes and self._since_scan >= self._scan_every:
            self._since_scan = 0
            assert self.disk_dir is not None
            gone = prune(self.disk_dir, max_bytes=int(0.9 * self.max_disk_bytes), over=self.max_disk_bytes)
            self.pruned_entries += gone.entries

    def _write(self, emb: Embedding) -> int:
        path = self.path_for(emb.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = json.dumps(
            {
                "key": emb.key,
                "sha256": _digest(emb.features),
                "image_hw": list(emb.image_hw),
                "resized_hw": list(emb.resized_hw),
            }
        )
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, features=emb.features, meta=np.array(meta))
            os.replace(tmp, path)
            self.disk_writes += 1
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        try:
            return path.stat().st_size
        except FileNotFoundError:  # pruned at once by another process
            return 0
