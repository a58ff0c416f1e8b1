"""Synthetic cases for the environment tests (no cohort needed) and the test-only stub segmenter.

``synthetic_cases()`` builds, once per process, three small lung-like volumes (48 x 96 x 96,
spacing 1.25 x 0.7 x 0.7 mm): a solid sphere nodule with a vessel tube running past it, at
different places (one touching the volume's edge, so viewports need padding).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from hiseg_sim.data.case import Case
from hiseg_sim.segmenters.base import LOW_RES
from tests.stubs import StubSegmenter

__all__ = ["EnvStubSegmenter", "build_env_stub", "SHAPE", "SPACING", "synthetic_case", "synthetic_cases"]


class EnvStubSegmenter(StubSegmenter):
    """TEST STUB, not a model: a faster :class:`tests.stubs.StubSegmenter` for the env tests.

    Marks pixels brighter than mid-window (-600 HU) inside the box (or, without a box, within 10
    model pixels of the first positive click, or inside the fed-back mask); each positive click
    adds, each negative click removes, a disc of radius 3 model pixels. Deterministic; numpy on
    small windows, so fuzzing thousands of steps stays cheap. It still runs the real
    Segmenter machinery (window, resize, cache, prompt checks, upsampling).
    """

    name = "env-stub"

    def _decode_tensor(self, features, coords, labels, box, mask_in):
        img = features[0, 0].numpy()
        fg = img > 0.5
        region = np.zeros((LOW_RES, LOW_RES), bool)
        pts = [] if coords is None else list(zip(coords[0].tolist(), labels[0].tolist()))
        if box is not None:
            x0, y0, x1, y1 = (int(round(v)) for v in box[0].tolist())
            region[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = True
        else:
            pos = [p for p, lab in pts if lab == 1]
            if pos:
                _disc(region, pos[0], 10, True)
            if mask_in is not None:
                region |= mask_in[0, 0].numpy() > 0
        on = region & fg
        for p, lab in pts:
            _disc(on, p, 3, bool(lab))
        logits = np.where(on, 5.0, -5.0).astype(np.float32)
        iou = 0.5 + 0.45 * float(on.sum()) / max(1.0, float(region.sum()))
        return torch.from_numpy(logits)[None, None], torch.tensor([[iou]])


def _disc(arr: np.ndarray, xy, r: int, value: bool) -> None:
    cx, cy = int(round(xy[0])), int(round(xy[1]))
    h, w = arr.shape
    ys, xs = slice(max(cy - r, 0), min(cy + r + 1, h)), slice(max(cx - r, 0), min(cx + r + 1, w))
    yy, xx = np.ogrid[ys, xs]
    win = arr[ys, xs]
    win[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value


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
