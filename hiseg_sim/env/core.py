"""The shared machinery of NoduleSeg2D-v0 and NoduleSeg3D-v0 (a 2-D episode is a slab of one slice).

The public classes and their documentation are in :mod:`hiseg_sim.env.nodule2d` and
:mod:`hiseg_sim.env.nodule3d`. Here: the thin stateful shell around the pure parts (viewport
placement, prompt drawing, scoring from counts, the time model).

State per slice of the slab: a stack of :class:`SliceState` (the prompts on that slice and the
mask they produced). A prompt pushes a state, undo pops one; the score is kept as per-slice
overlap counts, so a step touches one ``(H, W)`` slice, never the volume.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from hiseg_sim.env import actions as A
from hiseg_sim.env import validation as V
from hiseg_sim.env.encoding import encode_once
from hiseg_sim.env.observation import draw_prompts, observation_space, to_uint8_window
from hiseg_sim.env.render import render_frame
from hiseg_sim.env.scoring import dice_from_counts, iou_from_counts, overlap_counts, per_slice_dice
from hiseg_sim.env.state import INVALID_CODES, ResetNeeded, SliceState, mask_box
from hiseg_sim.env.viewport import AIR_HU, Viewport, crop2d, place_viewport, slab_range
from hiseg_sim.timing import TimeModel, action_seconds

__all__ = ["NoduleSegBase", "SliceState", "ResetNeeded", "INVALID_CODES"]


class NoduleSegBase(gym.Env):
    """Base of the nodule environments; see :class:`~hiseg_sim.env.nodule2d.NoduleSeg2DEnv`."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 4}
    three_d: bool = False
    env_id: str = ""

    def __init__(
        self,
        cases: Sequence | Callable[[], Sequence] | None = None,
        segmenter: Any = "litemedsam",
        cache_dir: str | None = None,
        viewport_px: int = 96,
        detection_sd_mm: float = 3.0,
        pan_step_px: int = 8,
        window: tuple[float, float] | None = None,
        time_penalty: float = 0.0,
        time_model: TimeModel | None = None,
        mask_feedback: bool = True,
        render_mode: str | None = None,
        render_gt: bool = False,
        render_scale: int = 4,
        max_slices: int = 1,
        propagate_margin_px: int = 2,
    ):
        from hiseg_sim.segmenters.base import LUNG_WINDOW

        # Every argument is checked here, against the bounds documented in hiseg_sim.env.validation
        # and the class docstrings, so none fails later inside numpy or the model.
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise V.EnvArgumentError(
                f"render_mode must be one of {self.metadata['render_modes']} or None; got {render_mode!r}"
            )
        V.check_cases_source(cases)
        V.check_segmenter(segmenter)
        V.check_path_or_none("cache_dir", cache_dir)
        size = V.check_int("viewport_px", viewport_px, *V.VIEWPORT_PX)
        detection_sd_mm = V.check_real(
            "detection_sd_mm", detection_sd_mm, 0.0, V.DETECTION_SD_MM_MAX, lo_open=True, unit=" mm"
        )
        pan_step_px = V.check_int("pan_step_px", pan_step_px, 1, size)
        window = V.check_window(window if window is not None else LUNG_WINDOW)
        time_penalty = V.check_real(
            "time_penalty (lambda, reward per simulated second)", time_penalty, 0.0, V.TIME_PENALTY_MAX
        )
        if time_model is not None and not isinstance(time_model, TimeModel):
            raise V.EnvArgumentTypeError(
                f"time_model must be None or a hiseg_sim.timing.TimeModel; got {type(time_model).__name__}"
            )
        mask_feedback = V.check_bool("mask_feedback", mask_feedback)
        render_gt = V.check_bool("render_gt", render_gt)
        render_scale = V.check_int("render_scale", render_scale, 1, V.RENDER_SCALE_MAX)
        if size * render_scale > V.MAX_FRAME_PX:
            raise V.EnvArgumentError(
                f"viewport_px * render_scale must be <= {V.MAX_FRAME_PX} (the side of a rendered "
                f"frame); got {size} * {render_scale}: lower render_scale"
            )
        max_slices = V.check_int("max_slices", max_slices, 1, V.MAX_SLICES)
        propagate_margin_px = V.check_int("propagate_margin_px", propagate_margin_px, 0, size)
        self.size = size
        self.detection_sd_mm = float(detection_sd_mm)
        self.pan_step_px = int(pan_step_px)
        self.window = window
        self.time_penalty = float(time_penalty)
        self.time_model = time_model if time_model is not None else TimeModel()
        self._episode_time_model: TimeModel | None = None  # options["time_model"] of the current episode
        self.mask_feedback = mask_feedback
        self.render_mode = render_mode
        self.render_gt = render_gt
        self.render_scale = render_scale
        self.max_slices = max_slices if self.three_d else 1
        self.propagate_margin_px = propagate_margin_px
        self.cache_dir = cache_dir
        n_kinds = A.N_KINDS_3D if self.three_d else A.N_KINDS_2D
        self.action_space = A.action_space(n_kinds, self.size, self.size)
        self.observation_space = observation_space(self.size, self.max_slices if self.three_d else None)
        self._cases_src = cases
        self._cases: list | None = None
        self._seg_src = segmenter
        self._seg: Any = None
        self._keys_touched: set[str] = set()
        self._done = True
        self._started = False
        self.last_decode: tuple[Any, Any] | None = None
        self.last_decode_s: float | None = None
        self.last_prompt: dict | None = None

    # ---- lazy resources ---------------------------------------------------------------------
    @property
    def cases(self) -> list:
        """The cases episodes are drawn from (the default cohort is loaded on first use)."""
        if self._cases is None:
            src = self._cases_src
            if src is None:
                from hiseg_sim.data.cohort import load_cohort

                src = load_cohort("default")
            elif callable(src):
                src = src()
            V.check_cases_source(src)
            cases = list(src)
            if not cases:
                raise V.EnvArgumentError("no cases: pass cases=[Case, ...] (or a callable returning them)")
            V.check_cases(cases)
            self._cases = cases
        return self._cases

    @property
    def segmenter(self):
        """The segmenter (built on first use when given by name)."""
        if self._seg is None:
            src = self._seg_src
            if isinstance(src, str):
                from hiseg_sim import segmenters

                self._seg = segmenters.build(src, cache_dir=self.cache_dir)
            elif callable(src) and not hasattr(src, "decode"):
                self._seg = src()
            else:
                self._seg = src
            cache = getattr(self._seg, "cache", None)
            if self.cache_dir is not None and cache is not None and getattr(cache, "disk_dir", 1) is None:
                # A segmenter object with a memory-only cache, and a cache_dir asked for: give it
                # the disk store (in a vector-env worker the object is that worker's own copy).
                from hiseg_sim.segmenters.cache import EmbeddingCache

                self._seg.cache = EmbeddingCache(max_items=cache.max_items, disk_dir=self.cache_dir)
        return self._seg

    # ---- reset ------------------------------------------------------------------------------
    def _pick_case(self, options: dict):
        cases = self.cases
        if "case_id" in options:
            cid = options["case_id"]
            if not isinstance(cid, str):
                raise V.EnvArgumentTypeError(f"options['case_id'] must be a str; got {type(cid).__name__}")
            for c in cases:
                if c.case_id == cid:
                    return c
            raise V.EnvArgumentError(f"options['case_id'] = {cid!r} is not among the {len(cases)} case(s)")
        if "case_index" in options:
            return cases[V.check_int("options['case_index']", options["case_index"], 0, len(cases) - 1)]
        return cases[int(self.np_random.integers(len(cases)))]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        # A reset that raises leaves no episode running: the previous one is over either way.
        self._done = True
        options = V.check_option_keys(options)
        tm = options.get("time_model")
        if tm is not None and not isinstance(tm, TimeModel):
            raise V.EnvArgumentTypeError(
                f"options['time_model'] must be a hiseg_sim.timing.TimeModel; got {type(tm).__name__}"
            )
        super().reset(seed=seed)
        case = self._pick_case(options)
        key = case.key_slice
        if "viewport" in options:
            vp = Viewport(
                **V.check_viewport_option(
                    options["viewport"],
                    size=self.size,
                    case_shape=case.shape,
                    three_d=self.three_d,
                    max_slices=self.max_slices,
                    key_slice=key,
                    case_id=case.case_id,
                )
            )
        else:
            y0, x0 = place_viewport(
                case.gt[key], case.spacing_zyx[1:], self.size, self.np_random, self.detection_sd_mm, self.pan_step_px
            )
            z0, n = slab_range(case.shape[0], key, self.max_slices) if self.three_d else (key, 1)
            vp = Viewport(z0, n, y0, x0, self.size)
        if "start_slice" in options:
            start = V.check_int("options['start_slice']", options["start_slice"])
            if not vp.z0 <= start < vp.z0 + vp.n_slices:
                raise V.EnvArgumentError(
                    f"options['start_slice'] = {start} lies outside the slab "
                    f"[{vp.z0}, {vp.z0 + vp.n_slices}) of case {case.case_id!r}"
                    + ("" if self.three_d else " (the 2-D env's one slice is the key slice)")
                )
        if self.three_d:
            if "start_slice" not in options:
                zs = case.gt_slices
                sd = self.detection_sd_mm / case.spacing_zyx[0]
                start = int(np.clip(key + round(float(self.np_random.normal(0.0, sd))), zs[0], zs[-1]))
                start = int(np.clip(start, vp.z0, vp.z0 + vp.n_slices - 1))  # a nodule taller than the slab
            cur = start - vp.z0
        else:
            cur = 0
        self._episode_time_model = tm  # this episode only (an annotator group's scaled model); None: time_model
        self.case, self.viewport = case, vp
        n, S = vp.n_slices, self.size
        gt_slab = case.gt[vp.z0 : vp.z0 + n]
        self._gt_crop = np.stack([crop2d(g, vp.y0, vp.x0, S, fill=False) for g in gt_slab])
        self._gt_full = gt_slab.sum(axis=(1, 2)).astype(np.int64)
        valid = crop2d(np.ones(case.shape[1:], bool), vp.y0, vp.x0, S, fill=False)
        self._valid = None if valid.all() else valid  # pixels inside the volume (masks are clipped to them)
        self._gt_total = int(case.gt.sum()) if self.three_d else int(self._gt_full[0])
        self._hu: dict[int, np.ndarray] = {}
        self._u8: dict[int, np.ndarray] = {}
        self._emb: dict[int, Any] = {}
        self._stacks: list[list[SliceState]] = [[] for _ in range(n)]
        self._inter = np.zeros(n, np.int64)
        self._pred = np.zeros(n, np.int64)
        self._cur = cur
        self._seen = {cur}
        self._pointer = (S / 2.0, S / 2.0)
        self._tool: str | None = None
        self._device = "mouse"
        self._steps = 0
        self._n_prompts = 0
        self._seconds_total = 0.0
        self._dice = self._score()[0]
        self.last_decode = None
        self.last_decode_s = None
        self.last_prompt = None
        self._embedding(cur)  # the person starts prompting here: encode now, not inside a step
        self._done, self._started = False, True
        info = self._info(0.0, "")
        info.update(case_id=case.case_id, viewport=vp.to_dict())
        return self._obs(), info

    # ---- per-slice resources ---------------------------------------------------------------
    def _slice_hu(self, z: int) -> np.ndarray:
        hu = self._hu.get(z)
        if hu is None:
            vp = self.viewport
            hu = crop2d(self.case.volume_hu[vp.z0 + z], vp.y0, vp.x0, self.size, fill=AIR_HU)
            self._hu[z] = hu
        return hu

    def _slice_u8(self, z: int) -> np.ndarray:
        u8 = self._u8.get(z)
        if u8 is None:
            u8 = to_uint8_window(self._slice_hu(z), self.window)
            self._u8[z] = u8
        return u8

    def _embedding(self, z: int):
        emb = self._emb.get(z)
        if emb is None:
            emb, key = encode_once(self.segmenter, self._slice_hu(z), self.window)
            if key is not None:
                self._keys_touched.add(key)
            self._emb[z] = emb
        return emb

    def encoder_stats(self) -> dict:
        """Encoder runs of this env's segmenter and the embedding keys (slices) this env touched.

        Returns ``{"encoder_calls": int, "keys": [str], "pid": int, "segmenter_id": int}``; the
        last two let :func:`hiseg_sim.env.vector.vector_encoder_stats` count a shared segmenter once.
        """
        import os

        seg = self.segmenter
        counters = getattr(seg, "counters", None)
        return {
            "encoder_calls": int(getattr(counters, "encoder_calls", -1)),
            "keys": sorted(self._keys_touched),
            "pid": os.getpid(),
            "segmenter_id": id(seg),
        }

    # ---- scoring and observation ------------------------------------------------------------
    def _score(self) -> tuple[float, float]:
        if self.three_d:
            inter, pred = int(self._inter.sum()), int(self._pred.sum())
        else:
            inter, pred = int(self._inter[0]), int(self._pred[0])
        return dice_from_counts(inter, pred, self._gt_total), iou_from_counts(inter, pred, self._gt_total)

    def _top(self, z: int) -> SliceState | None:
        st = self._stacks[z]
        return st[-1] if st else None

    def _obs(self) -> dict:
        S, z = self.size, self._cur
        st = self._top(z)
        if st is None:
            mask = np.zeros((1, S, S), np.uint8)
            prompts = np.zeros((3, S, S), np.uint8)
            iou = 0.0
        else:
            mask = (st.mask.astype(np.uint8) * 255)[None]
            prompts = draw_prompts(S, st.points, st.box)
            iou = min(max(st.iou_pred, 0.0), 1.0)
        obs = {
            "image": self._slice_u8(z)[None].copy(),
            "mask": mask,
            "prompts": prompts,
            "iou_pred": np.array([iou], np.float32),
            "step": np.array([self._steps], np.float32),
            "seconds": np.array([self._seconds_total], np.float32),
        }
        if self.three_d:
            has = np.zeros(self.max_slices, np.int8)
            for i, stack in enumerate(self._stacks):
                has[i] = bool(stack) and stack[-1].pred > 0
            in_slab = np.zeros(self.max_slices, np.int8)
            in_slab[: self.viewport.n_slices] = 1
            obs["slice"] = np.int64(z)  # type: ignore[assignment]  # a Discrete space's sample
            obs["slice_has_mask"] = has
            obs["slice_in_slab"] = in_slab
        return obs

    def _info(self, seconds: float, code: str) -> dict:
        dice, iou = self._score()
        st = self._top(self._cur)
        info = {
            "dice": float(dice),
            "iou": float(iou),
            "seconds": float(seconds),
            "seconds_total": float(self._seconds_total),
            "n_prompts": int(self._n_prompts),
            "iou_pred": float(st.iou_pred) if st is not None else 0.0,
            "invalid_action": code,
        }
        if self.three_d:
            info["per_slice_dice"] = per_slice_dice(self._inter, self._pred, self._gt_full, self.max_slices)
            info["slice"] = int(self._cur)
        return info

    # ---- step -------------------------------------------------------------------------------
    def _decode_push(self, z: int, points: tuple, box, mask_in, source: str) -> bool:
        from hiseg_sim.segmenters.base import Prompt, PromptError

        emb = self._embedding(z)
        if points:
            pts: np.ndarray | None = np.array([[p[0], p[1]] for p in points], np.float32)
            labels: np.ndarray | None = np.array([p[2] for p in points], np.int64)
        else:
            pts = labels = None
        try:
            prompt = Prompt(
                points=pts, labels=labels, box=None if box is None else np.array(box, np.float32), mask_logits=mask_in
            )
            t0 = time.perf_counter()
            pred = self.segmenter.decode(emb, prompt)
            self.last_decode_s = time.perf_counter() - t0
        except PromptError:
            return False
        mask = pred.mask if self._valid is None else pred.mask & self._valid
        inter, npred = overlap_counts(mask, self._gt_crop[z])
        self._stacks[z].append(
            SliceState(
                tuple(points),
                None if box is None else tuple(float(v) for v in box),
                mask,
                pred.low_res_logits,
                float(pred.iou_pred),
                inter,
                npred,
                source,
            )
        )
        self._inter[z], self._pred[z] = inter, npred
        self.last_decode = (emb, prompt)
        self.last_prompt = {
            "slice": int(self.viewport.z0 + z),
            "points": None if pts is None else pts.tolist(),
            "labels": None if labels is None else labels.tolist(),
            "box": None if box is None else [float(v) for v in box],
            "mask_prompt": mask_in is not None,
        }
        self._n_prompts += 1
        return True

    def step(self, action):
        if self._done:
            raise ResetNeeded("the episode is over (or never started): call reset() before step()")
        act = A.coerce_action(action, self.action_space)  # type: ignore[arg-type]  # always MultiDiscrete
        S, z = self.size, self._cur
        n = self.viewport.n_slices
        code = ""
        decoded = new_slice = False
        moved = 0
        terminated = False
        xy = xy2 = None
        self.last_decode = None
        self.last_decode_s = None
        self.last_prompt = None
        st = self._top(z)
        if isinstance(act, A.PointAction):
            xy = (float(act.x), float(act.y))
            if round(act.x) in (0, S - 1) or round(act.y) in (0, S - 1):
                code = "edge_point"
            points = (st.points if st else ()) + ((xy[0], xy[1], 1 if act.positive else 0),)
            mask_in = st.low_res_logits if (st is not None and self.mask_feedback) else None
            decoded = self._decode_push(z, points, st.box if st else None, mask_in, "point")
            if not decoded:
                code = "prompt_rejected"
        elif isinstance(act, A.BoxAction):
            xy, xy2 = (float(act.x0), float(act.y0)), (float(act.x1), float(act.y1))
            if act.zero_area:
                code = "zero_area_box"
            else:
                if act.reversed:
                    code = "reversed_box"
                b = act.normalised()
                decoded = self._decode_push(z, st.points if st else (), (b.x0, b.y0, b.x1, b.y1), None, "box")
                if not decoded:
                    code = "prompt_rejected"
        elif isinstance(act, A.Undo):
            if st is None:
                code = "nothing_to_undo"
            else:
                self._stacks[z].pop()
                top = self._top(z)
                self._inter[z], self._pred[z] = (top.inter, top.pred) if top else (0, 0)
        elif isinstance(act, A.Accept):
            if not any(self._stacks):
                code = "nothing_to_accept"
            else:
                terminated = True
        elif isinstance(act, (A.NextSlice, A.PrevSlice)):
            t = z + (1 if isinstance(act, A.NextSlice) else -1)
            moved = 1  # the key is pressed (charged) even at the end of the slab
            if not 0 <= t < n:
                code = "no_slice_there"
            else:
                self._cur = t
                new_slice = t not in self._seen
                self._seen.add(t)
        elif isinstance(act, A.Propagate):
            t = z + act.direction
            moved = 1
            if st is None or st.pred == 0:
                code = "nothing_to_propagate"
            elif not 0 <= t < n:
                code = "no_slice_there"
            else:
                box = mask_box(st.mask, self.propagate_margin_px, S)
                decoded = self._decode_push(t, (), box, st.low_res_logits, "propagate")
                if decoded:
                    self._cur = t
                    new_slice = t not in self._seen
                    self._seen.add(t)
                else:
                    code = "prompt_rejected"
        charge = action_seconds(
            self.episode_time_model,
            A.kind_name(act),
            pointer=self._pointer,
            tool=self._tool,
            device=self._device,
            xy=xy,
            xy2=xy2,
            decoded=decoded,
            slices_moved=moved,
            new_slice=new_slice,
            measured_latency_s=self.last_decode_s,
        )
        self._pointer, self._tool, self._device = charge.pointer, charge.tool, charge.device
        self._steps += 1
        self._seconds_total += charge.seconds
        dice = self._score()[0]
        reward = (dice - self._dice) - self.time_penalty * charge.seconds
        self._dice = dice
        self._done = terminated
        return self._obs(), float(reward), terminated, False, self._info(charge.seconds, code)

    @property
    def episode_time_model(self) -> TimeModel:
        """The time model charging this episode: ``options["time_model"]`` of the last reset, else ``time_model``."""
        return self._episode_time_model if self._episode_time_model is not None else self.time_model

    # ---- views for people and for analysis --------------------------------------------------
    @property
    def current_slice(self) -> int:
        """The slab index in view (0 in 2-D); after ``reset`` it is the episode's start slice."""
        if not self._started:
            raise ResetNeeded("call reset() before reading current_slice")
        return int(self._cur)

    def scoring_reference(self) -> np.ndarray:
        """``bool`` ``(n_slices, H, W)``: the ground truth the env scores against, in viewport pixels.

        Only for what the design allows to read it: the harness's perception step (which turns it
        into a person's noisy intent) and the click robots of the literature, which are defined by
        reading it. A copy; changing it changes nothing in the env.
        """
        if not self._started:
            raise ResetNeeded("call reset() before reading scoring_reference()")
        return np.array(self._gt_crop, dtype=bool)

    def current_mask(self) -> np.ndarray:
        """``bool`` ``(H, W)``: the mask on the slice in view (all False if none)."""
        st = self._top(self._cur)
        return st.mask.copy() if st is not None else np.zeros((self.size, self.size), bool)

    def slab_masks(self) -> np.ndarray:
        """``bool`` ``(n_slices, H, W)``: the current mask of every slice of the slab."""
        out = np.zeros((self.viewport.n_slices, self.size, self.size), bool)
        for i, stack in enumerate(self._stacks):
            if stack:
                out[i] = stack[-1].mask
        return out

    def volume_mask(self) -> np.ndarray:
        """``bool`` ``(Z, Y, X)`` in the case's volume: the slab masks pasted back (for scoring with any metric)."""
        vp, (Z, Y, X) = self.viewport, self.case.shape
        out = np.zeros((Z, Y, X), bool)
        ys, ye = max(vp.y0, 0), min(vp.y0 + self.size, Y)
        xs, xe = max(vp.x0, 0), min(vp.x0 + self.size, X)
        if ys < ye and xs < xe:  # else the viewport lies wholly off the scan: nothing to paste
            m = self.slab_masks()
            out[vp.z0 : vp.z0 + vp.n_slices, ys:ye, xs:xe] = m[:, ys - vp.y0 : ye - vp.y0, xs - vp.x0 : xe - vp.x0]
        return out

    def render(self):
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; make the env with render_mode='rgb_array'")
            return None
        if not self._started:
            raise ResetNeeded("call reset() before render()")
        z = self._cur
        st = self._top(z)
        slices = None
        if self.three_d:
            has_gt = (self._gt_full > 0) if self.render_gt else None
            slices = {"current": z, "has_mask": [bool(s) and s[-1].pred > 0 for s in self._stacks], "has_gt": has_gt}
        return render_frame(
            self._slice_u8(z),
            None if st is None else st.mask,
            st.points if st else (),
            st.box if st else None,
            self._gt_crop[z] if self.render_gt else None,
            self.render_scale,
            slices,
        )

    def close(self):
        self._emb = {}
        super().close()
