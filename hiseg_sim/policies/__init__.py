"""Learned prompting policies: behaviour cloning from simulated experts, PPO with a time price, and
saved policies that act as annotators (``agents/policies/<name>/``).

Needs the optional extra ``rl`` (stable-baselines3). Modules: :mod:`~hiseg_sim.policies.spaces`
(what the policy sees and does), :mod:`~hiseg_sim.policies.network` (the CNN),
:mod:`~hiseg_sim.policies.demos` and :mod:`~hiseg_sim.policies.bc` (imitation),
:mod:`~hiseg_sim.policies.train` (the training run), :mod:`~hiseg_sim.policies.store` (saved
policies, :class:`~hiseg_sim.policies.store.PolicyAnnotator`), :mod:`~hiseg_sim.policies.card`
(model cards, training curve), :mod:`~hiseg_sim.policies.evaluation` (beside the people, at equal
simulated time), :mod:`~hiseg_sim.policies.cli` (``hiseg-sim train-policy``),
:mod:`~hiseg_sim.policies.rllib` (the same env on Ray RLlib).

Importing this package imports neither torch nor stable-baselines3.
"""

from __future__ import annotations

__all__ = ["PolicyAnnotator", "TrainConfig", "policy_names", "train_policy"]

_LAZY = {
    "PolicyAnnotator": "hiseg_sim.policies.store",
    "policy_names": "hiseg_sim.policies.store",
    "TrainConfig": "hiseg_sim.policies.train",
    "train_policy": "hiseg_sim.policies.train",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hiseg_sim.policies' has no attribute {name!r}")
