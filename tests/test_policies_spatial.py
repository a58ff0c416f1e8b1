"""The spatial policy network and the behaviour-cloning options (case split, schedule, early stop)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("stable_baselines3")

from tests.policy_support import one_thread, square_demos  # noqa: E402,F401


def _spatial_policy(size=32, grid=16):
    from hiseg_sim.policies.network import SpatialActorCriticPolicy, SpatialScreenNet

    space = gym.spaces.Dict(
        {
            "screen": gym.spaces.Box(0, 255, (5, size, size), np.uint8),
            "state": gym.spaces.Box(0.0, 1.0, (5,), np.float32),
        }
    )
    acts = gym.spaces.MultiDiscrete([5, grid, grid, grid, grid])
    return SpatialActorCriticPolicy(
        space,
        acts,
        lambda _: 1e-3,
        net_arch=dict(pi=[], vf=[32]),
        features_extractor_class=SpatialScreenNet,
        features_extractor_kwargs=dict(grid=grid, channels=8, position_bias=True),
    )


def test_held_out_split_keeps_groups_whole():
    from hiseg_sim.policies.bc import _split

    d = square_demos(side=6, accept_state=0.04, n=40)
    groups = d.episode % 5
    tr, va = _split(d, np.random.default_rng(0), groups, val_frac=0.2)
    assert len(va) and len(tr) and not set(groups[tr]) & set(groups[va])
    assert len(set(groups[va])) == 1


def test_spatial_policy_boxes_squares_in_unseen_places(one_thread, tmp_path):
    import torch

    from hiseg_sim.policies.bc import behaviour_clone
    from hiseg_sim.policies.store import load_policy
    from hiseg_sim.policies.train import save_policy

    torch.manual_seed(0)
    demos = square_demos(side=6, accept_state=0.04, n=64)
    pol = _spatial_policy()
    curve = behaviour_clone(
        pol,
        demos,
        16,
        epochs=12,
        batch_size=16,
        lr=3e-3,
        seed=0,
        groups=demos.episode % 8,
        schedule="cosine",
        patience=10,
        restore_best=True,
    )
    assert curve[-1]["lr"] < curve[0]["lr"]
    best = min(r["val_box_err_cells"] for r in curve)
    assert best < 1.0  # corners found to within a cell on squares of held-out groups
    # the best epoch's weights were kept: the held-out error of the returned policy is the best one
    from hiseg_sim.policies.bc import _split, _validate

    _, va = _split(demos, np.random.default_rng(0), demos.episode % 8, 0.1)
    assert _validate(pol, demos, va)["val_box_err_cells"] == pytest.approx(best)
    # saved with network "spatial" in the card, it loads as the same policy
    save_policy(
        pol,
        tmp_path / "sp",
        {
            "name": "sp",
            "network": "spatial",
            "grid": 16,
            "kind": "bc",
            "env_id": "x",
            "max_episode_steps": 20,
            "cohort": "toy",
            "segmenter": "stub",
            "reward": "-",
            "steps": 0,
            "seeds": {"train": 0},
            "training": {},
        },
    )
    loaded, card = load_policy(tmp_path / "sp")
    assert card["network"] == "spatial"
    obs = {"screen": demos.screen[:6], "state": demos.state[:6]}
    with torch.no_grad():
        assert np.array_equal(loaded.predict(obs, deterministic=True)[0], pol.predict(obs, deterministic=True)[0])


def test_early_stopping_ends_training(one_thread):
    from hiseg_sim.policies.bc import behaviour_clone

    demos = square_demos(side=6, accept_state=0.04, n=24)
    curve = behaviour_clone(_spatial_policy(), demos, 16, epochs=50, batch_size=8, lr=0.0, seed=0, patience=2)
    assert len(curve) == 3  # a learning rate of 0 never improves on the first epoch
    with pytest.raises(ValueError, match="schedule"):
        behaviour_clone(_spatial_policy(), demos, 16, epochs=1, schedule="linear")
