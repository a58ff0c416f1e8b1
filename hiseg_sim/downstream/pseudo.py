"""Pseudo-labels from prompt rounds: the mean of the rounds' masks, their spread, pixel weights.

SemiSAM+ (arXiv 2502.20749) prompts the frozen generalist several times from the specialist's
output and uses the variance across those rounds as the uncertainty that down-weights the loss on
the pseudo-label. With ``R`` binary masks the per-pixel variance is ``p (1 - p)`` (``p`` the share
of rounds that have the pixel), largest (0.25) where the rounds split evenly; the weight is
``max(floor, 1 - 4 p (1 - p))``: 1 where every round agrees, ``floor`` at an even split.

>>> r = np.array([[[1, 1, 0]], [[1, 0, 0]]], bool)
>>> p, var = round_spread(r)
>>> p.tolist(), var.tolist()
([[1.0, 0.5, 0.0]], [[0.0, 0.25, 0.0]])
>>> confidence_weights(var, floor=0.5).tolist()
[[1.0, 0.5, 1.0]]
"""

from __future__ import annotations

import numpy as np

__all__ = ["round_spread", "confidence_weights", "pack_rounds", "unpack_rounds"]


def round_spread(rounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(p, var)`` of ``R`` masks ``(R, H, W)``: the share of rounds with each pixel and ``p (1 - p)``."""
    m = np.asarray(rounds, bool)
    if m.ndim != 3 or m.shape[0] == 0:
        raise ValueError(f"rounds must be a non-empty (R, H, W) stack of masks; got shape {m.shape}")
    p = m.mean(0)
    return p.astype(np.float32), (p * (1.0 - p)).astype(np.float32)


def confidence_weights(var: np.ndarray, floor: float = 0.2) -> np.ndarray:
    """Pixel weights ``max(floor, 1 - 4·var)`` in ``[floor, 1]`` (``var`` in ``[0, 0.25]``)."""
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1]; got {floor}")
    return np.maximum(float(floor), 1.0 - 4.0 * np.asarray(var, np.float32)).astype(np.float32)


def pack_rounds(rounds: np.ndarray) -> bytes:
    """``(R, H, W)`` bool → bytes (``np.packbits``, C order); the shape travels separately."""
    return np.packbits(np.asarray(rounds, bool).ravel()).tobytes()


def unpack_rounds(bits: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of :func:`pack_rounds`."""
    n = int(np.prod(shape))
    return np.unpackbits(np.frombuffer(bits, np.uint8), count=n).astype(bool).reshape(shape)
