"""What a learned policy sees and does: a compact view of the env's observation and a coarse action grid.

The environments keep their own spaces (:mod:`hiseg_sim.env.observation`,
:mod:`hiseg_sim.env.actions`); :class:`PolicyView` puts a thin layer between them and a learner:

Observation (``Dict``):

- ``"screen"``: ``Box(0, 255, (5, S, S), uint8)``: the viewport image, the current mask and the
  three prompt channels (positive clicks, negative clicks, box outline), stacked channel-first;
  when the env adds ``"intent"`` (:class:`~hiseg_sim.policies.intent.PerceivedIntent`), that
  channel comes sixth.
- ``"state"``: ``Box(0, 1, (n,), float32)``: the model's predicted IoU, the step as a share of
  the episode's step budget, the simulated seconds / :data:`SECONDS_SCALE`, whether a mask is
  shown, the mask's area as a share of the viewport; in 3-D also the slice in view as a share of
  the slab, whether it holds a mask, and the share of slab slices that hold one.

Action: ``MultiDiscrete([n_kinds, G, G, G, G])``, the env's ``[kind, x, y, x2, y2]`` with each
coordinate on a ``G x G`` grid of cells over the viewport (``G = grid``; 48 on a 96-px viewport
is a 2-px cell). :func:`grid_to_px` sends a cell to the pixel nearest its centre and
:func:`px_to_grid` back; both are pure. Nothing here reads the ground truth.

>>> grid_to_px(0, 48, 96), grid_to_px(47, 48, 96), px_to_grid(95, 48, 96)
(1, 95, 47)
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hiseg_sim.env import actions as A

__all__ = [
    "SECONDS_SCALE",
    "PolicyView",
    "action_to_env",
    "action_from_env",
    "augment",
    "corner_scores_back",
    "grid_to_px",
    "observe",
    "px_to_grid",
    "state_size",
]

#: simulated seconds that map to 1.0 in the ``state`` vector (clipped above)
SECONDS_SCALE = 60.0
SCREEN_CHANNELS = ("image", "mask", "positive", "negative", "box")


def grid_to_px(g: int, grid: int, size: int) -> int:
    """The viewport pixel nearest the centre of grid cell ``g`` (``grid`` cells over ``size`` px)."""
    return int(min(size - 1, max(0, math.floor((g + 0.5) * size / grid))))


def px_to_grid(x: float, grid: int, size: int) -> int:
    """The grid cell holding viewport pixel ``x``."""
    return int(min(grid - 1, max(0, math.floor((float(x) + 0.5) * grid / size))))


def state_size(three_d: bool) -> int:
    return 8 if three_d else 5


def observe(obs: dict, max_steps: int, three_d: bool = False) -> dict:
    """The policy's observation of an env observation (see the module docstring); pure."""
    mask = obs["mask"]
    parts = [obs["image"], mask, obs["prompts"]] + ([obs["intent"]] if "intent" in obs else [])
    screen = np.concatenate(parts, axis=0).astype(np.uint8, copy=False)
    area = float(np.count_nonzero(mask)) / mask[0].size
    st = [
        float(obs["iou_pred"][0]),
        min(1.0, float(obs["step"][0]) / max(1, max_steps)),
        min(1.0, float(obs["seconds"][0]) / SECONDS_SCALE),
        float(area > 0),
        area,
    ]
    if three_d:
        in_slab = np.asarray(obs["slice_in_slab"])
        has = np.asarray(obs["slice_has_mask"])
        n = max(1, int(in_slab.sum()))
        z = int(obs["slice"])
        st += [z / max(1, n - 1), float(has[z]), float(has.sum()) / n]
    return {"screen": screen, "state": np.clip(np.asarray(st, np.float32), 0.0, 1.0)}


def action_to_env(a, grid: int, size: int) -> np.ndarray:
    """A policy action ``[kind, gx, gy, gx2, gy2]`` → the env's ``[kind, x, y, x2, y2]`` (int64)."""
    a = np.asarray(a, dtype=np.int64).reshape(-1)
    out = np.zeros(5, np.int64)
    out[0] = a[0]
    if a[0] in (A.Kind.POSITIVE, A.Kind.NEGATIVE, A.Kind.BOX):
        out[1:] = [grid_to_px(int(v), grid, size) for v in a[1:5]]
        if a[0] != A.Kind.BOX:
            out[3:] = 0
    return out


def action_from_env(action, grid: int, size: int) -> np.ndarray:
    """A typed env action (or ``[kind, x, y, x2, y2]``) → the policy's grid action (int64).

    A box is normalised first (``x0 <= x1``, ``y0 <= y1``); unused entries are 0.
    """
    if isinstance(action, A.BoxAction):
        action = action.normalised()
    arr = A.to_array(action) if not isinstance(action, np.ndarray) else np.asarray(action, np.int64)
    out = np.zeros(5, np.int64)
    out[0] = arr[0]
    if arr[0] in (A.Kind.POSITIVE, A.Kind.NEGATIVE):
        out[1:3] = [px_to_grid(v, grid, size) for v in arr[1:3]]
    elif arr[0] == A.Kind.BOX:
        out[1:5] = [px_to_grid(v, grid, size) for v in arr[1:5]]
    return out


