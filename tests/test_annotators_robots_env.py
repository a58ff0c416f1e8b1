"""Robot agents in the env reproduce the rules of their sources (stub segmenter, hand-made cases)."""

from __future__ import annotations

import numpy as np
import pytest

import hiseg_sim  # noqa: F401
from hiseg_sim.annotators.base import Knowledge, RobotKnowledge
from hiseg_sim.annotators.harness import make_env, make_knowledge, run_episode
from hiseg_sim.annotators.registry import build_annotator
from hiseg_sim.annotators.robots import rules as R
from hiseg_sim.env.actions import Accept, BoxAction, PointAction
from hiseg_sim.seeding import episode_streams as seed_streams
from tests.env_support import EnvStubSegmenter, synthetic_cases


@pytest.fixture(scope="module")
def cases():
    return synthetic_cases()


@pytest.fixture(scope="module")
def env(cases):
    e = make_env("hiseg_sim/NoduleSeg2D-v0", cases=cases, segmenter=EnvStubSegmenter(), max_episode_steps=25)
    yield e
    e.close()


def _rollout(env, agent, case_id, seed=0):
    """Run ``agent`` by hand, keeping the mask each action was chosen on."""
    obs, info = env.reset(seed=seed, options={"case_id": case_id})
    k = make_knowledge(env, agent)
    assert isinstance(k, RobotKnowledge) and k.gt is not None
    agent.begin_case(k, np.random.default_rng(seed))
    steps = []
    done = False
    while not done:
        mask = obs["mask"][0] > 127
        a = agent.act(obs, info)
        steps.append((mask, a))
        obs, _, term, trunc, info = env.step(a)
        done = term or trunc
    return k.gt, steps, info


def test_ritm_agent_follows_ritm_rule_and_stops_at_target(env, cases):
    agent = build_annotator("robot_ritm", target_iou=0.85)
    gt, steps, info = _rollout(env, agent, cases[1].case_id)
    history: list[R.Click] = []
    for mask, a in steps:
        if isinstance(a, Accept):
            break
        expected = R.ritm_click(mask, gt, previous=tuple(history))
        assert (a.x, a.y, a.positive) == (expected.xy[0], expected.xy[1], expected.positive)
        history.append(expected)
    assert isinstance(steps[0][1], PointAction) and steps[0][1].positive  # first click on the empty mask
    last = steps[-1]
    assert isinstance(last[1], Accept)
    n_clicks = len(steps) - 1
    assert all(R.iou(m, gt) < 0.85 for m, _ in steps[1:-1])
    if agent.stop_reason == "target":
        assert R.iou(last[0], gt) >= 0.85
    else:
        assert agent.stop_reason == "max_clicks" and n_clicks == 20


def test_ritm_agent_budget_is_20_clicks(env, cases):
    agent = build_annotator("robot_ritm", target_iou=1.01)
    _, steps, _ = _rollout(env, agent, cases[0].case_id)
    pts = [a for _, a in steps if isinstance(a, PointAction)]
    assert len(pts) <= 20
    if len(pts) == 20:
        assert isinstance(steps[-1][1], Accept) and agent.stop_reason == "max_clicks"


def test_microsam_agent_box_then_pairs(env, cases):
    agent = build_annotator("robot_microsam")
    gt, steps, _ = _rollout(env, agent, cases[0].case_id, seed=3)
    first = steps[0][1]
    assert isinstance(first, BoxAction)
    assert (first.x0, first.y0, first.x1, first.y1) == tuple(R.gt_box(gt))
    rng = np.random.default_rng(3)
    clicks = [a for _, a in steps[1:] if isinstance(a, PointAction)]
    assert len(clicks) == 14 and isinstance(steps[-1][1], Accept)
    for i in range(0, 14, 2):
        mask = steps[1 + i][0]
        pos, neg = R.microsam_clicks(mask, gt, rng)
        assert (clicks[i].x, clicks[i].y, clicks[i].positive) == (pos.xy[0], pos.xy[1], True)
        assert (clicks[i + 1].x, clicks[i + 1].y, clicks[i + 1].positive) == (neg.xy[0], neg.xy[1], False)


@pytest.mark.parametrize(
    "name, fn",
    [
        ("robot_deepgrow", lambda m, g, rng, prev: R.deepgrow_click(m, g, rng)),
        ("robot_sammed3d", lambda m, g, rng, prev: R.sammed3d_click(m, g, rng, method="ritm")),
    ],
)
def test_random_click_robots_replay(env, cases, name, fn):
    agent = build_annotator(name, target_iou=1.01, max_clicks=6)
    gt, steps, _ = _rollout(env, agent, cases[2].case_id, seed=5)
    rng = np.random.default_rng(5)
    for mask, a in steps:
        if isinstance(a, Accept):
            break
        c = fn(mask, gt, rng, None)
        assert (a.x, a.y, a.positive) == (c.xy[0], c.xy[1], c.positive)


