"""Fuzz the nodule environments: random actions, reset options, arguments and cases; count what breaks.

:func:`run_fuzz` drives ``hiseg_sim/NoduleSeg2D-v0`` and ``hiseg_sim/NoduleSeg3D-v0`` (made with
``gym.make``, so with their registered wrappers) through ``actions_per_env`` random actions each.
Most actions are in the action space (drawn by the space itself, or typed with sub-pixel and
border coordinates, reversed and degenerate boxes), the rest are junk: coordinates off the
viewport, NaN, wrong shapes, strings, typed actions with fields of the wrong type. Every episode
starts from random reset options (replays of an earlier viewport, unknown ids, negative indices,
slabs off the volume ...), and every few hundred actions the environment is rebuilt with random
constructor arguments (a few out of bounds) over a pool of cases that mixes fixed synthetic
nodules with random volumes, masks and voxel sizes (those :class:`~hiseg_sim.data.case.Case`
refuses are counted, not used).

What is counted, per environment:

- ``actions``: ``step`` calls made (junk included);
- ``documented_errors``: exceptions of the documented classes, the expected answer to junk:
  :class:`~hiseg_sim.env.actions.InvalidActionError` (and its ``ActionTypeError``),
  :class:`~hiseg_sim.env.validation.EnvArgumentError` (and its ``EnvArgumentTypeError``),
  :class:`~hiseg_sim.data.case.CaseError`, :class:`~hiseg_sim.env.state.ResetNeeded`;
- ``undocumented_exceptions``: any other exception (a bug; the first few are printed to stderr);
- ``nan``: ``reset``/``step`` results holding a NaN or infinity anywhere (observation, reward,
  info), also a bug.

The model is :class:`FuzzStubSegmenter`, a STUB, not a model: the real
:class:`~hiseg_sim.segmenters.base.Segmenter` machinery (window, resize, embedding cache, prompt
checks, upsampling) around a trivial numpy core, so 10,000 actions take seconds to minutes, not
hours. ``segmenter="litemedsam"`` fuzzes the real model instead (a LiteMedSAM decode takes 35-80 ms
on two cores, figures in :mod:`hiseg_sim.segmenters.sam_family`, plus an encode per new slice).

.. code-block:: console

    $ python -m hiseg_sim.fuzz --actions 10000 --json   # the last line is the JSON result
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

from hiseg_sim.data.case import Case, CaseError
from hiseg_sim.env import actions as A
from hiseg_sim.env.actions import InvalidActionError
from hiseg_sim.env.state import ResetNeeded
from hiseg_sim.env.validation import EnvArgumentError
from hiseg_sim.progress import progress_iter
from hiseg_sim.segmenters.base import LOW_RES, Segmenter
from hiseg_sim.timing import TimeModel

__all__ = ["DOCUMENTED_ERRORS", "FuzzStubSegmenter", "fuzz_cases", "main", "non_finite", "run_fuzz"]

ENV_IDS = {"2d": "hiseg_sim/NoduleSeg2D-v0", "3d": "hiseg_sim/NoduleSeg3D-v0"}
#: Environments are rebuilt with new random arguments after this many actions.
REBUILD_EVERY = 400
#: Undocumented exceptions printed per environment (all are counted).
SHOW_FIRST = 3


#: The exceptions the environments and ``Case`` document for bad input (subclasses included).
DOCUMENTED_ERRORS: tuple[type[BaseException], ...] = (InvalidActionError, EnvArgumentError, CaseError, ResetNeeded)


# ---- the stub segmenter ------------------------------------------------------------------------
class FuzzStubSegmenter(Segmenter):
    """STUB, not a model: thresholds the windowed image inside the prompt, deterministically.

    The "embedding" is the resized image; the "decoder" marks pixels brighter than mid-window
    inside the box (or within 10 model pixels of the first positive click, or inside the fed-back
    mask), then paints a disc of radius 3 for each click (positive adds, negative removes). Its
    IoU prediction is the marked fraction of the region, mapped to [0.5, 0.95].
    """

    name = "fuzz-stub"
    input_size = 256
    weights_sha256 = "f" * 64

    def _encode_tensor(self, unit_image, resized_hw):
        h, w = resized_hw
        return F.pad(unit_image, (0, self.input_size - w, 0, self.input_size - h))[0].numpy()

    def _decode_tensor(self, features, coords, labels, box, mask_in):
        fg = features[0, 0].numpy() > 0.5
        region = np.zeros((LOW_RES, LOW_RES), bool)
        pts = [] if coords is None else list(zip(coords[0].tolist(), labels[0].tolist()))
        if box is not None:
            x0, y0, x1, y1 = (round(v) for v in box[0].tolist())
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
    cx, cy = round(xy[0]), round(xy[1])
    h, w = arr.shape
    ys, xs = slice(max(cy - r, 0), min(cy + r + 1, h)), slice(max(cx - r, 0), min(cx + r + 1, w))
    if ys.start >= ys.stop or xs.start >= xs.stop:
        return
    yy, xx = np.ogrid[ys, xs]
    arr[ys, xs][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = value


# ---- cases -------------------------------------------------------------------------------------
def _sphere_case(
    case_id: str,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    centre: tuple[float, float, float],
    radius_mm: float,
    seed: int,
):
    """Lung background (-850 HU, noise), a solid sphere (+30 HU) and a vessel tube past it."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    dz, dy, dx = ((z - centre[0]) * spacing[0], (y - centre[1]) * spacing[1], (x - centre[2]) * spacing[2])
    gt = dz**2 + dy**2 + dx**2 <= radius_mm**2
    vol = np.full(shape, -850.0, np.float32) + rng.normal(0.0, 25.0, shape).astype(np.float32)
    vy, vx = centre[1] + radius_mm / spacing[1] + 2, centre[2] - 3
    vol[((y - vy) * spacing[1]) ** 2 + ((x - vx) * spacing[2]) ** 2 <= 1.5**2] = 40.0
    vol[gt] = 30.0
    return Case(case_id, vol, spacing, gt, meta={"source": "fuzz-synthetic"})