def augment(screen: np.ndarray, action: np.ndarray, k: int, flip: bool, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 symmetries of the square applied to a ``(C, S, S)`` screen and its grid action.

    ``k`` quarter turns (``np.rot90`` on the image axes, counter-clockwise as displayed) after an
    optional left-right flip. Boxes are re-sorted so ``x0 <= x1`` and ``y0 <= y1``. Pure.
    """
    s = screen[:, :, ::-1] if flip else screen
    s = np.rot90(s, k, axes=(1, 2))
    a = np.asarray(action, np.int64).copy()
    kind = int(a[0])
    if kind not in (A.Kind.POSITIVE, A.Kind.NEGATIVE, A.Kind.BOX):
        return np.ascontiguousarray(s), a
    pts = [(a[1], a[2])] + ([(a[3], a[4])] if kind == A.Kind.BOX else [])
    new = [_map_point(x, y, k, flip, grid - 1) for x, y in pts]
    if kind == A.Kind.BOX:
        (x0, y0), (x1, y1) = new
        a[1:5] = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
    else:
        a[1:3] = new[0]
    return np.ascontiguousarray(s), a


def _map_point(x: int, y: int, k: int, flip: bool, m: int) -> tuple[int, int]:
    """A grid point under :func:`augment`'s symmetry (``m = grid - 1``)."""
    if flip:
        x = m - x
    for _ in range(k % 4):  # rot90 (counter-clockwise): (x, y) -> (y, m - x)
        x, y = y, m - x
    return x, y


def corner_scores_back(scores_t: list[np.ndarray], k: int, flip: bool) -> list[np.ndarray]:
    """Box-corner scores ``[x0, y0, x1, y1]`` (each over the grid) seen on a screen transformed by
    :func:`augment`'s ``(k, flip)``, expressed in the original screen's frame: entry ``i`` of the
    original ``x0`` is the score the transformed screen gave to wherever cell ``i`` of the box's
    left edge went (another edge, maybe the other axis, maybe counted from the other side). For
    test-time augmentation: average these over the 8 symmetries. Pure."""
    g = len(scores_t[0])
    m = g - 1
    xt, yt = _map_point(1, 2, k, flip, m)
    if xt in (1, m - 1):  # x stays on the x axis (maybe reversed), y on y
        axes = {"x": ("x", xt == m - 1), "y": ("y", yt == m - 2)}
    else:  # a quarter turn: x went to y and y to x
        axes = {"x": ("y", yt == m - 1), "y": ("x", xt == m - 2)}
    lo = {"x": scores_t[0], "y": scores_t[1]}
    hi = {"x": scores_t[2], "y": scores_t[3]}
    out = {}
    for ax in ("x", "y"):
        ax_t, rev = axes[ax]
        out[ax] = (hi[ax_t][::-1], lo[ax_t][::-1]) if rev else (lo[ax_t], hi[ax_t])
    return [np.asarray(out["x"][0]), np.asarray(out["y"][0]), np.asarray(out["x"][1]), np.asarray(out["y"][1])]


class PolicyView(gym.Wrapper):
    """The env seen through :func:`observe` and driven on a ``grid`` of cells (module docstring).

    Args:
        env: a NoduleSeg env (``gym.make`` output; the ``TimeLimit`` inside gives the step budget).
        grid: cells per viewport side for each coordinate (default 48).
    """

    def __init__(self, env: gym.Env, grid: int = 48):
        super().__init__(env)
        u = env.unwrapped
        self.size = int(u.size)
        self.grid = int(grid)
        if not 2 <= self.grid <= self.size:
            raise ValueError(f"grid must be in [2, viewport_px = {self.size}]; got {grid}")
        self.three_d = bool(u.three_d)
        spec = getattr(env, "spec", None)
        self.max_steps = int(spec.max_episode_steps) if spec is not None and spec.max_episode_steps else 20
        n_kinds = int(u.action_space.nvec[0])
        self.action_space = spaces.MultiDiscrete(np.array([n_kinds] + [self.grid] * 4, np.int64))
        self.observation_space = spaces.Dict(
            {
                "screen": spaces.Box(
                    0,
                    255,
                    (len(SCREEN_CHANNELS) + int("intent" in env.observation_space.spaces), self.size, self.size),
                    np.uint8,
                ),
                "state": spaces.Box(0.0, 1.0, (state_size(self.three_d),), np.float32),
            }
        )

    def observation(self, obs: dict) -> dict:
        return observe(obs, self.max_steps, self.three_d)

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self.observation(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action_to_env(action, self.grid, self.size))
        return self.observation(obs), reward, terminated, truncated, info
