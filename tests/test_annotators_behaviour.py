"""The behaviour model: its parts as pure functions, and whole simulated people in the env (stub segmenters)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hiseg_sim  # noqa: F401
from hiseg_sim.annotators.base import Feedback, Knowledge
from hiseg_sim.annotators.behaviour import execution as X
from hiseg_sim.annotators.behaviour import judgement as J
from hiseg_sim.annotators.behaviour.learning import PromptValues, relative_gain, softmax_choice
from hiseg_sim.annotators.behaviour.person import BehaviourAnnotator
from hiseg_sim.annotators.harness import evaluate, make_env, run_episode
from hiseg_sim.annotators.registry import build_annotator
from hiseg_sim.env.actions import Accept, BoxAction, PointAction, Undo
from hiseg_sim.segmenters.base import LOW_RES
from hiseg_sim.timing import TimeModel
from tests.env_support import EnvStubSegmenter, synthetic_cases

pytestmark = pytest.mark.filterwarnings("ignore:agents/calibration/expert_perception.json is missing")


class BoxHungryStub(EnvStubSegmenter):
    """TEST STUB, not a model: like LiteMedSAM in one respect only — without a box, clicks give
    tiny discs (radius 2 model px); with a box, the bright pixels in it."""

    name = "box-hungry-stub"

    def _decode_tensor(self, features, coords, labels, box, mask_in):
        import torch

        if box is not None:
            return super()._decode_tensor(features, coords, labels, box, None)
        on = np.zeros((LOW_RES, LOW_RES), bool)
        yy, xx = np.ogrid[:LOW_RES, :LOW_RES]
        for (x, y), lab in zip(coords[0].tolist(), labels[0].tolist()):
            if lab == 1:
                on |= (yy - y) ** 2 + (xx - x) ** 2 <= 4
        logits = np.where(on, 5.0, -5.0).astype(np.float32)
        return torch.from_numpy(logits)[None, None], torch.tensor([[0.5]])


@pytest.fixture(scope="module")
def cases():
    return synthetic_cases()


@pytest.fixture(scope="module")
def env(cases):
    e = make_env("hiseg_sim/NoduleSeg2D-v0", cases=cases, segmenter=EnvStubSegmenter())
    yield e
    e.close()


@pytest.fixture(scope="module")
def box_env(cases):
    e = make_env("hiseg_sim/NoduleSeg2D-v0", cases=cases, segmenter=BoxHungryStub())
    yield e
    e.close()


# ---- parts ------------------------------------------------------------------------------------


def test_relative_gain_and_values():
    assert relative_gain(0.0, 0.6) == pytest.approx(0.6)
    assert relative_gain(0.6, 0.8) == pytest.approx(0.5)
    v = PromptValues({"point": 0.6, "box": 0.3, "rebox": 0.2})
    v.update("point", 0.0, 0.5)
    assert v["point"] == pytest.approx(0.3) and v.counts["point"] == 1
    v.learn_from_feedback(["box"], 0.9, 0.5)
    assert v["box"] == pytest.approx(0.6) and v["rebox"] == 0.2


def test_softmax_choice_follows_the_values():
    rng = np.random.default_rng(0)
    picks = [softmax_choice({"a": 0.2, "b": 0.5}, 0.1, 0.0, rng) for _ in range(2000)]
    share_b = picks.count("b") / len(picks)
    assert share_b == pytest.approx(np.exp(5) / (np.exp(5) + np.exp(2)), abs=0.03)
    picks = [softmax_choice({"a": 0.2, "b": 0.5}, 0.0, 1.0, rng) for _ in range(2000)]
    assert picks.count("a") / len(picks) == pytest.approx(0.5, abs=0.05)


def test_aim_point_stays_deep_inside():
    yy, xx = np.mgrid[:40, :40]
    disc = (yy - 20) ** 2 + (xx - 15) ** 2 <= 8**2
    rng = np.random.default_rng(1)
    y, x = X.aim_point(disc, (0.7, 0.7), rng, 1.0)
    assert (y, x) == (20.0, 15.0)  # centre_fraction 1: the deepest pixel, the robot's aim
    aims = np.array([X.aim_point(disc, (0.7, 0.7), rng, 0.5) for _ in range(300)])
    r = np.hypot(aims[:, 0] - 20, aims[:, 1] - 15)
    assert r.max() <= 4.6 and r.mean() > 1.0  # spread around the centre, within half the depth


def test_motor_noise_in_mm_and_fitts_width():
    ex = X.ExecutionParams(point_sd_mm=0.7)
    rng = np.random.default_rng(2)
    pts = np.array(
        [[p.x, p.y] for p in (X.place_point((50.0, 50.0), True, ex, (0.7, 0.7), 96, rng) for _ in range(4000))]
    )
    assert pts.std(axis=0) == pytest.approx([1.0, 1.0], rel=0.06)  # 0.7 mm / 0.7 mm per px
    tm = X.time_model_for(ex, X.TimeParams(mental_scale=1.2, hesitation=0.5), (0.7, 0.7), TimeModel())
    assert tm.point_target_px == pytest.approx(4.133 * 1.0 * 4)
    assert tm.corner_target_px == pytest.approx(2 * tm.point_target_px)
    assert tm.mental_scale == pytest.approx(1.8)
    slow = X.time_model_for(X.ExecutionParams(point_sd_mm=0.2), X.TimeParams(), (0.7, 0.7))
    assert slow.pointing((0, 0), (60, 0), slow.point_target_px) > tm.pointing((0, 0), (60, 0), tm.point_target_px)


def test_box_looseness():
    m = np.zeros((96, 96), bool)
    m[40:60, 30:50] = True
    ex = X.ExecutionParams(point_sd_mm=0.05, box_margin_mm=1.4, box_margin_sd_mm=0.01)
    b = X.place_box(m, ex, (0.7, 0.7), 96, np.random.default_rng(0))
    assert isinstance(b, BoxAction)
    assert (b.x0, b.y0, b.x1, b.y1) == pytest.approx((28, 38, 51, 61), abs=0.5)
    tight = X.place_box(m, ex, (0.7, 0.7), 96, np.random.default_rng(0), margin_delta_mm=-1.4)
    assert (tight.x0, tight.x1) == pytest.approx((30, 49), abs=0.5)


def test_perceived_errors_and_decide():
    intent = np.zeros((40, 40), bool)
    intent[10:30, 10:30] = True
    mask = intent.copy()
    mask[10:30, 10:16] = False  # a missing band 6 px wide
    mask[0:2, 0:40] = True  # a thin leak
    e = J.perceived_errors(mask, intent, (0.7, 0.7), 0.8)
    assert e.missing.sum() == 120 and not e.leak.any()  # the 2-px leak is 0.7 mm deep: below 0.8 mm
    assert J.intent_dice(intent, intent) == 1.0
    jp = J.JudgementParams(accept_threshold=0.9, patience=5, time_budget_s=60, stall_limit=2)
    assert J.decide(0.95, 1, 1.0, jp) == "accept"
    assert J.decide(0.5, 5, 1.0, jp) == "give_up"
    assert J.decide(0.5, 1, 61.0, jp) == "give_up"
    assert J.decide(0.5, 1, 1.0, jp, stalled=2) == "give_up"
    assert J.decide(0.5, 1, 1.0, jp) == "go_on"


# ---- a person, step by step -------------------------------------------------------------------


def _obs(mask: np.ndarray, seconds: float = 0.0) -> dict:
    return {"mask": (mask.astype(np.uint8) * 255)[None], "seconds": np.array([seconds], np.float32)}


def test_scripted_judgement_accepts_corrects_and_undoes():
    intent = np.zeros((96, 96), bool)
    intent[30:60, 30:60] = True
    a = build_annotator("expert_radiologist", judgement__quality_sd=0.0)
    k = Knowledge("t", np.zeros((96, 96), np.float32), (0.7, 0.7), intent=intent)
    a.begin_case(k, np.random.default_rng(0))
    first = a.act(_obs(np.zeros_like(intent)), {"invalid_action": ""})
    assert isinstance(first, BoxAction)  # the expert's prior
    half = intent.copy()
    half[30:60, 45:60] = False
    nxt = a.act(_obs(half), {"invalid_action": ""})
    assert a.perceived_quality == pytest.approx(J.intent_dice(half, intent))
    assert not isinstance(nxt, (Accept, Undo))  # 0.67 < 0.88: a correction
    worse = np.zeros_like(intent)
    worse[30:35, 30:35] = True
    assert isinstance(a.act(_obs(worse), {"invalid_action": ""}), Undo)
    # the undo ran: the mask is back; a perfect mask is accepted next
    assert isinstance(a.act(_obs(half), {"invalid_action": ""}), (PointAction, BoxAction))
    assert isinstance(a.act(_obs(intent), {"invalid_action": ""}), Accept)


def test_needs_intent():
    a = build_annotator("non_medical")
    with pytest.raises(ValueError, match="intent"):
        a.begin_case(Knowledge("t", np.zeros((8, 8)), (1.0, 1.0)), np.random.default_rng(0))


# ---- whole episodes ---------------------------------------------------------------------------


def test_expert_boxes_and_accepts(env, cases):
    res = evaluate(build_annotator("expert_radiologist"), env, [c.case_id for c in cases], seeds=(0,))
    for r in res:
        assert r.trace[0]["action"]["kind"] == "box"
        assert r.summary["accepted"] and r.summary["final_dice"] > 0.7
        assert r.trace[-1]["action"]["kind"] == "accept"
        assert all(t["perceived_quality"] is not None for t in r.trace)
        assert r.summary["intent_dice"] > 0.6


def test_same_seed_same_trace(env, cases):
    def run():
        return run_episode(env, build_annotator("non_medical"), case_id=cases[1].case_id, seed=7)

    a, b = run(), run()
    assert json.dumps(a.trace, default=str) == json.dumps(b.trace, default=str)
    assert a.summary["final_dice"] == b.summary["final_dice"]
    c = run_episode(env, build_annotator("non_medical"), case_id=cases[1].case_id, seed=8)
    assert json.dumps(c.trace, default=str) != json.dumps(a.trace, default=str)


def test_group_time_model_reaches_the_env(env, cases):
    cid = cases[0].case_id
    tm = TimeModel()
    a, b = build_annotator("expert_radiologist"), build_annotator("non_medical")
    ra = run_episode(env, a, case_id=cid, seed=3, intent=None)
    charged = env.unwrapped.episode_time_model
    assert charged == a.time_model_for(cases[0].spacing_zyx[1:], tm)
    rb = run_episode(env, b, case_id=cid, seed=3)
    assert env.unwrapped.episode_time_model.mental_scale > charged.mental_scale
    assert ra.trace[0]["seconds"] != rb.trace[0]["seconds"]
    env.reset(seed=0)  # no option: back to the env's own model
    assert env.unwrapped.episode_time_model is env.unwrapped.time_model
    with pytest.raises(TypeError, match="TimeModel"):
        env.reset(seed=0, options={"time_model": {"M": 2}})


def test_novice_finds_out_the_model_wants_a_box(box_env, cases):
    """Clicks alone give tiny masks with this stub: a click-first novice learns to open with a box."""
    person = build_annotator("non_medical", perception__p_wrong_spot=0.0)
    ids = [c.case_id for c in cases] * 4
    res = evaluate(person, box_env, ids, seeds=(0,), fresh_per_seed=False, feedback=True)
    openings = [r.summary["opening"] for r in res]
    assert openings[0] == "point"  # starts like people do in click tools
    assert person.values["box"] > person.values["point"]  # found out
    early = np.mean([o != "point" for o in openings[:3]])
    late = np.mean([o != "point" for o in openings[-4:]])
    assert late > early
    d_early = np.mean([r.summary["final_dice"] for r in res[:3]])
    d_late = np.mean([r.summary["final_dice"] for r in res[-4:]])
    s_early = np.mean([r.summary["seconds_total"] for r in res[:3]])
    s_late = np.mean([r.summary["seconds_total"] for r in res[-4:]])
    assert s_late < s_early  # no more wasted clicks
    assert d_late >= d_early - 0.05  # (with this stub a rescued mask is as good as a boxed one)


def test_feedback_moves_the_values_of_standing_prompts():
    intent = np.zeros((96, 96), bool)
    intent[30:60, 30:60] = True
    a = BehaviourAnnotator(build_annotator("expert_radiologist").profile)
    a.begin_case(Knowledge("t", np.zeros((96, 96), np.float32), (0.7, 0.7), intent=intent), np.random.default_rng(0))
    a.act(_obs(np.zeros_like(intent)), {"invalid_action": ""})  # a box
    a.act(_obs(intent), {"invalid_action": ""})  # accept
    v_box = a.values["box"]
    a.end_case(Feedback(dice=0.2))
    assert a.values["box"] < v_box and a.values["point"] == a.values.priors["point"]
    assert a.history[-1]["feedback_dice"] == 0.2


def test_a_person_in_3d_goes_slice_by_slice(cases):
    env = make_env("hiseg_sim/NoduleSeg3D-v0", cases=cases, segmenter=EnvStubSegmenter(), max_slices=16)
    r = run_episode(env, build_annotator("expert_radiologist"), case_id=cases[0].case_id, seed=0)
    kinds = [t["action"]["kind"] for t in r.trace]
    slices = {t["prompt"]["slice"] for t in r.trace if t["prompt"]}
    assert r.summary["accepted"] and kinds[-1] == "accept"
    assert "propagate" in kinds and len(slices) >= 5
    assert r.summary["final_dice"] > 0.8
    env.close()


def test_worked_examples_teach_through_what_they_show_not_by_being_handed_over():
    """A score moves no perception; an example teaches what it shows against the person's own
    intent on the same image; a mask that follows nothing in the image teaches nothing."""
    yy, xx = np.mgrid[:96, :96]
    image = np.full((96, 96), -870.0, np.float32)
    nodule = (yy - 45) ** 2 + (xx - 40) ** 2 <= 64
    vessel = (np.abs(yy - 45) <= 1) & (xx > 48) & (xx < 75)
    image[nodule | vessel] = 30.0
    intent = nodule | vessel  # this person takes the attached vessel in

    def shown(mask, who="non_medical"):
        a = build_annotator(who)
        a.begin_case(Knowledge("t", image, (0.7, 0.7), intent=intent), np.random.default_rng(0))
        a.end_case(Feedback(dice=0.7, expert_mask=mask))
        return a

    p0 = build_annotator("non_medical").perception_params()
    assert shown(None).perception_params() == p0  # a score alone
    assert shown(np.ones((96, 96), bool)).perception_params() == p0  # handed a mask that outlines nothing
    assert shown(nodule).perception_params().p_include_vessel < p0.p_include_vessel
    e = build_annotator("expert_radiologist")
    assert shown(nodule, "expert_radiologist").perception_params() == e.perception_params()