def fuzz_cases() -> list:
    """Fixed synthetic cases: a nodule mid-volume, one at the volume's edge, a one-slice scan, a thin slab."""
    return [
        _sphere_case("fuzz-mid", (32, 80, 80), (1.25, 0.7, 0.7), (16, 40, 44), 5.0, 0),
        _sphere_case("fuzz-edge", (24, 64, 64), (1.0, 0.8, 0.8), (2, 60, 3), 4.0, 1),
        _sphere_case("fuzz-one-slice", (1, 48, 40), (2.5, 0.6, 0.6), (0, 20, 20), 3.0, 2),
        _sphere_case("fuzz-aniso", (6, 30, 90), (5.0, 0.5, 1.1), (3, 15, 45), 6.0, 3),
    ]


def _random_case_inputs(rng: np.random.Generator, i: int) -> dict:
    """Keyword arguments for ``Case``: random volume, masks and spacing, some of them invalid."""
    Z, Y, X = int(rng.integers(1, 10)), int(rng.integers(1, 60)), int(rng.integers(1, 60))
    shape = (Z, Y, X)
    kind = rng.integers(6)
    if kind == 0:
        vol = rng.normal(-600, 400, shape)
    elif kind == 1:
        vol = rng.integers(-1024, 3072, shape).astype(np.int16)
    elif kind == 2:
        vol = rng.choice([-3.0e38, 3.0e38, -1000.0, 0.0], size=shape)
    elif kind == 3:
        vol = rng.normal(0, 1, shape)
        vol.flat[int(rng.integers(vol.size))] = rng.choice([np.nan, np.inf, -np.inf])
    elif kind == 4:
        vol = rng.normal(0, 1, (Z, Y) if rng.random() < 0.5 else (Z, Y, X, 1))
    else:
        vol = np.full(shape, float(rng.uniform(-2000, 2000)))
    gt = rng.random(shape) < rng.choice([0.0, 0.01, 0.2, 1.0])
    r = rng.random()
    if r < 0.1:
        gt = gt.astype(np.float32) * 2
    elif r < 0.2:
        gt = gt[..., :-1] if X > 1 else gt[None]
    elif r < 0.3:
        gt = gt.astype(np.uint8)
    spacing: Any = tuple(float(v) for v in rng.choice([0.5, 0.7, 1.0, 1.25, 2.5, 5.0], 3))
    r = rng.random()
    if r < 0.15:
        spacing = tuple(rng.choice([0.0, -1.0, np.nan, np.inf, 1e-9, 1e9, 1e-3, 1e3], 3))
    elif r < 0.2:
        spacing = (1.0, 1.0)
    elif r < 0.25:
        spacing = "1,1,1"
    readers: Any = ()
    if rng.random() < 0.2:
        readers = (gt,) if rng.random() < 0.7 else gt
    return {
        "case_id": f"fuzz-random-{i}" if rng.random() < 0.95 else ["", 7][int(rng.integers(2))],
        "volume_hu": vol,
        "spacing_zyx": spacing,
        "gt": gt,
        "reader_masks": readers,
    }


