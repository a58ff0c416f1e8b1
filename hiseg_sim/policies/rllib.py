"""The same environment on Ray RLlib, for when one machine is not enough.

RLlib builds environments from a registered creator and an ``env_config`` dict, in as many
env-runner processes (or machines) as it is given. :func:`env_creator` makes the env exactly as
``train-policy`` does (the registered NoduleSeg env, :class:`~hiseg_sim.policies.spaces.PolicyView`)
and flattens the ``Dict`` observation into one ``float32`` vector, which RLlib's default model
takes as is; :func:`ppo_config` returns a ``PPOConfig`` on it. Point ``cache_dir`` at storage
every runner sees (a shared file system) and each slice is encoded once across all of them.

>>> # from hiseg_sim.policies.rllib import ppo_config
>>> # algo = ppo_config({"cache_dir": "/shared/emb"}, num_env_runners=8).build_algo()
>>> # for _ in range(100): print(algo.train()["env_runners"]["episode_return_mean"])

``env_config`` keys: ``env_id`` (default ``hiseg_sim/NoduleSeg2D-v0``), ``cases`` (cohort name or
registered case source, default ``"default"``), ``segmenter`` (registry name), ``grid`` (48), ``cache_dir``, and any keyword of the env
(``time_penalty``, ``viewport_px`` ...).
"""

from __future__ import annotations

__all__ = ["ENV_NAME", "env_creator", "ppo_config", "register"]

ENV_NAME = "hiseg_sim_policy_view"


def env_creator(env_config: dict | None = None):
    """One flattened-observation env of ``env_config`` (see the module docstring)."""
    import gymnasium as gym
    from gymnasium.wrappers import FlattenObservation

    import hiseg_sim  # noqa: F401  (registers the ids in a runner process)
    from hiseg_sim.policies.spaces import PolicyView
    from hiseg_sim.policies.train import CasesFactory, SegmenterFactory

    kw = dict(env_config or {})
    env_id = kw.pop("env_id", "hiseg_sim/NoduleSeg2D-v0")
    grid = int(kw.pop("grid", 48))
    cases = kw.pop("cases", "default")
    seg = SegmenterFactory(kw.pop("segmenter", "litemedsam"), kw.get("cache_dir"))
    env = gym.make(env_id, cases=CasesFactory(cases), segmenter=seg, **kw)
    return FlattenObservation(PolicyView(env, grid=grid))


def register() -> str:
    """Register :func:`env_creator` with Ray Tune under :data:`ENV_NAME`; returns the name."""
    from ray.tune.registry import register_env

    register_env(ENV_NAME, env_creator)
    return ENV_NAME


def ppo_config(
    env_config: dict | None = None,
    num_env_runners: int = 2,
    hidden: tuple[int, ...] = (256, 128),
    train_batch_size: int = 4000,
    minibatch_size: int = 128,
    num_epochs: int = 4,
    lr: float = 1e-4,
):
    """An RLlib ``PPOConfig`` on the registered env (RLlib's new API stack)."""
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    name = register()
    return (
        PPOConfig()
        .environment(name, env_config=dict(env_config or {}))
        .env_runners(num_env_runners=num_env_runners)
        .training(
            train_batch_size_per_learner=train_batch_size, minibatch_size=minibatch_size, num_epochs=num_epochs, lr=lr
        )
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(hidden)))
    )
