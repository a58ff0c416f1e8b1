"""A person's eye for a learned hand: the perception step of a profile as an observation channel.

A simulated person knows which nodule to outline because the perception model turns the case's
reference into their *intent* (their own noisy idea of the nodule, with their group's semantic
errors: a vessel taken in, a missed rim, the wrong spot). A policy that sees only the image must
also find the nodule, which on one slice is often ambiguous (a small nodule and a vessel cut
across look alike). To compare *prompting* with prompting, :class:`PerceivedIntent` gives a policy
the same information a person of ``profile`` has: the intent drawn by the harness's perception
step (:func:`hiseg_sim.annotators.harness.make_knowledge`), as an extra ``"intent"`` channel
(``uint8`` 0/255, ``(1, S, S)``). The policy never sees the ground truth; the wrapper reads it
exactly where the harness does, for the perception step only.

In a study, :class:`~hiseg_sim.policies.store.PolicyAnnotator` of a policy whose card names a
``perception`` profile declares ``perception_params()``, so the harness draws its intent like any
person's and the policy puts it in the same channel.
"""

from __future__ import annotations

from functools import cache

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hiseg_sim.annotators.base import Annotator
from hiseg_sim.seeding import keyed_rng

__all__ = ["PerceivedIntent", "intent_channel", "perception_params_of"]


@cache
def perception_params_of(profile: str):
    """The perception parameters of a fresh person of ``profile`` (a registry name; read once per
    process: the profile files are data, not state)."""
    from hiseg_sim.annotators.registry import build_annotator

    params = build_annotator(profile).perception_params()
    if params is None:
        raise ValueError(
            f"{profile!r} has no perception model (robots and policies have none); "
            "give a behaviour profile such as 'junior_medical_student'"
        )
    return params


def intent_channel(intent: np.ndarray | None, size: int) -> np.ndarray:
    """``intent`` (``bool (S, S)``) as the ``uint8 (1, S, S)`` channel; zeros when ``None``."""
    if intent is None:
        return np.zeros((1, size, size), np.uint8)
    m = np.asarray(intent, bool)
    if m.shape != (size, size):
        raise ValueError(f"intent has shape {m.shape}; the viewport is {(size, size)} (2-D envs only)")
    return (m.astype(np.uint8) * 255)[None]


class _Perceiver(Annotator):
    """The minimum the harness's perception step needs: ``perception_params()``."""

    def __init__(self, params):
        self._params = params

    def perception_params(self):
        return self._params


class PerceivedIntent(gym.Wrapper):
    """Add ``obs["intent"]``: the intent of a person of ``profile``, drawn at each reset (2-D env).

    With a reset ``seed`` the draw uses the harness's perception stream for ``(seed, case)``
    (:func:`~hiseg_sim.seeding.episode_streams`), so a demonstration recorded here sees the
    intent a study would give; without one (vectorised training) a generator seeded on the first
    reset carries on.
    """

    def __init__(self, env: gym.Env, profile: str = "junior_medical_student"):
        super().__init__(env)
        u = env.unwrapped
        if bool(getattr(u, "three_d", False)):
            raise ValueError("PerceivedIntent is for the 2-D environment")
        self.profile = str(profile)
        self.size = int(u.size)
        self._perceiver = _Perceiver(perception_params_of(self.profile))
        self._rng: np.random.Generator | None = None
        self._intent = np.zeros((1, self.size, self.size), np.uint8)
        self.observation_space = spaces.Dict(
            {**env.observation_space.spaces, "intent": spaces.Box(0, 255, (1, self.size, self.size), np.uint8)}
        )

    def reset(self, *, seed=None, options=None):
        from hiseg_sim.annotators.harness import make_knowledge
        from hiseg_sim.seeding import episode_streams

        obs, info = self.env.reset(seed=seed, options=options)
        case_id = self.env.unwrapped.case.case_id
        if seed is not None:
            rng = episode_streams(int(seed), case_id)[0]
            self._rng = keyed_rng(seed, 17)
        else:
            if self._rng is None:
                self._rng = np.random.default_rng(17)
            rng = np.random.default_rng(int(self._rng.integers(2**63)))
        k = make_knowledge(self.env, self._perceiver, rng)
        self._intent = intent_channel(k.intent, self.size)
        return {**obs, "intent": self._intent}, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return {**obs, "intent": self._intent}, reward, terminated, truncated, info
