"""Learning by trial and error: what a person believes each prompt type is worth, and how it changes.

A simulated person keeps one *value* per prompt type: ``"point"`` (a click), ``"box"`` (the first
box on a slice, whether it opens the case or comes after clicks) and ``"rebox"`` (redrawing an
existing box tighter or looser): how much of the remaining error, as they see it, a prompt of that
type usually fixes. Every prompt they make is
judged (:mod:`hiseg_sim.annotators.behaviour.judgement`) and its *relative gain*

    g = (q_after - q_before) / (1 - q_before)          (q: perceived quality, 0 ... 1)

of what the prompt left them with (0 when they judged it worse and took it back: a person who
can undo risks only the time of a failed try) moves the value of its type by
``learning_rate * (g - value)`` (an exponential recency-weighted
average, the incremental rule of Sutton & Barto, ch. 2). The values live on the person, so they
carry from one case to the next: within a case (the third failed click lowers the value of
clicking before the fourth is chosen) and across cases (a person who found that a box rescued a
poor point mask opens the next case with a box).

The gain is relative so one scale serves openings and corrections: an opening starts from an empty
mask (``q_before = 0``, so ``g = q_after``), a correction from a mask that is already partly right.

With a teacher's feedback at the end of a case (:class:`~hiseg_sim.annotators.base.Feedback`,
the Dice the environment scored), the prompt types that made the *final* mask (the prompts still
standing after any undo) move toward that Dice by ``feedback_rate``: the person learns what the
work they kept was really worth, not only what it looked like to them.

A score tells the person how far their final mask was from the expert's, not where or why: it
moves the values of the prompt types that made it (above) and nothing in their perception. From a
score alone one cannot tell an outline too wide from one too tight, a vessel taken in from a rim
left out, or the tool's fault from one's own.

Worked examples (a teacher shows the expert's mask after a case) teach what the nodule is, and only
through what they show: the person compares the example with what they meant to outline on the
same image (:func:`hiseg_sim.annotators.behaviour.examples.read_example`) and each kind of error
the comparison shows moves the perception parameter it belongs to, in proportion to how clearly it
shows (clarity ``c_k`` in [0, 1]) and to how far the example can be read as an outline of
something in the image (credibility ``r``), :func:`learn_from_example`:

- a semantic error (``wrong_spot``, ``vessel``, ``ggo_rim``, ``pleura``): its probability
  ``p -> p (1 - semantic_rate r c_k)``: a concept (an attached vessel is not nodule) corrected by a
  counter-example;
- the edge's wander: ``edge_sd_scale -> 1 + (edge_sd_scale - 1)(1 - perception_rate r c_edge)``: a
  novice's excess over the radiologist's boundary noise shrinks, slowly (a perceptual skill);
- the edge's offset (drawn too wide or too tight by ``b`` mm beyond half a pixel):
  ``bias_mm -> bias_mm - perception_rate r b``.

An example on which the person made no error of a kind teaches nothing about that kind; one that
follows nothing in the image (a mask of the right area placed anywhere) teaches (nearly) nothing.

Choices are softmax over the values with a temperature, plus epsilon-random exploration (both
per group): :func:`softmax_choice`.

Nothing here knows the model: the values start at the group's *priors* (novices think clicking
works, as in click-based tools; experts who know LiteMedSAM may start with a box) and only the
model's responses move them. That is how a simulated novice finds out that LiteMedSAM wants a box.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, replace

import numpy as np

__all__ = [
    "PROMPT_TYPES",
    "LearningParams",
    "PromptValues",
    "SEMANTIC_PARAMS",
    "learn_from_example",
    "relative_gain",
    "softmax_choice",
]

#: The prompt types a person holds values for.
PROMPT_TYPES = ("point", "box", "rebox")

#: Each semantic error a worked example can show, and the perception probability it belongs to.
SEMANTIC_PARAMS = {
    "wrong_spot": "p_wrong_spot",
    "vessel": "p_include_vessel",
    "ggo_rim": "p_miss_ggo_rim",
    "pleura": "p_pleura_error",
}

#: Floor of ``1 - q_before`` in :func:`relative_gain`, so a near-perfect mask cannot blow a gain up.
_MIN_ROOM = 0.05


@dataclass(frozen=True)
class LearningParams:
    """How fast a group learns (each in [0, 1]).

    Attributes:
        learning_rate: step size of the value update from a perceived-quality gain.
        feedback_rate: step size of the update from a teacher's Dice at the end of a case.
        perception_rate: share of the excess edge wander (and of the edge offset) a worked example
            removes when it shows it fully clearly.
        semantic_rate: share of a semantic error's probability a worked example removes when it
            shows the person making that error fully clearly.
    """

    learning_rate: float = 0.2
    feedback_rate: float = 0.2
    perception_rate: float = 0.0
    semantic_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("learning_rate", "feedback_rate", "perception_rate", "semantic_rate"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"LearningParams.{name} must be in [0, 1]; got {v}")
            object.__setattr__(self, name, v)


def relative_gain(q_before: float, q_after: float) -> float:
    """Share of the remaining (perceived) error a prompt fixed, clipped to ``[-1, 1]``.

    >>> relative_gain(0.0, 0.4)
    0.4
    >>> round(relative_gain(0.5, 0.75), 3)
    0.5
    >>> relative_gain(0.8, 0.4)
    -1.0
    """
    room = max(1.0 - float(q_before), _MIN_ROOM)
    return float(np.clip((float(q_after) - float(q_before)) / room, -1.0, 1.0))


class PromptValues:
    """The values a person holds for each prompt type, with how often each was tried.

    Args:
        priors: starting value per prompt type (keys: :data:`PROMPT_TYPES`).
    """

    def __init__(self, priors: Mapping[str, float]):
        missing = [k for k in PROMPT_TYPES if k not in priors]
        if missing:
            raise ValueError(f"priors lack prompt type(s) {missing}; need all of {PROMPT_TYPES}")
        self.values: dict[str, float] = {k: float(priors[k]) for k in PROMPT_TYPES}
        self.priors: dict[str, float] = dict(self.values)
        self.counts: dict[str, int] = {k: 0 for k in PROMPT_TYPES}

    def __getitem__(self, kind: str) -> float:
        return self.values[kind]

    def update(self, kind: str, target: float, rate: float) -> float:
        """Move the value of ``kind`` toward ``target`` by ``rate``; return the new value."""
        if kind not in self.values:
            raise KeyError(f"unknown prompt type {kind!r}; known: {PROMPT_TYPES}")
        v = self.values[kind]
        self.values[kind] = v + float(rate) * (float(target) - v)
        self.counts[kind] += 1
        return self.values[kind]

    def learn_from_feedback(self, kinds: Iterable[str], dice: float, rate: float) -> None:
        """A teacher's Dice for the final mask: each prompt type in ``kinds`` moves toward it."""
        for k in sorted(set(kinds)):
            v = self.values[k]
            self.values[k] = v + float(rate) * (float(dice) - v)

    def snapshot(self) -> dict[str, float]:
        return dict(self.values)

    def __repr__(self) -> str:
        return "PromptValues(" + ", ".join(f"{k}={v:.3f}" for k, v in self.values.items()) + ")"