# ---- actions -----------------------------------------------------------------------------------
def _random_action(rng: np.random.Generator, space, n_kinds: int) -> Callable[[], Any]:
    """A thunk making one action: building a typed action may itself raise (bad fields)."""
    S = int(space.nvec[1])
    r = rng.random()

    def coord() -> float:
        c = int(rng.integers(5))
        return float([0.0, S - 1.0, rng.uniform(0, S - 1), rng.uniform(0, 1.5), rng.uniform(S - 2.5, S - 1)][c])

    if r < 0.40:
        a = space.sample()
        return lambda: a
    if r < 0.55:
        x, y, pos = coord(), coord(), bool(rng.random() < 0.6)
        return lambda: A.PointAction(x, y, pos)
    if r < 0.68:
        x0, y0 = coord(), coord()
        if rng.random() < 0.25:  # a drag that did not move
            x1, y1 = min(S - 1.0, x0 + float(rng.uniform(0, 0.99))), coord()
        else:
            x1, y1 = coord(), coord()
        return lambda: A.BoxAction(x0, y0, x1, y1)
    if r < 0.80:
        k = int(rng.integers(3, n_kinds))
        return lambda: A.from_array([k, 0, 0, 0, 0])
    # junk: none of these is in the space; each must fail with a documented error
    junk = int(rng.integers(12))
    big = float(rng.choice([S, S + 0.5, -0.5, -1.0, 1e300, 2.0**64]))
    if junk == 0:
        return lambda: np.array([int(rng.integers(n_kinds, n_kinds + 5)), 0, 0, 0, 0])
    if junk == 1:
        return lambda: np.array([0, big, 1, 0, 0])
    if junk == 2:
        return lambda: np.array([2, 0, 0, np.nan, 3.0])
    if junk == 3:
        return lambda: np.zeros(int(rng.choice([0, 3, 4, 6])), np.int64)
    if junk == 4:
        return lambda: A.PointAction(big, 1.0)
    if junk == 5:
        return lambda: A.PointAction("3", "4")
    if junk == 6:
        return lambda: A.PointAction(1, 2, positive="no")
    if junk == 7:
        return lambda: A.BoxAction(0, 0, float("inf"), 3)
    if junk == 8:
        return lambda: A.Propagate(int(rng.choice([0, 2, -3])))
    if junk == 9:
        return lambda: "box please"
    if junk == 10:
        return lambda: A.action_from_dict({"kind": "point", "x": 1})
    return lambda: np.array([0, 1, 2, 3, 4], np.uint64) * np.uint64(2**62)


# ---- reset options and constructor arguments --------------------------------------------------
def _random_options(rng: np.random.Generator, env, last_info: dict | None) -> Any:
    """Reset options: mostly valid (a random draw, a case by id or index, a replayed viewport), some not."""
    u = env.unwrapped
    cases = u.cases
    r = rng.random()
    if r < 0.25:
        return None
    if r < 0.40:
        return {"case_id": cases[int(rng.integers(len(cases)))].case_id}
    if r < 0.55:
        return {
            "case_index": int(rng.integers(len(cases))),
            "time_model": TimeModel().scaled(mental_scale=float(rng.uniform(0.5, 2.0))),
        }
    if r < 0.70 and last_info is not None:  # replay the last episode's start
        opts = {"case_id": last_info["case_id"], "viewport": dict(last_info["viewport"])}
        if u.three_d:
            opts["start_slice"] = last_info["viewport"]["z0"] + int(last_info.get("slice", 0))
        return opts
    bad = int(rng.integers(12))
    vp = (
        dict(last_info["viewport"])
        if last_info is not None
        else {"z0": 0, "n_slices": 1, "y0": 0, "x0": 0, "size": u.size}
    )
    cid = last_info["case_id"] if last_info is not None else cases[0].case_id
    return [
        {"case_index": -1},
        {"case_index": len(cases)},
        {"case_index": 1.5},
        {"case_id": "no-such-case"},
        {"case_id": 3},
        {"case_id": cid, "viewport": {**vp, "z0": -5}},
        {"case_id": cid, "viewport": {**vp, "size": vp["size"] + 1}},
        {"case_id": cid, "viewport": {**vp, "y0": 10**6}},
        {"case_id": cid, "viewport": {k: v for k, v in vp.items() if k != "x0"}},
        {"case_id": cid, "start_slice": -1},
        {"case_idx": 0},
        "case 0",
    ][bad]


