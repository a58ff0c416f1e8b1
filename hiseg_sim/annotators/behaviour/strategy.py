"""Strategy: which prompt a person tries next, chosen by what has worked for them so far.

Openings (the first prompts on an empty slice):

=============  ==========================================================================
opening        prompts                                preference (softmax over these)
=============  ==========================================================================
``point``      a positive click at the nodule's centre   ``V[point]``
``box``        a box around the nodule                   ``V[box]``
``box_point``  a box, then a centre click at once        ``(V[box] + V[point]) / 2 + combo_bias``
=============  ==========================================================================

Corrections (once a mask is there and it does not look good enough):

- ``point``: a click in the largest part the person thinks is wrong: *positive* in the largest
  missing part (intent minus mask) or *negative* in the largest leak (mask minus intent),
  whichever is larger in area (a person notices area, not the depth a click robot measures),
  aimed inside it (:func:`hiseg_sim.annotators.behaviour.execution.aim_point`);
- ``box``: draw a first box (when only clicks were given so far);
- ``rebox``: redraw the box ``box_step_mm`` tighter per side when the leak is larger than the
  missing part, looser otherwise.

Undo is not chosen here: the judgement takes back a prompt that made things look worse
(:func:`hiseg_sim.annotators.behaviour.judgement.looks_worse`).

``V`` are the person's values of the prompt types (:mod:`hiseg_sim.annotators.behaviour.learning`); the
choice is softmax with the group's ``temperature`` and ``epsilon`` exploration. Clicks are always
available only when there is something to click on; a box is always available.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hiseg_sim.annotators.behaviour.judgement import PerceivedErrors
from hiseg_sim.annotators.behaviour.learning import PromptValues, softmax_choice

__all__ = [
    "OPENINGS",
    "StrategyParams",
    "available_corrections",
    "choose_correction",
    "choose_opening",
    "correction_click",
    "rebox_step_mm",
]

#: Opening name -> the prompt types it makes, in order.
OPENINGS: dict[str, tuple[str, ...]] = {"point": ("point",), "box": ("box",), "box_point": ("box", "point")}


@dataclass(frozen=True)
class StrategyParams:
    """A group's strategy: its starting beliefs and how it chooses.

    Attributes:
        prior_point, prior_box, prior_rebox: starting values (relative gains they expect) of a
            click, a first box, a redrawn box.
        combo_bias: extra preference for opening with box + click over the average of the two.
        temperature: softmax temperature over the preferences (0 = always the best-valued).
        epsilon: probability of a uniformly random choice (exploration).
        box_step_mm: how much tighter or looser per side a redrawn box is made.
    """

    prior_point: float = 0.4
    prior_box: float = 0.6
    prior_rebox: float = 0.2
    combo_bias: float = 0.0
    temperature: float = 0.1
    epsilon: float = 0.05
    box_step_mm: float = 1.0

    def __post_init__(self) -> None:
        for name in ("prior_point", "prior_box", "prior_rebox", "combo_bias"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and -1.0 <= v <= 1.0):
                raise ValueError(f"StrategyParams.{name} must be in [-1, 1]; got {v}")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise ValueError(f"StrategyParams.temperature must be >= 0; got {self.temperature}")
        if not 0.0 <= float(self.epsilon) <= 1.0:
            raise ValueError(f"StrategyParams.epsilon must be in [0, 1]; got {self.epsilon}")
        if not (math.isfinite(self.box_step_mm) and self.box_step_mm > 0):
            raise ValueError(f"StrategyParams.box_step_mm must be > 0 mm; got {self.box_step_mm}")

    def priors(self) -> dict[str, float]:
        return {"point": self.prior_point, "box": self.prior_box, "rebox": self.prior_rebox}


def choose_opening(values: PromptValues, params: StrategyParams, rng: np.random.Generator) -> str:
    """The opening's name (a key of :data:`OPENINGS`); two uniform draws."""
    prefs = {
        "point": values["point"],
        "box": values["box"],
        "box_point": 0.5 * (values["box"] + values["point"]) + params.combo_bias,
    }
    return softmax_choice(prefs, params.temperature, params.epsilon, rng)


def available_corrections(errors: PerceivedErrors, has_box: bool) -> list[str]:
    """The corrections on offer: ``"point"`` when something is visibly missing or leaking, then
    ``"rebox"`` when a box is there, else ``"box"``."""
    out = ["point"] if (errors.missing.any() or errors.leak.any()) else []
    return out + (["rebox"] if has_box else ["box"])


def choose_correction(
    values: PromptValues, params: StrategyParams, errors: PerceivedErrors, has_box: bool, rng: np.random.Generator
) -> str:
    """``"point"``, ``"box"`` or ``"rebox"`` (see the module docstring); two uniform draws."""
    prefs = {k: values[k] for k in available_corrections(errors, has_box)}
    return softmax_choice(prefs, params.temperature, params.epsilon, rng)


def correction_click(errors: PerceivedErrors) -> tuple[np.ndarray, bool]:
    """The region to click in and the click's sign: the larger (by area) of the largest missing part
    (positive) and the largest leak (negative). Raises when neither is there."""
    a_miss, a_leak = int(errors.missing.sum()), int(errors.leak.sum())
    if a_miss == 0 and a_leak == 0:
        raise ValueError("nothing to click on: no missing part and no leak deep enough to act on")
    if a_miss >= a_leak:
        return errors.missing, True
    return errors.leak, False


def rebox_step_mm(errors: PerceivedErrors, params: StrategyParams) -> float:
    """Change of the box margin per side: ``-box_step_mm`` (tighter) when more leaks than is missing,
    else ``+box_step_mm`` (looser)."""
    return -params.box_step_mm if errors.leak_area_mm2 > errors.missing_area_mm2 else params.box_step_mm
