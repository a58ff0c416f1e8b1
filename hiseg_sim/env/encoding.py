"""Encode each slice once across processes: a file lock around the shared on-disk embedding cache.

Vector-env workers (and process-pool experiment workers) share one on-disk
:class:`~hiseg_sim.segmenters.EmbeddingCache`. The cache's atomic rename keeps readers safe, but
two workers that reach the same uncached slice at the same moment would both run the encoder.
:func:`encode_once` takes an exclusive ``flock`` on ``<cache_dir>/.locks/<key>.lock`` before
encoding: the second worker waits, then finds the first one's entry on disk and loads it. Lock
files are left in place (they are empty; removing them while others wait on them would race).

Without a disk cache, or on a platform without ``fcntl``, it is a plain ``segmenter.encode``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["encode_once"]


def encode_once(segmenter, image_hu: np.ndarray, window: tuple[float, float]):
    """``segmenter.encode(image_hu, window)``, serialised across processes per embedding key.

    Args:
        segmenter: a :class:`~hiseg_sim.segmenters.Segmenter` (any object with ``encode`` works;
            the lock needs its ``cache.disk_dir`` and ``embedding_key``).
        image_hu: ``float32`` ``(H, W)`` slice in HU.
        window: ``(level, width)`` HU.

    Returns:
        ``(embedding, key)``; ``key`` is the embedding's content hash (or ``None`` if unknown).
    """
    cache = getattr(segmenter, "cache", None)
    disk_dir = getattr(cache, "disk_dir", None)
    key_fn = getattr(segmenter, "embedding_key", None)
    if key_fn is None:
        return segmenter.encode(image_hu, window), None
    key = key_fn(image_hu, window)
    if cache is None or disk_dir is None or fcntl is None:
        emb = segmenter.encode(image_hu, window)
        return emb, getattr(emb, "key", key)
    hit = cache.get(key)
    if hit is not None:
        # Let the segmenter count the hit, as encode() would.
        return segmenter.encode(image_hu, window), key
    lock_dir = Path(disk_dir) / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            emb = segmenter.encode(image_hu, window)  # re-reads the disk cache: encodes only on a miss
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
    return emb, key
