"""The policy env on Ray RLlib: an algorithm builds on it and runs one small training iteration.

Skipped when ``ray.rllib`` cannot be imported (install the ``dev`` or ``rllib`` extra), except under
CI (``$CI`` set), where the ``dev`` extra provides it and a failed import is a failure."""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("CI"):
    import ray.rllib  # noqa: F401
else:
    pytest.importorskip("ray.rllib")

CONFIG = {
    "cases": "stub_synthetic_cases",
    "segmenter": "stub_env",
    "viewport_px": 32,
    "grid": 16,
    "time_penalty": 0.005,
}


def test_env_creator_flattens_the_policy_view():
    from hiseg_sim.policies.rllib import env_creator

    env = env_creator(CONFIG)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (5 * 32 * 32 + 5,) and env.observation_space.contains(obs)
    assert env.action_space.nvec.tolist() == [5, 16, 16, 16, 16]
    obs, r, term, trunc, info = env.step(np.array([2, 4, 4, 11, 11]))
    assert env.observation_space.contains(obs) and info["n_prompts"] == 1


def test_rllib_ppo_builds_and_trains_one_iteration():
    import ray

    from hiseg_sim.policies.rllib import ppo_config

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        algo = ppo_config(
            CONFIG, num_env_runners=0, hidden=(16,), train_batch_size=64, minibatch_size=32, num_epochs=1
        ).build_algo()
        try:
            res = algo.train()
        finally:
            algo.stop()
    finally:
        ray.shutdown()
    assert res["training_iteration"] == 1
    assert res["env_runners"]["num_env_steps_sampled_lifetime"] >= 64
    assert np.isfinite(res["env_runners"]["episode_return_mean"])