def _random_env_kwargs(rng: np.random.Generator, three_d: bool) -> dict:
    """Constructor arguments: valid ones across their bounds, and about one set in five with a bad one."""
    size = int(rng.choice([16, 17, 40, 64, 96, 128]))
    kw: dict[str, Any] = {
        "viewport_px": size,
        "detection_sd_mm": float(rng.choice([0.05, 1.0, 3.0, 20.0, 100.0])),
        "pan_step_px": int(rng.choice([1, 3, 8, size])),
        "window": (float(rng.uniform(-1500, 500)), float(rng.choice([1.0, 400.0, 1500.0, 4000.0]))),
        "time_penalty": float(rng.choice([0.0, 0.001, 0.1, 1000.0])),
        "mask_feedback": bool(rng.random() < 0.7),
        "render_mode": "rgb_array",
        "render_scale": int(rng.choice([1, 2])),
    }
    if three_d:
        kw["max_slices"] = int(rng.choice([1, 2, 5, 64, 512]))
        kw["propagate_margin_px"] = int(rng.choice([0, 2, size]))
    if rng.random() < 0.2:
        name, value = [
            ("viewport_px", 10**5),
            ("viewport_px", 8),
            ("viewport_px", 96.0),
            ("window", (float("nan"), 1500.0)),
            ("window", (-600.0, 0.0)),
            ("window", "lung"),
            ("detection_sd_mm", 0.0),
            ("detection_sd_mm", math.inf),
            ("pan_step_px", 0),
            ("time_penalty", -1.0),
            ("mask_feedback", "no"),
            ("render_scale", 0),
            ("time_model", {"M": 2}),
            ("render_mode", "ansi"),
        ][int(rng.integers(14))]
        kw[name] = value
    return kw


