"""The annotator models with the real LiteMedSAM on two default-cohort cases (integration, a few seconds each)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import hiseg_sim  # noqa: F401
from hiseg_sim.annotators.harness import make_env, run_episode
from hiseg_sim.annotators.registry import build_annotator

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def real_env(litemedsam):
    from hiseg_sim.data.cohort import load_cohort

    cases = load_cohort("default", limit=2)
    env = make_env("hiseg_sim/NoduleSeg2D-v0", cases=cases, segmenter=litemedsam, max_episode_steps=21)
    yield env, [c.case_id for c in cases]
    env.close()


def test_expert_with_litemedsam(real_env):
    env, ids = real_env
    dice = []
    for cid in ids:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = run_episode(env, build_annotator("expert_radiologist"), case_id=cid, seed=0)
        assert r.trace[0]["action"]["kind"] == "box" and r.summary["accepted"]
        dice.append(r.summary["final_dice"])
    assert np.mean(dice) > 0.7


def test_lone_click_does_little_and_a_box_does_much(real_env):
    """The property the novices must find out: LiteMedSAM was trained with boxes."""
    env, ids = real_env
    ritm = run_episode(env, build_annotator("robot_ritm"), case_id=ids[0], seed=0)
    box = run_episode(env, build_annotator("robot_medsam_box"), case_id=ids[0], seed=0)
    assert ritm.trace[0]["action"]["kind"] == "point"
    assert box.summary["final_dice"] > ritm.trace[0]["dice"] + 0.3
    assert len(ritm.trace) <= 21
