"""Fuzz: thousands of random valid actions (seeded), raw and typed, never an undocumented exception."""

import gymnasium as gym
import numpy as np
import pytest

import hiseg_sim  # noqa: F401
from hiseg_sim.env import ENV_IDS
from hiseg_sim.env.actions import BoxAction, PointAction, from_array
from hiseg_sim.env.core import INVALID_CODES
from tests.env_support import EnvStubSegmenter, synthetic_cases

N_STEPS = 2500


def _typed_random(rng, space):
    """A typed action with sub-pixel coordinates, biased towards the viewport's edges."""
    S = int(space.nvec[1])
    a = from_array(space.sample())
    def coord():
        return float(rng.choice([0.0, S - 1.0, rng.uniform(0, S - 1), rng.uniform(0, 1.5), rng.uniform(S - 2.5, S - 1)]))
    if isinstance(a, PointAction):
        return PointAction(coord(), coord(), a.positive)
    if isinstance(a, BoxAction):
        x0, y0 = coord(), coord()
        if rng.random() < 0.2:  # degenerate drags
            return BoxAction(x0, y0, min(S - 1.0, x0 + rng.uniform(0, 0.99)), coord())
        return BoxAction(x0, y0, coord(), coord())
    return a


@pytest.mark.parametrize("env_id", list(ENV_IDS), ids=list(ENV_IDS))
def test_fuzz(env_id):
    env = gym.make(env_id, cases=synthetic_cases(), segmenter=EnvStubSegmenter(), time_penalty=0.001)
    env.action_space.seed(11)
    rng = np.random.default_rng(11)
    obs, info = env.reset(seed=11)
    seen_codes, episodes = set(), 0
    for i in range(N_STEPS):
        action = env.action_space.sample() if i % 2 else _typed_random(rng, env.action_space)
        obs, reward, term, trunc, info = env.step(action)
        assert env.observation_space.contains(obs)
        assert np.isfinite(reward) and 0.0 <= info["dice"] <= 1.0 and info["seconds"] >= 0
        code = info["invalid_action"]
        assert code == "" or code in INVALID_CODES
        seen_codes.add(code)
        if term or trunc:
            episodes += 1
            obs, info = env.reset()
    assert episodes > 10
    assert {"", "nothing_to_undo", "reversed_box", "zero_area_box", "edge_point"} <= seen_codes
    env.close()
