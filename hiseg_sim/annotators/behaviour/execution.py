"""Execution: where the hand puts a click or a box, and what the hand's speed costs in accuracy and time.

Every function here is pure (numpy in, numpy out, randomness from the ``Generator`` passed in).

Aiming a click
--------------
A person clicks *inside* the region they want to change, but not at its exact centre (RClicks,
arXiv 2410.11722: real clicks are spread around the centre of the error region, not at the
maximum of its distance transform). :func:`aim_point` picks the aim uniformly among the pixels
whose depth (in-plane distance to the region's edge, mm) is at least ``centre_fraction`` of the
region's maximum depth: ``centre_fraction = 1`` is the RITM robot's deepest point, smaller values
spread the aim toward the edge.

Motor noise and Fitts' speed-accuracy trade-off
-----------------------------------------------
The hand then lands off the aim by Gaussian noise with SD ``point_sd_mm`` per axis (mm of the
image; the person zooms the viewer so a nodule fills a similar part of the screen, so the scatter
is modelled in image millimetres and converted to pixels with the pixel spacing). Fitts' law,
``MT = a + b log2(D / We + 0.5)``, is stated with the *effective* width ``We = 4.133 SD``
(MacKenzie 1992; Soukoreff & MacKenzie 2004): a person who lets their clicks scatter more moves
faster. So the one motor parameter per group, ``point_sd_mm``, sets both the noise and the time:
:func:`time_model_for` gives the environment's :class:`~hiseg_sim.timing.TimeModel` a target
size ``We`` (screen pixels) instead of the default 8 px, and the environment charges the Fitts
time of that effective width. Box corners scatter ``CORNER_SD_FACTOR`` = 2 times more (the time
model's own corner/point target ratio, 16 px / 8 px: the same trade-off at twice the width).

Box looseness
-------------
A drawn box sits outside the edge the person has in mind by ``box_margin_mm`` per side on
average (SD ``box_margin_sd_mm`` between sides), before motor noise on the two corners.
For scale: MedSAM was trained with each side pushed out by 0-20 px at 1024 px (Ma et al. 2024), about
0-1.3 mm on these 0.7-mm viewports.

Practice
--------
People get faster with a tool (the power law of practice, Newell & Rosenbloom 1981). On the
``n``-th case a person does with it, M is charged ``1 + (m - 1) n^-a_M`` times the keystroke-level
M, where ``m = mental_scale (1 + hesitation)`` is the group's unpractised factor (the KLM's M is a
practised user's: a group at or below it does not change), and pointing and clicks
``s + (1 - s) n^-a_P`` times the Fitts-law time, ``s`` the share a practised hand still needs
(:func:`time_model_for`, :func:`hiseg_sim.timing.practice_factor`). Exponents and ``s`` are
profile parameters (``[time]``); on the first case nothing changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hiseg_sim.env.actions import BoxAction, PointAction
from hiseg_sim.timing import TimeModel, practice_factor

__all__ = [
    "CORNER_SD_FACTOR",
    "FITTS_WE_PER_SD",
    "ExecutionParams",
    "TimeParams",
    "aim_point",
    "depth_mm",
    "effective_width_px",
    "intended_box",
    "place_box",
    "place_point",
    "time_model_for",
]

#: Effective target width per SD of the endpoint scatter (We = 4.133 SD; MacKenzie 1992).
FITTS_WE_PER_SD = 4.133
#: Box corners scatter this many times more than clicks (TimeModel corner 16 px / point 8 px).
CORNER_SD_FACTOR = 2.0


@dataclass(frozen=True)
class ExecutionParams:
    """How a group's hand moves (mm of the image).

    Attributes:
        point_sd_mm: SD of a click's landing point around the aim, per axis; corners x2.
        box_margin_mm: mean distance of a drawn box side outside the intended edge.
        box_margin_sd_mm: SD of that distance between sides and boxes.
        centre_fraction: aim among pixels at least this share of the region's max depth (0-1].
    """

    point_sd_mm: float = 0.4
    box_margin_mm: float = 1.0
    box_margin_sd_mm: float = 0.5
    centre_fraction: float = 0.5

    def __post_init__(self) -> None:
        for name in ("point_sd_mm", "box_margin_sd_mm"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"ExecutionParams.{name} must be > 0 mm; got {v}")
        if not math.isfinite(self.box_margin_mm):
            raise ValueError(f"ExecutionParams.box_margin_mm must be finite; got {self.box_margin_mm}")
        if not 0.0 < float(self.centre_fraction) <= 1.0:
            raise ValueError(f"ExecutionParams.centre_fraction must be in (0, 1]; got {self.centre_fraction}")


@dataclass(frozen=True)
class TimeParams:
    """How a group's time differs from the keystroke-level defaults (factors, 1 = literature), and
    how it falls with practice.

    Attributes:
        mental_scale: multiplies M, the mental preparation before each deliberate action.
        hesitation: extra share of M a group spends unsure what to do next (M x (1 + hesitation)).
        key_scale: multiplies keystrokes (K) and slice scrolling.
        mental_practice_exp: power-law exponent of M's fall with practice, toward the keystroke-level
            M (a practised user's: a group at or below it does not change).
        motor_practice_exp: power-law exponent of the fall of pointing and clicking with practice,
            toward ...
        motor_practised_share: ... this share of the Fitts-law time a person needs on their first
            case with the tool (1: practice does not speed the hand up).
        example_study_s: seconds spent looking at one worked example beside one's own outline.
    """

    mental_scale: float = 1.0
    hesitation: float = 0.0
    key_scale: float = 1.0
    mental_practice_exp: float = 0.0
    motor_practice_exp: float = 0.0
    motor_practised_share: float = 1.0
    example_study_s: float = 0.0

    def __post_init__(self) -> None:
        for name in (
            "mental_scale",
            "hesitation",
            "key_scale",
            "mental_practice_exp",
            "motor_practice_exp",
            "example_study_s",
        ):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"TimeParams.{name} must be >= 0; got {v}")
        if not 0.0 <= float(self.motor_practised_share) <= 1.0:
            raise ValueError(f"TimeParams.motor_practised_share must be in [0, 1]; got {self.motor_practised_share}")


def effective_width_px(sd_mm: float, spacing_mm: float, screen_scale: float) -> float:
    """Fitts' effective width ``We = 4.133 SD`` in screen pixels, for an SD in image mm.

    >>> round(effective_width_px(0.4, 0.7, 4.0), 2)
    9.45
    """
    return FITTS_WE_PER_SD * float(sd_mm) / float(spacing_mm) * float(screen_scale)


def time_model_for(
    execution: ExecutionParams, time: TimeParams, spacing_yx, base: TimeModel | None = None, practice_n: int = 1
) -> TimeModel:
    """The environment's time model for one group on one case, the ``practice_n``-th case the
    person does with the tool (1: the first).

    Pointing targets become the group's effective widths (screen px), so the env charges the Fitts
    time of their speed-accuracy trade-off; M is scaled by ``mental_scale * (1 + hesitation)``.
    With practice (:func:`hiseg_sim.timing.practice_factor`) M falls by the power law toward the
    keystroke-level M, and pointing and clicks (``motor_scale``) toward ``motor_practised_share``
    of the literature's time, each at its own exponent; on the first case nothing changes.
    """
    base = TimeModel() if base is None else base
    px = float(np.mean(spacing_yx))
    unpractised_m = time.mental_scale * (1.0 + time.hesitation)
    practised_m = min(1.0, 1.0 / unpractised_m) if unpractised_m > 0 else 1.0  # the KLM's M, as a share
    mental = practice_factor(practice_n, time.mental_practice_exp, practised_m)
    motor = practice_factor(practice_n, time.motor_practice_exp, time.motor_practised_share)
    return base.scaled(
        point_target_px=effective_width_px(execution.point_sd_mm, px, base.screen_scale),
        corner_target_px=effective_width_px(CORNER_SD_FACTOR * execution.point_sd_mm, px, base.screen_scale),
        mental_scale=base.mental_scale * time.mental_scale * (1.0 + time.hesitation) * mental,
        motor_scale=base.motor_scale * motor,
        key_scale=base.key_scale * time.key_scale,
    )


def depth_mm(region: np.ndarray, spacing_yx) -> np.ndarray:
    """In-plane distance (mm) of each pixel of ``region`` (``bool`` ``(H, W)``) to its edge; the
    viewport border counts as edge."""
    if not region.any():
        return np.zeros(region.shape, np.float64)
    return ndimage.distance_transform_edt(np.pad(region, 1), sampling=tuple(float(s) for s in spacing_yx))[1:-1, 1:-1]


def aim_point(region: np.ndarray, spacing_yx, rng: np.random.Generator, centre_fraction: float) -> tuple[float, float]:
    """Where a person aims a click in ``region`` (``bool`` ``(H, W)``, non-empty): ``(y, x)`` pixels.

    Uniform among pixels at least ``centre_fraction`` of the maximum depth deep (see the module
    docstring). One ``integers`` draw.
    """
    d = depth_mm(region, spacing_yx)
    top = float(d.max())
    if top <= 0:
        raise ValueError("aim_point needs a non-empty region")
    cand = np.flatnonzero(d >= centre_fraction * top - 1e-9)
    k = cand[int(rng.integers(cand.size))]
    y, x = np.unravel_index(k, region.shape)
    return float(y), float(x)


def place_point(
    aim_yx: tuple[float, float],
    positive: bool,
    execution: ExecutionParams,
    spacing_yx,
    size: int,
    rng: np.random.Generator,
) -> PointAction:
    """The click that lands: aim + motor noise (two normal draws: y, x), kept inside the viewport."""
    sd = np.array([execution.point_sd_mm / float(spacing_yx[0]), execution.point_sd_mm / float(spacing_yx[1])])
    y, x = np.asarray(aim_yx, float) + rng.standard_normal(2) * sd
    lim = size - 1
    return PointAction(float(np.clip(x, 0, lim)), float(np.clip(y, 0, lim)), bool(positive))


def intended_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    """Tight ``XYXY`` box (pixel indices, max inclusive) of a non-empty ``(H, W)`` mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if ys.size == 0:
        raise ValueError("intended_box needs a non-empty mask")
    return float(xs[0]), float(ys[0]), float(xs[-1]), float(ys[-1])


def place_box(
    target: np.ndarray,
    execution: ExecutionParams,
    spacing_yx,
    size: int,
    rng: np.random.Generator,
    margin_delta_mm: float = 0.0,
) -> BoxAction:
    """The box that lands around ``target`` (``bool`` ``(H, W)``, non-empty), ``XYXY`` viewport pixels.

    Each side moves out by ``box_margin_mm + margin_delta_mm + N(0, box_margin_sd_mm)`` (mm; four
    normal draws, in x0, y0, x1, y1 order), then each corner coordinate gets motor noise with SD
    ``CORNER_SD_FACTOR * point_sd_mm`` (four more draws). Clipped to the viewport; a box that
    collapses below one pixel is widened to one pixel around its centre (a drag always moves).
    """
    x0, y0, x1, y1 = intended_box(target)
    sy, sx = float(spacing_yx[0]), float(spacing_yx[1])
    margin = execution.box_margin_mm + margin_delta_mm + rng.standard_normal(4) * execution.box_margin_sd_mm
    corner = rng.standard_normal(4) * CORNER_SD_FACTOR * execution.point_sd_mm
    box = np.array(
        [
            x0 - (margin[0] + corner[0]) / sx,
            y0 - (margin[1] + corner[1]) / sy,
            x1 + (margin[2] - corner[2]) / sx,
            y1 + (margin[3] - corner[3]) / sy,
        ]
    )
    lim = float(size - 1)
    box = np.clip(box, 0.0, lim)
    for a, b in ((0, 2), (1, 3)):
        if box[b] - box[a] < 1.0:
            c = float(np.clip((box[a] + box[b]) / 2.0, 0.5, lim - 0.5))
            box[a], box[b] = c - 0.5, c + 0.5
    return BoxAction(float(box[0]), float(box[1]), float(box[2]), float(box[3]))
