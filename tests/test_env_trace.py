"""Trace recorder, replay to the same masks and Dice, episode statistics."""

import json

import gymnasium as gym
import numpy as np
import pytest

import hiseg_sim  # noqa: F401
from hiseg_sim.env import ENV_IDS
from hiseg_sim.env.trace import TRACE_FIELDS, ReplayMismatch, read_trace, replay
from hiseg_sim.env.wrappers import EpisodeStatistics, TraceRecorder
from tests.env_support import EnvStubSegmenter, synthetic_cases

DESIGN_FIELDS = {"case", "annotator", "step", "action", "prompt", "seconds", "dice", "iou_pred", "perceived_quality"}


def _record(env_id, path, n_episodes=3, seed=5):
    env = TraceRecorder(gym.make(env_id, cases=synthetic_cases(), segmenter=EnvStubSegmenter()), path, "fuzz-robot")
    env.action_space.seed(seed)
    masks = []
    obs, info = env.reset(seed=seed)
    done_eps = 0
    while done_eps < n_episodes:
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        if term or trunc:
            masks.append(env.unwrapped.slab_masks().copy())
            done_eps += 1
            if done_eps < n_episodes:
                env.reset()
    env.close()
    return env, masks


@pytest.mark.parametrize("env_id", list(ENV_IDS), ids=list(ENV_IDS))
def test_trace_schema_and_replay(env_id, tmp_path):
    path = tmp_path / "trace.jsonl"
    rec, masks = _record(env_id, path)
    records = read_trace(path)
    assert len(records) == len(rec.records) > 0
    assert json.loads(path.read_text().splitlines()[0]).keys() == set(TRACE_FIELDS)
    for r in records:
        assert DESIGN_FIELDS <= r.keys() and r["annotator"] == "fuzz-robot" and r["env"] == env_id
        assert r["perceived_quality"] is None
        if r["prompt"] is not None:
            assert {"slice", "points", "labels", "box", "mask_prompt"} == r["prompt"].keys()
    # replay in a fresh env with a fresh segmenter: same Dice after every action, same masks
    env = gym.make(env_id, cases=synthetic_cases(), segmenter=EnvStubSegmenter())
    results = replay(path, env)
    assert len(results) == len(masks) == 3
    for res, m in zip(results, masks):
        assert res.ok and res.max_abs_diff <= 1e-6
        assert np.array_equal(res.final_mask, m)
    # a tampered trace is caught
    records[0]["dice"] += 0.5
    with pytest.raises(ReplayMismatch):
        replay(records, env)


def test_perceived_quality_and_memory_only():
    env = TraceRecorder(
        gym.make("hiseg_sim/NoduleSeg2D-v0", cases=synthetic_cases(), segmenter=EnvStubSegmenter()),
        annotator="expert-1",
    )
    with pytest.raises(RuntimeError):
        env.set_perceived_quality(0.5)
    env.reset(seed=0)
    env.step(np.array([2, 20, 20, 80, 80]))
    env.set_perceived_quality(0.8)
    env.step(np.array([4, 0, 0, 0, 0]))
    env.set_perceived_quality(0.9)  # after the final step, before the next reset
    assert [r["perceived_quality"] for r in env.records] == [0.8, 0.9]
    assert env.records[0]["action"] == {"kind": "box", "x0": 20, "y0": 20, "x1": 80, "y1": 80}
    assert env.records[1]["terminated"] and env.records[1]["prompt"] is None
    env.reset(seed=1)
    with pytest.raises(RuntimeError):
        env.set_perceived_quality(0.1)


def test_episode_statistics():
    env = EpisodeStatistics(
        gym.make("hiseg_sim/NoduleSeg2D-v0", cases=synthetic_cases(), segmenter=EnvStubSegmenter(), time_penalty=0.01)
    )
    env.reset(seed=0)
    ret = 0.0
    for a in ([2, 20, 20, 80, 80], [3, 0, 0, 0, 0], [3, 0, 0, 0, 0], [2, 20, 20, 80, 80], [4, 0, 0, 0, 0]):
        _, r, term, trunc, info = env.step(np.array(a))
        ret += r
    ep = info["episode"]
    assert term and ep["l"] == 5 and ep["r"] == pytest.approx(ret) and ep["n_invalid"] == 1 and ep["accepted"]
    assert ep["dice"] == info["dice"] and ep["seconds"] == info["seconds_total"] and ep["n_prompts"] == 2
    assert len(env.history) == 1
