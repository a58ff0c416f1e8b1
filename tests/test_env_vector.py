"""Vector envs: Gymnasium sync/async with 4 workers sharing the on-disk embedding cache, SB3, the bench."""

import gymnasium as gym
import numpy as np
import pytest

import hiseg_sim  # noqa: F401
from hiseg_sim.bench import run_bench
from hiseg_sim.env import ENV_IDS
from hiseg_sim.env.vector import make_vec_env, vector_encoder_stats
from tests.env_support import EnvStubSegmenter, synthetic_cases


def _drive(vec, n=30, seed=0):
    vec.action_space.seed(seed)
    obs, info = vec.reset(seed=seed)
    for _ in range(n):
        obs, r, term, trunc, info = vec.step(vec.action_space.sample())
        assert vec.observation_space.contains(obs)
        assert r.shape == (vec.num_envs,) and np.isfinite(r).all()
        assert info["dice"].shape == (vec.num_envs,)
    return obs


@pytest.mark.parametrize("env_id", list(ENV_IDS), ids=list(ENV_IDS))
def test_async_four_workers_share_the_disk_cache(env_id, tmp_path):
    vec = make_vec_env(env_id, 4, "async", cases=synthetic_cases(), segmenter=EnvStubSegmenter(), cache_dir=tmp_path)
    try:
        _drive(vec, 40)
        stats = vector_encoder_stats(vec)
    finally:
        vec.close()
    assert stats["slices"] > 0
    assert stats["encoder_calls"] == stats["slices"]  # no slice encoded twice across workers
    assert len(list(tmp_path.glob("*/*.npz"))) == stats["slices"]


def test_sync_vector_env_and_same_seed_same_batch(tmp_path):
    a = make_vec_env("hiseg_sim/NoduleSeg3D-v0", 4, "sync", cases=synthetic_cases(), segmenter=EnvStubSegmenter())
    b = make_vec_env(
        "hiseg_sim/NoduleSeg3D-v0",
        4,
        "async",
        cases=synthetic_cases(),
        segmenter=EnvStubSegmenter(),
        cache_dir=tmp_path,
    )
    try:
        oa, ob = _drive(a, 25, seed=3), _drive(b, 25, seed=3)
        assert all(np.array_equal(oa[k], ob[k]) for k in oa)  # the executor does not change the trace
        stats = vector_encoder_stats(a)
        assert stats["encoder_calls"] == stats["slices"]  # one shared segmenter, counted once
    finally:
        a.close()
        b.close()


def test_gymnasium_make_vec_with_the_registered_id():
    vec = gym.make_vec(
        "hiseg_sim/NoduleSeg2D-v0",
        num_envs=4,
        vectorization_mode="sync",
        cases=synthetic_cases(),
        segmenter=EnvStubSegmenter(),
    )
    try:
        _drive(vec, 10)
    finally:
        vec.close()


@pytest.mark.parametrize("env_id", list(ENV_IDS), ids=list(ENV_IDS))
def test_sb3_env_checker(env_id):
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    sb3_check_env(gym.make(env_id, cases=synthetic_cases(), segmenter=EnvStubSegmenter()).unwrapped)


def test_sb3_make_vec_env_subproc():
    pytest.importorskip("stable_baselines3")
    from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env
    from stable_baselines3.common.vec_env import SubprocVecEnv

    vec = sb3_make_vec_env(
        "hiseg_sim/NoduleSeg2D-v0",
        n_envs=4,
        seed=0,
        vec_env_cls=SubprocVecEnv,
        env_kwargs={"cases": synthetic_cases(), "segmenter": EnvStubSegmenter()},
    )
    try:
        obs = vec.reset()
        assert obs["image"].shape == (4, 1, 96, 96)
        for _ in range(25):
            obs, r, done, infos = vec.step(np.stack([vec.action_space.sample() for _ in range(4)]))
            assert r.shape == (4,) and len(infos) == 4 and all("dice" in i for i in infos)
    finally:
        vec.close()


def test_bench_machinery_with_the_stub(tmp_path):
    out = run_bench(n_envs=4, n_steps=12, cases=synthetic_cases(), segmenter=EnvStubSegmenter())
    assert {"env_step_ms", "decoder_ms", "ratio", "encoder_calls", "slices"} <= out.keys()
    assert out["samples"] > 30 and out["env_step_ms"] > 0 and out["decoder_ms"] > 0
    assert out["encoder_calls"] == out["slices"] > 0
    assert out["ratio"] == pytest.approx(out["env_step_ms"] / out["decoder_ms"], rel=1e-2)