# ---- checks ------------------------------------------------------------------------------------
def non_finite(value: Any) -> bool:
    """Whether a NaN or an infinity hides anywhere in ``value`` (numbers, arrays, dicts, lists)."""
    if isinstance(value, dict):
        return any(non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(non_finite(v) for v in value)
    if isinstance(value, np.ndarray):
        return value.dtype.kind in "fc" and not bool(np.isfinite(value).all())
    if isinstance(value, (float, np.floating, complex, np.complexfloating)):
        return not bool(np.isfinite(value))
    return False


class _Tally:
    def __init__(self, label: str):
        self.label = label
        self.actions = self.undocumented = self.nan = self.documented = 0
        self._shown = 0

    def call(
        self, what: str | Callable[[], str], fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> tuple[bool, Any]:
        """Run ``fn(*args, **kwargs)``; count its exception by class. ``(True, result)`` on success.

        ``what`` names the call in the report of an undocumented exception (a callable is only
        called then).
        """
        try:
            return True, fn(*args, **kwargs)
        except DOCUMENTED_ERRORS:
            self.documented += 1
        except Exception:  # noqa: BLE001 - counting these is the point
            self.undocumented += 1
            if self._shown < SHOW_FIRST:
                self._shown += 1
                name = what() if callable(what) else what
                print(
                    f"hiseg_sim.fuzz [{self.label}] undocumented exception in {name}:\n{traceback.format_exc()}",
                    file=sys.stderr,
                )
        return False, None

    def check(self, *outputs: Any) -> None:
        if non_finite(list(outputs)):
            self.nan += 1

    def as_dict(self) -> dict:
        return {
            "actions": self.actions,
            "undocumented_exceptions": self.undocumented,
            "nan": self.nan,
            "documented_errors": self.documented,
        }


# ---- the run -----------------------------------------------------------------------------------
def _views(env) -> tuple:
    """What people and analyses read besides ``step``: a frame and the masks."""
    u = env.unwrapped
    return env.render(), u.current_mask(), u.slab_masks(), u.volume_mask(), u.scoring_reference()


def _case_pool(rng: np.random.Generator, tally: _Tally, n_random: int = 24) -> list:
    pool = fuzz_cases()
    for i in range(n_random):
        ok, case = tally.call("Case(...)", lambda kw: Case(**kw), _random_case_inputs(rng, i))
        if ok:
            pool.append(case)
    return pool


def _fuzz_env(key: str, n: int, rng: np.random.Generator, segmenter, progress: bool) -> dict:
    env_id = ENV_IDS[key]
    three_d = key == "3d"
    tally = _Tally(key)
    pool = _case_pool(rng, tally)
    env = None
    last_info: dict | None = None
    need_reset = True

    def build():
        while True:  # a bad argument set is counted, then another is drawn
            kw = _random_env_kwargs(rng, three_d)
            ok, made = tally.call(
                f"gym.make({env_id!r}, **{kw!r})", gym.make, env_id, cases=pool, segmenter=segmenter, **kw
            )
            if ok:
                made.action_space.seed(int(rng.integers(2**31)))  # space.sample() draws from the space's own generator
                return made

    for i in progress_iter(range(n), desc=f"fuzz {key}", total=n, enabled=progress, unit="action"):
        if env is None or i % REBUILD_EVERY == 0:
            if env is not None:
                env.close()
            env, last_info, need_reset = build(), None, True
        if need_reset:
            opts = _random_options(rng, env, last_info)
            seed = int(rng.integers(2**31))
            ok, out = tally.call(f"reset(seed={seed}, options={opts!r})", env.reset, seed=seed, options=opts)
            if not ok:  # refused options: the documented answer; start a plain episode instead
                ok, out = tally.call(f"reset(seed={seed})", env.reset, seed=seed)
            if ok:
                tally.check(*out)
                last_info, need_reset = out[1], False
        make = _random_action(rng, env.action_space, int(env.action_space.nvec[0]))
        tally.actions += 1
        ok, action = tally.call("making an action", make)  # a typed action with a bad field is refused here
        if ok:
            ok, out = tally.call(lambda a=action: f"step({a!r})", env.step, action)
        if ok:
            tally.check(*out)
            need_reset = bool(out[2] or out[3])
        if not need_reset and rng.random() < 0.01:
            ok, views = tally.call("render() and the mask views", _views, env)
            if ok:
                tally.check(*views)
    if env is not None:
        env.close()
    return tally.as_dict()


def run_fuzz(
    actions_per_env: int = 10_000, seed: int = 0, progress: bool = True, *, segmenter: str | None = None
) -> dict:
    """Fuzz both environments with ``actions_per_env`` random actions each; see the module docstring.

    Args:
        actions_per_env: ``step`` calls per environment.
        seed: seeds every random draw (the same seed gives the same counts).
        progress: show a progress bar on stderr.
        segmenter: ``None`` for :class:`FuzzStubSegmenter`, or a registry name (e.g.
            ``"litemedsam"``) to fuzz the real model.

    Returns:
        ``{"envs": {"2d": {"actions", "undocumented_exceptions", "nan", "documented_errors"},
        "3d": {...}}, "seconds": wall-clock seconds}``.
    """
    if isinstance(actions_per_env, bool) or not isinstance(actions_per_env, int) or actions_per_env < 0:
        raise ValueError(f"actions_per_env must be an int >= 0; got {actions_per_env!r}")
    t0 = time.perf_counter()
    if segmenter is None:
        seg = FuzzStubSegmenter()
    else:
        from hiseg_sim import segmenters

        seg = segmenters.build(segmenter)
    envs = {}
    for j, key in enumerate(ENV_IDS):
        rng = np.random.default_rng([seed, j])
        envs[key] = _fuzz_env(key, actions_per_env, rng, seg, progress)
    return {"envs": envs, "seconds": round(time.perf_counter() - t0, 3)}


def main(argv: list[str] | None = None) -> int:
    """``python -m hiseg_sim.fuzz``; exit status 1 if an undocumented exception or a NaN was seen."""
    ap = argparse.ArgumentParser(prog="python -m hiseg_sim.fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--actions", type=int, default=10_000, help="actions per environment (default 10000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--segmenter", default=None, help="a registry name to fuzz a real model (default: the stub)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON on the last line")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.actions < 0:
        ap.error("--actions must be >= 0")
    res = run_fuzz(args.actions, args.seed, progress=not args.no_progress, segmenter=args.segmenter)
    for key, r in res["envs"].items():
        print(
            f"{ENV_IDS[key]}: {r['actions']} actions, {r['documented_errors']} documented errors, "
            f"{r['undocumented_exceptions']} undocumented exceptions, {r['nan']} with NaN/inf"
        )
    print(f"{res['seconds']:.1f} s")
    if args.json:
        print(json.dumps(res))
    bad = any(r["undocumented_exceptions"] or r["nan"] for r in res["envs"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
