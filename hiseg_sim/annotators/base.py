"""One protocol for everything that acts in the environments: simulated people, click robots and
trained policies.

An episode runs as::

    knowledge = make_knowledge(env, reads_ground_truth=agent.reads_ground_truth, intent=...)
    agent.begin_case(knowledge, rng)
    obs, info = env.reset(...)          # (the harness resets the env first; see evaluate)
    while not done:
        action = agent.act(obs, info)    # a typed env action (PointAction, BoxAction, Undo, Accept, …)
        obs, reward, term, trunc, info = env.step(action)
    agent.end_case(feedback)             # learning across cases (feedback: None, or what a teacher shows)

The ground-truth rule (a person sees the image, never the reference) is enforced here: :class:`Knowledge` — what a
person may know of a case — has no ground-truth field. It holds the viewport image they see, its
pixel size, and their *own* idea of the nodule (``intent``), which the perception model made
before the episode. Only agents that declare ``reads_ground_truth = True`` (the click robots of
the literature, which are defined by reading it) are handed :class:`RobotKnowledge`, which adds
``gt``. The harness decides which one an agent gets from that flag; a test checks that no
behaviour model declares it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Annotator", "DelegatingAnnotator", "Feedback", "Knowledge", "RobotKnowledge", "SB3PolicyAdapter"]


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


class Annotator:
    """Anything that acts in the environments: a simulated person, a click robot, a trained policy.

    Subclass it and override :meth:`act`; every other hook has a default that does nothing, so an
    annotator states what it needs by what it overrides. The harness
    (:func:`hiseg_sim.annotators.harness.run_episode`) calls, per case::

        params = annotator.perception_params()      # not None: the perception step makes its intent
        tm = annotator.time_model_for(spacing_yx, env_time_model)   # not None: charge with it
        annotator.begin_case(knowledge, rng)
        while not done:
            action = annotator.act(obs, info)        # a typed env action
            ... annotator.perceived_quality          # read after each act (None: not judged)
        summary.update(annotator.episode_info())
        annotator.end_case(feedback)                 # None, or what a teacher showed

    Attributes:
        name: how traces and reports call it.
        reads_ground_truth: True only for the literature's robots, which are defined by reading it;
            they get :class:`RobotKnowledge`. Everything else gets :class:`Knowledge`.
        perceived_quality: how good the mask in the last observation looked to it, ``[0, 1]``.
    """

    name: str = "annotator"
    reads_ground_truth: bool = False
    perceived_quality: float | None = None

    def perception_params(self) -> Any | None:
        """The :class:`~hiseg_sim.annotators.behaviour.perception.PerceptionParams` of a person's
        perception step, or ``None`` (no intent is drawn)."""
        return None

    def time_model_for(self, spacing_yx: tuple[float, float], base: Any) -> Any | None:
        """The :class:`~hiseg_sim.timing.TimeModel` the env charges this annotator with on a case
        of in-plane pixel size ``spacing_yx`` (mm), given the env's ``base``; ``None`` keeps ``base``."""
        return None

    def begin_case(self, knowledge: Knowledge, rng: np.random.Generator) -> None:
        """A new case: what may be known of it, and the generator for this episode's own draws."""

    def act(self, obs: dict, info: dict) -> Any:
        """The next action, given the env's observation and info."""
        raise NotImplementedError(f"{type(self).__name__} must implement act(obs, info)")

    def end_case(self, feedback: Feedback | None) -> None:
        """The case is over; ``feedback`` is what a teacher showed (``None``: nothing)."""

    def episode_info(self) -> dict:
        """Extra keys for the episode summary (e.g. ``gave_up``, ``opening``)."""
        return {}


class DelegatingAnnotator(Annotator):
    """An annotator that hands every hook to ``inner``: the base of wrappers that change one thing
    (a teacher who adds a worked example to the feedback, a spy in a test)."""

    def __init__(self, inner: Annotator) -> None:
        if not isinstance(inner, Annotator):
            raise TypeError(f"{type(inner).__name__} is not an Annotator")
        self.inner = inner

    @property  # type: ignore[override]
    def name(self) -> str:
        return self.inner.name

    @property  # type: ignore[override]
    def reads_ground_truth(self) -> bool:
        return self.inner.reads_ground_truth

    @property  # type: ignore[override]
    def perceived_quality(self) -> float | None:
        return self.inner.perceived_quality

    def perception_params(self) -> Any | None:
        return self.inner.perception_params()

    def time_model_for(self, spacing_yx: tuple[float, float], base: Any) -> Any | None:
        return self.inner.time_model_for(spacing_yx, base)

    def begin_case(self, knowledge: Knowledge, rng: np.random.Generator) -> None:
        self.inner.begin_case(knowledge, rng)

    def act(self, obs: dict, info: dict) -> Any:
        return self.inner.act(obs, info)

    def end_case(self, feedback: Feedback | None) -> None:
        self.inner.end_case(feedback)

    def episode_info(self) -> dict:
        return self.inner.episode_info()


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
