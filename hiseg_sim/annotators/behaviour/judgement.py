"""Judgement: how good the mask looks to the person, and whether they accept, go on or give up.

A person cannot score the mask against the ground truth; they compare it with what they mean to
outline (their *intent*, made by :mod:`hiseg_sim.annotators.behaviour.perception`) and they do that
imperfectly. The perceived quality is

    q = Dice(mask, intent) + e,     e ~ N(0, quality_sd),   clipped to [0, 1]

with ``quality_sd`` the group's skill at judging an outline (a fresh ``e`` each time they look).
What they think is missing or leaking is the difference between the mask and the intent, seen at
the resolution a person can act on: parts thinner than ``min_error_mm`` deep are not worth a
click (:func:`perceived_errors`).

Stopping (:func:`decide`): accept when ``q >= accept_threshold``; give up (accept whatever is
there) when the actions taken reach ``patience``, the seconds spent reach ``time_budget_s``, or
``stall_limit`` prompts in a row brought no visible improvement, or when the improvement they
expect from their best correction, ``(1 - q) x`` its learned value (the share of the remaining
error it usually fixes, :mod:`hiseg_sim.annotators.behaviour.learning`), is below ``min_expected_gain``
(satisficing: a person who has learned that corrections rarely help stops sooner); otherwise go on. After a prompt that made the mask look worse by more than ``undo_margin``, the
person takes it back (:func:`looks_worse`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
from scipy import ndimage

from hiseg_sim.annotators.behaviour.execution import depth_mm

__all__ = [
    "JudgementParams",
    "PerceivedErrors",
    "decide",
    "looks_worse",
    "perceived_errors",
    "perceived_quality",
    "intent_dice",
]


@dataclass(frozen=True)
class JudgementParams:
    """A group's judgement.

    Attributes:
        quality_sd: SD of the noise on the perceived Dice (skill at judging an outline).
        accept_threshold: perceived quality at which the mask is good enough.
        undo_margin: a prompt that lowers the perceived quality by more than this is undone.
        min_error_mm: missing or leaking parts less deep than this (mm) are ignored.
        patience: actions after which the person gives up and accepts what is there.
        time_budget_s: simulated seconds after which they give up.
        stall_limit: prompts in a row without a perceived improvement after which they give up.
        min_expected_gain: a correction expected to raise the perceived Dice by less than this is
            not worth making.
    """

    quality_sd: float = 0.03
    accept_threshold: float = 0.9
    undo_margin: float = 0.02
    min_error_mm: float = 0.5
    patience: int = 10
    time_budget_s: float = 120.0
    stall_limit: int = 3
    min_expected_gain: float = 0.01

    def __post_init__(self) -> None:
        for name in ("quality_sd", "undo_margin", "min_error_mm", "time_budget_s", "min_expected_gain"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"JudgementParams.{name} must be >= 0; got {v}")
        if not 0.0 < float(self.accept_threshold) <= 1.0:
            raise ValueError(f"JudgementParams.accept_threshold must be in (0, 1]; got {self.accept_threshold}")
        if int(self.patience) < 1 or int(self.patience) != self.patience:
            raise ValueError(f"JudgementParams.patience must be a whole number >= 1; got {self.patience}")
        object.__setattr__(self, "patience", int(self.patience))
        if int(self.stall_limit) < 1 or int(self.stall_limit) != self.stall_limit:
            raise ValueError(f"JudgementParams.stall_limit must be a whole number >= 1; got {self.stall_limit}")
        object.__setattr__(self, "stall_limit", int(self.stall_limit))


def intent_dice(mask: np.ndarray, intent: np.ndarray) -> float:
    """Dice of the mask against the person's intent (1 when both are empty)."""
    a = np.count_nonzero(mask)
    b = np.count_nonzero(intent)
    if a + b == 0:
        return 1.0
    return 2.0 * np.count_nonzero(mask & intent) / (a + b)


def perceived_quality(mask: np.ndarray, intent: np.ndarray, quality_sd: float, rng: np.random.Generator) -> float:
    """``Dice(mask, intent) + N(0, quality_sd)``, clipped to [0, 1]; always one normal draw."""
    e = float(rng.standard_normal()) * float(quality_sd)
    return float(np.clip(intent_dice(mask, intent) + e, 0.0, 1.0))


class PerceivedErrors(NamedTuple):
    """What the person sees wrong with the mask (all ``bool`` ``(H, W)`` or floats in mm / mm²).

    ``missing``/``leak``: the largest connected part of intent-minus-mask / mask-minus-intent
    deep enough to act on (empty if none); ``missing_depth_mm``/``leak_depth_mm``: their maximum
    depth; ``missing_area_mm2``/``leak_area_mm2``: the total areas of everything missing / leaking.
    """

    missing: np.ndarray
    leak: np.ndarray
    missing_depth_mm: float
    leak_depth_mm: float
    missing_area_mm2: float
    leak_area_mm2: float


def _largest_deep_part(region: np.ndarray, spacing_yx, min_depth_mm: float) -> tuple[np.ndarray, float]:
    if not region.any():
        return np.zeros_like(region), 0.0
    lab, n = ndimage.label(region, np.ones((3, 3), bool))
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    best = lab == int(np.argmax(sizes))
    depth = float(depth_mm(best, spacing_yx).max())
    if depth < min_depth_mm:  # the largest part is a sliver; a deeper smaller part may still be worth it
        d = depth_mm(region, spacing_yx)
        if float(d.max()) < min_depth_mm:
            return np.zeros_like(region), float(d.max())
        best = lab == int(lab.ravel()[int(np.argmax(d))])
        depth = float(depth_mm(best, spacing_yx).max())
    return best, depth


def perceived_errors(mask: np.ndarray, intent: np.ndarray, spacing_yx, min_error_mm: float) -> PerceivedErrors:
    """The missing part and the leak a person would act on (see :class:`PerceivedErrors`)."""
    mask = np.asarray(mask, bool)
    intent = np.asarray(intent, bool)
    px = float(spacing_yx[0]) * float(spacing_yx[1])
    miss_all = intent & ~mask
    leak_all = mask & ~intent
    miss, dm = _largest_deep_part(miss_all, spacing_yx, min_error_mm)
    leak, dl = _largest_deep_part(leak_all, spacing_yx, min_error_mm)
    return PerceivedErrors(miss, leak, dm, dl, float(miss_all.sum()) * px, float(leak_all.sum()) * px)


def looks_worse(q_before: float, q_after: float, params: JudgementParams) -> bool:
    """True when the last prompt made the mask look worse by more than ``undo_margin``."""
    return float(q_after) < float(q_before) - params.undo_margin


def decide(
    q: float, n_actions: int, seconds: float, params: JudgementParams, stalled: int = 0, best_value: float | None = None
) -> Literal["accept", "give_up", "go_on"]:
    """Accept a good-looking mask; give up when patience, the time budget or the hope of improving
    (``stalled`` prompts in a row without improvement, or an expected gain ``(1 - q) * best_value``
    below ``min_expected_gain``) has run out; else go on.

    >>> decide(0.95, 3, 20.0, JudgementParams())
    'accept'
    >>> decide(0.5, 10, 20.0, JudgementParams(patience=10))
    'give_up'
    """
    if q >= params.accept_threshold:
        return "accept"
    if n_actions >= params.patience or seconds >= params.time_budget_s or stalled >= params.stall_limit:
        return "give_up"
    if best_value is not None and (1.0 - q) * best_value < params.min_expected_gain:
        return "give_up"
    return "go_on"