def softmax_choice(
    preferences: Mapping[str, float], temperature: float, epsilon: float, rng: np.random.Generator
) -> str:
    """Pick a key: with probability ``epsilon`` uniformly, else by softmax of ``preferences / temperature``.

    One uniform draw decides exploration and one more the pick, always (a fixed random stream).
    ``temperature`` 0 means greedy (ties: the first key in order).

    >>> softmax_choice({"point": 0.2, "box": 0.8}, 0.0, 0.0, np.random.default_rng(0))
    'box'
    """
    keys = list(preferences)
    if not keys:
        raise ValueError("nothing to choose from")
    u_explore, u_pick = rng.random(2)
    if u_explore < epsilon:
        return keys[min(int(u_pick * len(keys)), len(keys) - 1)]
    prefs = np.array([preferences[k] for k in keys], dtype=np.float64)
    if temperature <= 0:
        return keys[int(np.argmax(prefs))]
    z = (prefs - prefs.max()) / float(temperature)
    p = np.exp(z)
    p /= p.sum()
    idx = int(np.searchsorted(np.cumsum(p), u_pick, side="right"))
    return keys[min(idx, len(keys) - 1)]


def learn_from_example(spec, lessons, params: LearningParams):
    """A person's perception spec after studying one worked example (see the module docstring).

    ``spec``: their :class:`~hiseg_sim.annotators.behaviour.profiles.PerceptionSpec`; ``lessons``:
    :class:`~hiseg_sim.annotators.behaviour.examples.Lessons`; returns a new spec (``spec`` itself
    when nothing moves).
    """
    r = float(np.clip(lessons.credibility, 0.0, 1.0))
    if r == 0.0 or (params.semantic_rate == 0.0 and params.perception_rate == 0.0):
        return spec
    now, shown = asdict(spec), asdict(lessons)
    changes = {}
    for kind, name in SEMANTIC_PARAMS.items():
        step = params.semantic_rate * r * float(np.clip(shown[kind], 0.0, 1.0))
        if step > 0 and now[name] > 0:
            changes[name] = now[name] * (1.0 - step)
    step = params.perception_rate * r
    if step > 0 and lessons.edge > 0 and spec.edge_sd_scale > 1.0:
        changes["edge_sd_scale"] = 1.0 + (spec.edge_sd_scale - 1.0) * (1.0 - step * float(min(lessons.edge, 1.0)))
    if step > 0 and lessons.bias_mm != 0.0:
        changes["bias_mm"] = spec.bias_mm - step * float(lessons.bias_mm)
    return replace(spec, **changes) if changes else spec
