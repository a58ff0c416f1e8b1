"""Embedding cache: an in-memory LRU in front of an optional on-disk store keyed by content hash.

The encoder is the expensive part of a SAM-family model (about a second per slice on two CPU
cores); every (model, weights, window, slice) is encoded once per sweep. The disk store lets
process-pool and vector-env workers share embeddings: each entry is written to a temporary file
and renamed into place (atomic on POSIX), so a reader never sees half a file.

Each ``.npz`` entry carries the SHA-256 of its feature bytes; an entry that fails to load or whose
checksum does not match is reported with a warning, removed and recomputed by the caller.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from hiseg_sim.segmenters.types import Embedding

__all__ = ["EmbeddingCache", "CorruptCacheWarning", "default_cache_dir"]


class CorruptCacheWarning(UserWarning):
    """A cache entry on disk could not be read or failed its checksum; it was removed."""


def default_cache_dir() -> Path:
    """``$HISEG_CACHE_DIR`` if set, else ``~/.cache/hiseg-sim/embeddings``."""
    env = os.environ.get("HISEG_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "hiseg-sim" / "embeddings"


def _digest(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


class EmbeddingCache:
    """LRU of :class:`~hiseg_sim.segmenters.types.Embedding` objects, optionally backed by disk.

    Args:
        max_items: embeddings kept in memory (each about 4 MB for the SAM family).
        disk_dir: directory of the on-disk store, or ``None`` for memory only.
    """

    def __init__(self, max_items: int = 64, disk_dir: str | os.PathLike | None = None) -> None:
        if max_items < 1:
            raise ValueError(f"max_items must be >= 1; got {max_items}")
        self.max_items = int(max_items)
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self._mem: OrderedDict[str, Embedding] = OrderedDict()
        self.disk_hits = 0
        self.disk_writes = 0
        self.corrupt_entries = 0

    def __len__(self) -> int:
        return len(self._mem)

    def __repr__(self) -> str:
        return f"EmbeddingCache(max_items={self.max_items}, disk_dir={str(self.disk_dir) if self.disk_dir else None!r})"

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
        return emb

    def contains(self, key: str) -> bool:
        """Whether ``key`` is in memory or on disk (the disk entry is not read or checked)."""
        if key in self._mem:
            return True
        return self.disk_dir is not None and self.path_for(key).exists()

    def put(self, emb: Embedding) -> None:
        self._remember(emb)
        if self.disk_dir is not None and not self.path_for(emb.key).exists():
            self._store(emb)

    def clear_memory(self) -> None:
        self._mem.clear()

    # ---- internals -------------------------------------------------------------------------
    def _remember(self, emb: Embedding) -> None:
        self._mem[emb.key] = emb
        self._mem.move_to_end(emb.key)
        while len(self._mem) > self.max_items:
            self._mem.popitem(last=False)

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
