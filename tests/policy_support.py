"""Toy demonstrations and a one-thread fixture shared by the policy tests."""

from __future__ import annotations

import numpy as np
import pytest


def square_demos(n: int = 64, size: int = 32, grid: int = 16, seed: int = 0, side: int = 8, accept_state: float = 0.06):
    """A bright ``side``-px square somewhere in the screen, boxed; the same square once masked, accepted."""
    from hiseg_sim.policies.demos import Demos
    from hiseg_sim.policies.spaces import px_to_grid

    rng = np.random.default_rng(seed)
    screens, states, acts = [], [], []
    for i in range(n):
        s = np.zeros((5, size, size), np.uint8)
        x0, y0 = rng.integers(2, size - side - 4, size=2)
        s[0, y0 : y0 + side, x0 : x0 + side] = 255
        if i % 2:
            s[1] = s[0]
            acts.append([4, 0, 0, 0, 0])
        else:
            acts.append([2] + [px_to_grid(v, grid, size) for v in (x0, y0, x0 + side - 1, y0 + side - 1)])
        screens.append(s)
        states.append([0.0, 0.0, 0.0, float(i % 2), accept_state * (i % 2)])
    return Demos(
        np.stack(screens),
        np.asarray(states, np.float32),
        np.asarray(acts, np.int64),
        np.zeros(n, np.float32),
        np.arange(n) // 2,
    )


@pytest.fixture
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
