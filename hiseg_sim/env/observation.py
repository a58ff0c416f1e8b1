"""Observation spaces and the arrays in them: what a person at the screen could see, nothing else.

Every image is ``uint8``, channel-first ``(C, H, W)``, so SB3's CNN policies take it as an image.
No entry is computed from the ground truth.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from hiseg_sim.segmenters.base import window_to_unit

__all__ = ["PROMPT_CHANNELS", "draw_prompts", "observation_space", "to_uint8_window"]

#: Channels of the ``prompts`` map: positive clicks, negative clicks, box outline.
PROMPT_CHANNELS = ("positive", "negative", "box")

#: Bounds of the ``step`` and ``seconds`` entries (finite, as Gymnasium's checker prefers; an
#: episode reaching them is cut by the environment's ``TimeLimit`` long before).
MAX_STEPS = 1e6
MAX_SECONDS = 1e7

#: Half-side of the square drawn for a click in the prompt map (a 3 x 3 square).
_DOT = 1


def to_uint8_window(image_hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU ``(H, W)`` → ``uint8`` ``(H, W)`` through the display window ``(level, width)``."""
    return np.rint(window_to_unit(image_hu, window) * 255.0).astype(np.uint8)


def observation_space(size: int, max_slices: int | None = None) -> spaces.Dict:
    """The ``Dict`` observation space; ``max_slices`` adds the 3-D entries."""
    img = lambda c: spaces.Box(0, 255, (c, size, size), np.uint8)  # noqa: E731
    d: dict[str, spaces.Space] = {
        "image": img(1),
        "mask": img(1),
        "prompts": img(len(PROMPT_CHANNELS)),
        "iou_pred": spaces.Box(0.0, 1.0, (1,), np.float32),
        "step": spaces.Box(0.0, MAX_STEPS, (1,), np.float32),
        "seconds": spaces.Box(0.0, MAX_SECONDS, (1,), np.float32),
    }
    if max_slices is not None:
        d["slice"] = spaces.Discrete(max_slices)
        d["slice_has_mask"] = spaces.MultiBinary(max_slices)
        d["slice_in_slab"] = spaces.MultiBinary(max_slices)
    return spaces.Dict(d)


def draw_prompts(
    size: int, points: tuple[tuple[float, float, int], ...], box: tuple[float, float, float, float] | None
) -> np.ndarray:
    """``uint8`` ``(3, size, size)`` map of the prompts on a slice (255 where drawn).

    Args:
        size: viewport side.
        points: ``(x, y, label)`` clicks, label 1 positive (channel 0) or 0 negative (channel 1),
            each drawn as a 3 x 3 square clipped to the viewport.
        box: ``(x0, y0, x1, y1)`` drawn as a one-pixel outline in channel 2, or ``None``.
    """
    out = np.zeros((len(PROMPT_CHANNELS), size, size), dtype=np.uint8)
    for x, y, lab in points:
        xi, yi = int(round(x)), int(round(y))
        ch = 0 if lab == 1 else 1
        out[ch, max(yi - _DOT, 0) : yi + _DOT + 1, max(xi - _DOT, 0) : xi + _DOT + 1] = 255
    if box is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in box)
        x0, x1 = max(0, min(x0, size - 1)), max(0, min(x1, size - 1))
        y0, y1 = max(0, min(y0, size - 1)), max(0, min(y1, size - 1))
        out[2, y0, x0 : x1 + 1] = 255
        out[2, y1, x0 : x1 + 1] = 255
        out[2, y0 : y1 + 1, x0] = 255
        out[2, y0 : y1 + 1, x1] = 255
    return out
