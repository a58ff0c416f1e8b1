"""Synthetic cases for the environment tests (no cohort needed) and the test-only stub segmenter.

``synthetic_cases()`` builds, once per process, three small lung-like volumes (48 x 96 x 96,
spacing 1.25 x 0.7 x 0.7 mm): a solid sphere nodule with a vessel tube running past it, at
different places (one touching the volume's edge, so viewports need padding).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from hiseg_sim.data.case import Case
from hiseg_sim.fuzz import FuzzStubSegmenter

__all__ = ["EnvStubSegmenter", "build_env_stub", "SHAPE", "SPACING", "synthetic_case", "synthetic_cases"]


class EnvStubSegmenter(FuzzStubSegmenter):
    """TEST STUB, not a model: :class:`hiseg_sim.fuzz.FuzzStubSegmenter` under the env tests' name.

    Marks pixels brighter than mid-window (-600 HU) inside the box (or, without a box, within 10
    model pixels of the first positive click, or inside the fed-back mask); each positive click
    adds, each negative click removes, a disc of radius 3 model pixels. Deterministic; numpy on
    small windows, so fuzzing thousands of steps stays cheap. It still runs the real
    Segmenter machinery (window, resize, cache, prompt checks, upsampling).
    """

    name = "env-stub"
    weights_sha256 = "0" * 64


SHAPE = (48, 96, 96)
SPACING = (1.25, 0.7, 0.7)


def synthetic_case(case_id: str, centre_zyx: tuple[float, float, float], radius_mm: float, seed: int) -> Case:
    """Lung background (-850 HU, noise SD 25), a solid sphere (+30 HU) and a vessel tube (+40 HU)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in SHAPE), indexing="ij")
    zc, yc, xc = centre_zyx
    dz, dy, dx = (z - zc) * SPACING[0], (y - yc) * SPACING[1], (x - xc) * SPACING[2]
    gt = dz**2 + dy**2 + dx**2 <= radius_mm**2
    vol = np.full(SHAPE, -850.0, np.float32) + rng.normal(0.0, 25.0, SHAPE).astype(np.float32)
    # a vessel along z, passing the nodule at about one radius
    vy, vx = yc + radius_mm / SPACING[1] + 2, xc - 3
    vessel = ((y - vy) * SPACING[1]) ** 2 + ((x - vx - 0.15 * (z - zc)) * SPACING[2]) ** 2 <= 1.5**2
    vol[vessel] = 40.0
    vol[gt] = 30.0 + rng.normal(0.0, 10.0, int(gt.sum())).astype(np.float32)
    # chest wall at the bottom rows
    vol[:, 88:, :] = 40.0
    return Case(case_id, vol, SPACING, gt, meta={"source": "synthetic-test"})


@lru_cache(maxsize=1)
def synthetic_cases() -> tuple[Case, ...]:
    return (
        synthetic_case("synth-0", (24, 44, 50), 6.0, 0),
        synthetic_case("synth-1", (20, 30, 70), 4.0, 1),
        synthetic_case("synth-edge", (26, 60, 6), 5.0, 2),
    )


def build_env_stub(checkpoint=None, cache=None) -> EnvStubSegmenter:
    """The segmenter entry ``stub_env`` of the test-stubs plugin (``tests/plugins``): TEST STUB."""
    return EnvStubSegmenter(cache=cache)
