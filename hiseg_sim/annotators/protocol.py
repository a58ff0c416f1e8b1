"""One protocol for everything that acts in the environments: simulated people, click robots and
trained policies.

An episode runs as::

    knowledge = make_knowledge(env, reads_ground_truth=agent.reads_ground_truth, intent=...)
    agent.reset(knowledge, rng)
    obs, info = env.reset(...)          # (the harness resets the env first; see evaluate)
    while not done:
        action = agent.act(obs, info)    # a typed env action (PointAction, BoxAction, Undo, Accept, …)
        obs, reward, term, trunc, info = env.step(action)
    agent.end_case(feedback)             # learning across cases (feedback: None, or what a teacher shows)

The ground-truth rule of ``../shared/DESIGN.md`` is enforced here: :class:`Knowledge` — what a
person may know of a case — has no ground-truth field. It holds the viewport image they see, its
pixel size, and their *own* idea of the nodule (``intent``), which the perception model made
before the episode. Only agents that declare ``reads_ground_truth = True`` (the click robots of
the literature, which are defined by reading it) are handed :class:`RobotKnowledge`, which adds
``gt``. The harness decides which one an agent gets from that flag; a test checks that no
behaviour model declares it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Knowledge", "RobotKnowledge", "Feedback", "Annotator", "SB3PolicyAdapter"]


@dataclass(frozen=True)
class Knowledge:
    """What a person may know of the case in front of them.

    Attributes:
        case_id: the case's name (for traces only; decision code must not branch on it).
        image_hu: the viewport in HU, ``(H, W)`` in 2-D or ``(n_slices, H, W)`` in 3-D.
        spacing_mm: pixel size ``(y, x)`` in mm (3-D: ``(z, y, x)``).
        intent: the person's own idea of the nodule, ``bool`` of ``image_hu``'s shape, made by the
            perception model (noisy, possibly with semantic errors). ``None`` for agents that
            do without (a policy that sees only observations).
        three_d: whether the environment is the 3-D one.
        start_slice: the slab index the episode starts on (3-D).
    """

    case_id: str
    image_hu: np.ndarray
    spacing_mm: tuple[float, ...]
    intent: np.ndarray | None = None
    three_d: bool = False
    start_slice: int = 0
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class RobotKnowledge(Knowledge):
    """:class:`Knowledge` plus the ground truth in viewport coordinates, for click robots only."""

    gt: np.ndarray | None = None


@dataclass(frozen=True)
class Feedback:
    """What a teacher shows after a practice case (training protocols): the Dice the env scored
    and, with worked examples, the expert's mask. ``None`` is passed when nobody gives feedback."""

    dice: float | None = None
    seconds: float | None = None
    expert_mask: np.ndarray | None = None


@runtime_checkable
class Annotator(Protocol):
    """Anything that acts in the environments."""

    name: str
    reads_ground_truth: bool

    def reset(self, knowledge: Knowledge, rng: np.random.Generator) -> None: ...

    def act(self, obs: dict, info: dict) -> Any: ...

    def end_case(self, feedback: Feedback | None) -> None: ...


class SB3PolicyAdapter:
    """Give any :class:`Annotator` the shape of SB3's ``predict(obs, state, episode_start,
    deterministic) -> (actions, state)`` for a single (non-vector) env, so tools built for SB3
    policies can run it. The annotator's typed actions are encoded to the env's ``MultiDiscrete``."""

    def __init__(self, annotator: Annotator, encode_action) -> None:
        self.annotator = annotator
        self.encode_action = encode_action
        self._last_info: dict = {}

    def set_info(self, info: dict) -> None:
        self._last_info = info

    def predict(self, observation, state=None, episode_start=None, deterministic: bool = True):
        action = self.annotator.act(observation, self._last_info)
        return np.asarray(self.encode_action(action)), state
