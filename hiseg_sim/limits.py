"""What this machine can do: counted FLOPs of a call and the measured float32 matmul rate.

``limit_ms = flops / rate`` is the time a computation would take if every FLOP ran at the speed
of one large square matrix product on this machine, with the threads this process uses: a floor
that dense-linear-algebra code does not beat by much. Measure the rate in the same run as the
thing it is compared with, since it moves with load and thread settings.

>>> a = matmul_sample(64)
>>> a > 0
True
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

__all__ = ["count_flops", "limit_ms", "matmul_gflops", "matmul_sample"]


def count_flops(fn: Callable[..., object], *args, **kwargs) -> int:
    """FLOPs of ``fn(*args, **kwargs)`` as :class:`torch.utils.flop_counter.FlopCounterMode` counts them.

    (Matrix products, convolutions and attention; a multiply-add counts as two. Element-wise
    operations are not counted.)
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def matmul_sample(size: int = 2048, _cache: dict = {}) -> float:  # noqa: B006 - operands reused on purpose
    """One timed ``size``² float32 matrix product; returns GFLOP/s."""
    if size not in _cache:
        g = torch.Generator().manual_seed(0)
        _cache.clear()
        _cache[size] = (torch.randn(size, size, generator=g), torch.randn(size, size, generator=g))
    a, b = _cache[size]
    t0 = time.perf_counter()
    torch.mm(a, b)
    dt = time.perf_counter() - t0
    return 2.0 * size**3 / dt / 1e9


def matmul_gflops(size: int = 2048, repeats: int = 7, warmup: int = 1) -> float:
    """Median GFLOP/s of ``repeats`` ``size``² float32 matrix products (torch, current threads)."""
    for _ in range(warmup):
        matmul_sample(size)
    return float(np.median([matmul_sample(size) for _ in range(repeats)]))


def limit_ms(flops: float, gflops: float) -> float:
    """``flops`` at ``gflops`` GFLOP/s, in milliseconds."""
    return float(flops) / (float(gflops) * 1e9) * 1e3