def test_medsegfm_agent(env, cases):
    agent = build_annotator("robot_medsegfm")
    gt, steps, _ = _rollout(env, agent, cases[0].case_id)
    assert isinstance(steps[0][1], BoxAction)
    for mask, a in steps[1:]:
        if isinstance(a, Accept):
            break
        c = R.medsegfm_click(mask, gt)
        assert (a.x, a.y, a.positive) == (c.xy[0], c.xy[1], c.positive)
    assert sum(isinstance(a, PointAction) for _, a in steps) <= 5


def test_box_robots(env, cases):
    cid = cases[0].case_id
    for name, expect in [
        (
            "robot_medsam_box",
            lambda g, rng: R.medsam_box(
                g, rng, max_shift_px=5, input_size=256, image_size=g.shape[1], clip="litemedsam"
            ),
        ),
        ("robot_sam_box", lambda g, rng: R.sam_noisy_box(g, rng, image_size=g.shape[1])),
    ]:
        res = run_episode(env, build_annotator(name), case_id=cid, seed=11)
        assert [t["action"]["kind"] for t in res.trace] == ["box", "accept"]
        _, rng = seed_streams(11, cid)
        gt = env.unwrapped._gt_crop[0]
        b = np.clip(expect(gt, rng), 0, gt.shape[1] - 1)
        got = res.trace[0]["action"]
        assert [got["x0"], got["y0"], got["x1"], got["y1"]] == pytest.approx(
            [min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])]
        )


def test_auto_box_is_centred_on_a_noisy_detection(env, cases):
    cid = cases[0].case_id
    res = run_episode(env, build_annotator("auto_box", size_log_sd=0.0), case_id=cid, seed=2)
    a = res.trace[0]["action"]
    gt = env.unwrapped._gt_crop[0]
    ys, xs = np.nonzero(gt)
    _, rng = seed_streams(2, cid)
    dy, dx = rng.standard_normal(2) * 3.0 / 0.7
    assert (a["x0"] + a["x1"]) / 2 == pytest.approx(xs.mean() + dx, abs=1e-6)
    assert (a["y0"] + a["y1"]) / 2 == pytest.approx(ys.mean() + dy, abs=1e-6)
    x0, y0, x1, y1 = R.gt_box(gt)
    assert a["x1"] - a["x0"] == pytest.approx(x1 - x0 + 1)
    assert res.summary["accepted"] and [t["action"]["kind"] for t in res.trace] == ["box", "accept"]


def test_robots_refuse_plain_knowledge():
    agent = build_annotator("robot_ritm")
    with pytest.raises(TypeError, match="RobotKnowledge"):
        agent.begin_case(Knowledge("x", np.zeros((8, 8)), (1.0, 1.0)), np.random.default_rng(0))


@pytest.fixture(scope="module")
def env3d(cases):
    e = make_env("hiseg_sim/NoduleSeg3D-v0", cases=cases, segmenter=EnvStubSegmenter(), max_slices=16)
    yield e
    e.close()


@pytest.mark.parametrize("name", ["robot_ritm", "robot_medsam_box", "robot_medsegfm"])
def test_a_robot_in_3d_works_every_slice_that_holds_the_nodule(env3d, cases, name):
    r = run_episode(env3d, build_annotator(name), case_id=cases[0].case_id, seed=0)
    gt = env3d.unwrapped.scoring_reference()  # the slab's ground truth
    held = set(np.flatnonzero(gt.reshape(gt.shape[0], -1).any(axis=1)).tolist())
    z0 = env3d.unwrapped.viewport.z0  # prompts name volume slices
    prompted = {t["prompt"]["slice"] - z0 for t in r.trace if t["prompt"]}
    kinds = [t["action"]["kind"] for t in r.trace]
    assert r.summary["accepted"] and kinds[-1] == "accept" and kinds.count("accept") == 1
    assert held and held <= prompted  # every slice with ground truth got the robot's protocol
    assert not any(t["invalid_action"] for t in r.trace)
    # click robots carry the mask over by propagation; box robots draw a box on every slice
    assert ("propagate" in kinds) == (name != "robot_medsam_box")
    assert r.summary["final_dice"] > 0.7


def test_auto_box_in_3d_propagates_until_the_mask_runs_out(env3d, cases):
    r = run_episode(env3d, build_annotator("auto_box"), case_id=cases[0].case_id, seed=0)
    kinds = [t["action"]["kind"] for t in r.trace]
    assert kinds[0] == "box" and kinds.count("box") == 1 and kinds[-1] == "accept"
    assert kinds.count("propagate") >= 2 and not any(t["invalid_action"] for t in r.trace)
    # it stops only where a propagated mask came out empty or the slab ended, never on a slice with mask
    for t, nxt in zip(r.trace, r.trace[1:]):
        if t["action"]["kind"] == "propagate" and nxt["action"]["kind"] == "prev":
            assert t["prompt"] is not None
