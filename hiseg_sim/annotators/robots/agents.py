"""The literature's click and box robots as :class:`~hiseg_sim.annotators.base.Annotator` agents.

Robots read the ground truth — that is what they are. Each agent here declares
``reads_ground_truth = True``, so the harness hands it
:class:`~hiseg_sim.annotators.base.RobotKnowledge` (the ground truth in viewport
coordinates); it applies a rule of :mod:`hiseg_sim.annotators.robots.rules` to the mask in the
observation and acts in the environment with typed actions. They are exact baselines, never a model
of a person.

=====================  ============================================================================
name                   what it does in the env
=====================  ============================================================================
``robot_ritm``         RITM: first click by its rule on the empty prediction, then the next click
                       against the current mask; Accept at the target IoU (0.90; 0.85 with
                       ``target_iou=0.85``) or after 20 clicks (RITM's NoC protocol, Sofiiuk et al. 2022)
``robot_microsam``     micro-sam iterative prompting: the ground-truth box, then one positive and
                       one negative click per iteration (7 iterations: its 8 prompting rounds)
``robot_deepgrow``     MONAI DeepGrow clicks (probability ∝ exp(distance) − 1 in the larger
                       discrepancy), target IoU / 20 clicks as RITM
``robot_sammed3d``     SAM-Med3D ``ritm`` clicks, target IoU / 20 clicks
``robot_medsegfm``     CVPR 2025 MedSegFM evaluator: ground-truth box, then 5 refinement clicks at
                       the centre of the largest error component
``robot_medsam_box``   MedSAM's box jitter at LiteMedSAM's input (each side out by 0–5 px at 256 px,
                       its ``bbox_shift``); Accept
``robot_sam_box``      SAM's training box noise (SD 10 % of the side, capped at 20 px at 1024 px);
                       Accept
``auto_box``           the automatic baseline: a box centred on a noisy detection point (drawn as the
                       env draws its own: centroid + N(0, 3 mm) per axis) with the nodule's box size
                       times a detector's size error (log-normal, SD 0.2; an assumption), Accept;
                       nobody corrects it
=====================  ============================================================================

The IoU a robot stops on is its own, of the mask in view against the ground truth in the viewport
(as RITM's loop computes it).

In the 3-D env a robot runs its 2-D protocol on every slice that holds ground truth (a robot knows
the extent from the ground truth, as the click protocols of SAM-Med3D and nnInteractive's
evaluation do): the start slice first, then up to the last, then down from the start to the first;
where its protocol would accept it moves on instead, and it accepts the volume after the last
slice. A click robot reaches each new slice by ``Propagate`` from its neighbour (the neighbour's
mask becomes the new slice's box and mask prompt, as in the volume tools) and corrects from there;
a box robot scrolls there and draws its box (MedSAM's own volume inference boxes every slice).
``auto_box`` knows nothing of the extent: its box on the start slice is propagated up until the
propagated mask comes out empty (or the slab ends), then down the same way, and accepted.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from hiseg_sim.annotators.base import Annotator, Feedback, Knowledge, RobotKnowledge
from hiseg_sim.annotators.robots.boxes import gt_box, medsam_box, sam_noisy_box
from hiseg_sim.annotators.robots.points import (
    Click,
    deepgrow_click,
    medsegfm_click,
    microsam_clicks,
    ritm_click,
    sammed3d_click,
)
from hiseg_sim.annotators.robots.rules import _call_robot
from hiseg_sim.env.actions import Accept, BoxAction, NextSlice, PointAction, PrevSlice, Propagate
from hiseg_sim.metrics import iou

__all__ = ["ROBOTS", "AutoBoxAgent", "BoxRobotAgent", "ClickRobotAgent", "VolumeWalk", "build_robot"]


def _gt_slice(knowledge: Knowledge, who: str) -> np.ndarray:
    if not isinstance(knowledge, RobotKnowledge) or knowledge.gt is None:
        raise TypeError(
            f"{who} reads the ground truth: it needs RobotKnowledge (the harness gives it to agents "
            "that declare reads_ground_truth = True)"
        )
    gt = np.asarray(knowledge.gt, bool)
    return gt[int(knowledge.start_slice)] if gt.ndim == 3 else gt


def _clip_box(box, size: int) -> BoxAction:
    x0, y0, x1, y1 = (float(v) for v in box)
    lim = float(size - 1)
    x0, x1 = sorted((float(np.clip(x0, 0, lim)), float(np.clip(x1, 0, lim))))
    y0, y1 = sorted((float(np.clip(y0, 0, lim)), float(np.clip(y1, 0, lim))))
    if x1 - x0 < 1:
        x0, x1 = (x0 - 1, x1) if x0 >= 1 else (x0, x1 + 1)
    if y1 - y0 < 1:
        y0, y1 = (y0 - 1, y1) if y0 >= 1 else (y0, y1 + 1)
    return BoxAction(x0, y0, x1, y1)


class VolumeWalk(Annotator):
    """A robot's 2-D protocol (``_begin_slice`` / ``_act_slice``) run slice by slice in the 3-D env
    (see the module docstring); in 2-D it is the protocol itself.

    ``walk``: ``"gt"`` (every slice holding ground truth) or ``"propagate"`` (propagate from the
    start slice until the mask comes out empty); ``propagate_into``: reach the next slice of a
    ``"gt"`` walk by ``Propagate`` (else by scrolling)."""

    walk = "gt"
    propagate_into = True

    def _begin_slice(self, knowledge: Knowledge, rng: np.random.Generator) -> None:
        raise NotImplementedError

    def _act_slice(self, obs: dict, info: dict) -> Any:
        raise NotImplementedError

    def begin_case(self, knowledge: Knowledge, rng: np.random.Generator) -> None:
        self._volume = bool(knowledge.three_d) and np.asarray(getattr(knowledge, "gt", None)).ndim == 3
        self._knowledge, self._rng = knowledge, rng
        if not self._volume:
            self._begin_slice(knowledge, rng)
            return
        gt = np.asarray(knowledge.gt, bool)  # type: ignore[attr-defined]
        held = [int(z) for z in np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1))]
        n = int(gt.shape[0])
        start = int(knowledge.start_slice)
        if self.walk == "gt" and held and start not in held:
            start = min(held, key=lambda z: (abs(z - start), z))
        self._n, self._start = n, start
        if self.walk == "gt":
            self._order = (
                [start] + [z for z in held if z > start] + sorted((z for z in held if z < start), reverse=True)
            )
        else:
            self._order = [start]
        self._i = 0
        self._direction = 1  # the "propagate" walk: up first, then down
        self._begin_slice(replace(knowledge, start_slice=start), rng)

    def act(self, obs: dict, info: dict) -> Any:
        if not self._volume:
            return self._act_slice(obs, info)
        z = int(obs["slice"])
        if self.walk == "propagate" and self._i >= 1:
            return self._propagate_on(obs, z)
        target = self._order[self._i]
        if z != target:
            return self._towards(obs, z, target)
        action = self._act_slice(obs, info)
        if not isinstance(action, Accept):
            return action
        self._i += 1
        if self.walk == "propagate":
            return self._propagate_on(obs, z)
        if self._i >= len(self._order):
            return Accept()
        self._begin_slice(replace(self._knowledge, start_slice=self._order[self._i]), self._rng)
        return self._towards(obs, z, self._order[self._i])

    def _towards(self, obs: dict, z: int, target: int) -> Any:
        step = 1 if target > z else -1
        has_mask = bool(np.asarray(obs["slice_has_mask"])[z])
        if self.propagate_into and abs(target - z) == 1 and has_mask:
            return Propagate(step)
        return NextSlice() if step == 1 else PrevSlice()

    def _propagate_on(self, obs: dict, z: int) -> Any:
        """The ``"propagate"`` walk after the start slice: on while the mask in view is not empty."""
        in_slab = np.asarray(obs["slice_in_slab"]).astype(bool)
        here_empty = not bool(np.asarray(obs["slice_has_mask"])[z])
        if self._direction == 1:
            nxt = z + 1
            if not here_empty and nxt < self._n and in_slab[nxt]:
                return Propagate(1)
            self._direction = -1  # done upwards: back to the start, then down
        if z > self._start:
            return PrevSlice()
        if here_empty or z - 1 < 0 or not in_slab[z - 1]:
            return Accept()
        return Propagate(-1)


class ClickRobotAgent(VolumeWalk):
    """A click robot in the env. Robots read the ground truth — that is what they are.

    Args:
        name: agent name (written in traces).
        click_fn: a robot of :mod:`hiseg_sim.annotators.robots.points`, called as in
            :func:`~hiseg_sim.annotators.robots.rules.run_click_protocol` (``rng=``/``previous=`` when
            its signature names them); returns a Click, a list of Clicks or None.
        target_iou: Accept once the IoU reaches it (checked after each robot step); None: never
            early, only at ``max_clicks`` or when no error is left.
        max_clicks: robot steps (a micro-sam step makes two clicks).
        initial_box: start with the ground-truth box (micro-sam, the MedSegFM evaluator).
    """

    reads_ground_truth = True

    def __init__(
        self,
        name: str,
        click_fn: Callable,
        target_iou: float | None = 0.9,
        max_clicks: int = 20,
        initial_box: bool = False,
    ):
        self.name = name
        self.click_fn = click_fn
        self.target_iou = target_iou
        self.max_clicks = int(max_clicks)
        self.initial_box = bool(initial_box)
        self.ious: list[float] = []

    def _begin_slice(self, knowledge: Knowledge, rng: np.random.Generator) -> None:
        self.gt = _gt_slice(knowledge, self.name)
        self.size = int(self.gt.shape[-1])
        self.rng = rng
        self.history: list[Click] = []
        self.queue: list[PointAction] = []
        self.steps = 0
        self.box_done = not self.initial_box
        self.prompted = False
        self.ious = []
        self.stop_reason: str | None = None

    def _act_slice(self, obs: dict, info: dict) -> Any:
        pred = np.asarray(obs["mask"][0]) > 127
        if self.queue:
            return self.queue.pop(0)
        if self.prompted:
            score = iou(pred, self.gt)
            self.ious.append(score)
            if self.target_iou is not None and score >= self.target_iou:
                self.stop_reason = "target"
                return Accept()
            if self.box_done and self.steps >= self.max_clicks:
                self.stop_reason = "max_clicks"
                return Accept()
        if not self.box_done:
            self.box_done = self.prompted = True
            return _clip_box(gt_box(self.gt), self.size)
        new = _call_robot(self.click_fn, pred, self.gt, self.rng, self.history)
        if not new:
            self.stop_reason = "no_error"
            return Accept()
        self.history.extend(new)
        self.steps += 1
        self.prompted = True
        acts = [PointAction(float(c.xy[0]), float(c.xy[1]), bool(c.positive)) for c in new]
        self.queue = acts[1:]
        return acts[0]

    def end_case(self, feedback: Feedback | None) -> None:
        pass

    def episode_info(self) -> dict:
        return {"robot_ious": list(self.ious), "stop": self.stop_reason}


class BoxRobotAgent(VolumeWalk):
    """One box from a robot's rule on the ground truth, then Accept. Robots read the ground truth —
    that is what they are.

    Args:
        name: agent name.
        box_fn: ``box_fn(gt2d, rng, size) -> XYXY`` (viewport pixels).
    """

    reads_ground_truth = True
    propagate_into = False

    def __init__(self, name: str, box_fn: Callable[[np.ndarray, np.random.Generator, int], Any]):
        self.name = name
        self.box_fn = box_fn

    def _begin_slice(self, knowledge: Knowledge, rng: np.random.Generator) -> None:
        self.gt = _gt_slice(knowledge, self.name)
        self.size = int(self.gt.shape[-1])
        self.rng = rng
        self.done = False

    def _act_slice(self, obs: dict, info: dict) -> Any:
        if self.done:
            return Accept()
        self.done = True
        return _clip_box(self.box_fn(self.gt, self.rng, self.size), self.size)

    def end_case(self, feedback: Feedback | None) -> None:
        pass


class AutoBoxAgent(BoxRobotAgent):
    """The automatic baseline: a detector's box, accepted as it is (nobody corrects it).

    Reads the ground truth, as a robot, for nothing but what a detector provides: its box is
    centred on a detection point drawn the way the environment draws its own (the ground truth's
    centroid on the slice plus Gaussian noise of ``detection_sd_mm`` per axis, default the env's
    3.0 mm; drawn from the robot's generator, without the env's snapping to the pan grid), and
    its width and height are the nodule's box on the slice times a detector's size error
    ``exp(N(0, size_log_sd))`` each (assumption: ``size_log_sd = 0.2``, a detector regressing box
    size within about 20 %). Draws: two normals for the centre (y, x), two for the size (w, h).
    """

    def __init__(self, name: str = "auto_box", detection_sd_mm: float = 3.0, size_log_sd: float = 0.2):
        super().__init__(name, self._box)
        self.detection_sd_mm = float(detection_sd_mm)
        self.size_log_sd = float(size_log_sd)

    walk = "propagate"

    def begin_case(self, knowledge: Knowledge, rng: np.random.Generator) -> None:
        self.spacing_yx = tuple(float(v) for v in knowledge.spacing_mm[-2:])
        super().begin_case(knowledge, rng)

    def _box(self, gt2d: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
        x0, y0, x1, y1 = gt_box(gt2d)
        ys, xs = np.nonzero(gt2d)
        noise = rng.standard_normal(2) * self.detection_sd_mm / np.asarray(self.spacing_yx)
        cy, cx = ys.mean() + noise[0], xs.mean() + noise[1]
        w, h = (x1 - x0 + 1.0), (y1 - y0 + 1.0)
        fw, fh = np.exp(rng.standard_normal(2) * self.size_log_sd)
        return np.array([cx - w * fw / 2.0, cy - h * fh / 2.0, cx + w * fw / 2.0, cy + h * fh / 2.0])


def _medsam(gt2d, rng, size):
    return medsam_box(gt2d, rng, max_shift_px=5, input_size=256, image_size=size, clip="litemedsam")


def _sam(gt2d, rng, size):
    return sam_noisy_box(gt2d, rng, image_size=size)


def _click(name: str, fn: Callable, **defaults) -> Callable[..., ClickRobotAgent]:
    def build(**kw) -> ClickRobotAgent:
        args = dict(defaults)
        args.update(kw)
        return ClickRobotAgent(name, fn, **args)

    build.__doc__ = f"Build the {name} agent (keyword arguments of ClickRobotAgent override {defaults})."
    return build


#: Robot name -> builder(**overrides).
ROBOTS: dict[str, Callable[..., Any]] = {
    "robot_ritm": _click("robot_ritm", ritm_click, target_iou=0.9, max_clicks=20),
    "robot_microsam": _click("robot_microsam", microsam_clicks, target_iou=None, max_clicks=7, initial_box=True),
    "robot_deepgrow": _click("robot_deepgrow", deepgrow_click, target_iou=0.9, max_clicks=20),
    "robot_sammed3d": _click(
        "robot_sammed3d", functools.partial(sammed3d_click, method="ritm"), target_iou=0.9, max_clicks=20
    ),
    "robot_medsegfm": _click("robot_medsegfm", medsegfm_click, target_iou=None, max_clicks=5, initial_box=True),
    "robot_medsam_box": lambda **kw: BoxRobotAgent(kw.pop("name", "robot_medsam_box"), kw.pop("box_fn", _medsam)),
    "robot_sam_box": lambda **kw: BoxRobotAgent(kw.pop("name", "robot_sam_box"), kw.pop("box_fn", _sam)),
    "auto_box": lambda **kw: AutoBoxAgent(**kw),
}


def build_robot(name: str, **overrides) -> Any:
    """A robot agent by name (see :data:`ROBOTS`)."""
    if name not in ROBOTS:
        raise KeyError(f"unknown robot {name!r}; robots: {sorted(ROBOTS)}")
    return ROBOTS[name](**overrides)
