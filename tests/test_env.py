"""NoduleSeg2D-v0 / NoduleSeg3D-v0 with the test-only stub segmenter: API, scoring, bad actions, rendering."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import hiseg_sim  # noqa: F401  (registers the ids)
from hiseg_sim import metrics
from hiseg_sim.env import ENV_IDS, register_envs
from hiseg_sim.env.actions import (
    Accept,
    BoxAction,
    InvalidActionError,
    NextSlice,
    PointAction,
    PrevSlice,
    Propagate,
    Undo,
)
from hiseg_sim.env.core import INVALID_CODES, ResetNeeded
from hiseg_sim.env.observation import to_uint8_window
from hiseg_sim.env.viewport import AIR_HU
from hiseg_sim.segmenters.base import LUNG_WINDOW
from tests.env_support import EnvStubSegmenter, synthetic_cases

IDS = list(ENV_IDS)


@pytest.fixture(scope="module")
def cases():
    return synthetic_cases()


@pytest.fixture(scope="module")
def stub():
    return EnvStubSegmenter()


def make(env_id, cases, stub, **kw):
    """A 128-px viewport on the 96-px synthetic cases: every episode exercises the air padding."""
    kw.setdefault("viewport_px", 128)
    return gym.make(env_id, cases=cases, segmenter=stub, **kw)


def test_registered_with_time_limits():
    register_envs()  # idempotent
    for env_id, (entry, steps) in ENV_IDS.items():
        spec = gym.spec(env_id)
        assert spec.entry_point == entry and spec.max_episode_steps == steps
    assert gym.spec("hiseg_sim/NoduleSeg2D-v0").max_episode_steps == 20


@pytest.mark.parametrize("env_id", IDS, ids=IDS)
def test_check_env(env_id, cases, stub):
    env = make(env_id, cases, stub, render_mode="rgb_array")
    check_env(env.unwrapped)
    env.close()


@pytest.mark.parametrize("env_id", IDS, ids=IDS)
def test_same_seed_same_rollout(env_id, cases, stub):
    envs = [make(env_id, cases, EnvStubSegmenter()) for _ in range(2)]
    rollouts = []
    for env in envs:
        env.action_space.seed(7)
        obs, info = env.reset(seed=123)
        out = [(obs, 0.0, info)]
        for _ in range(150):
            obs, r, term, trunc, info = env.step(env.action_space.sample())
            out.append((obs, r, info))
            if term or trunc:
                obs, info = env.reset()
                out.append((obs, 0.0, info))
        rollouts.append(out)
    for (o1, r1, i1), (o2, r2, i2) in zip(*rollouts):
        assert r1 == r2
        assert o1.keys() == o2.keys() and all(np.array_equal(o1[k], o2[k]) for k in o1)
        assert i1["dice"] == i2["dice"] and i1["seconds"] == i2["seconds"] and i1["invalid_action"] == i2["invalid_action"]


def test_key_slice_and_noisy_viewport(cases, stub):
    env = make("hiseg_sim/NoduleSeg2D-v0", cases, stub).unwrapped
    offsets = set()
    for seed in range(60):
        _, info = env.reset(seed=seed, options={"case_index": 0})
        case, vp = env.case, env.viewport
        assert vp.z0 == case.key_slice and vp.n_slices == 1 and info["viewport"] == vp.to_dict()
        ys, xs = np.nonzero(case.gt[case.key_slice])
        cy, cx = vp.centre_yx
        assert (cy, cx) != (round(ys.mean()), round(xs.mean()))  # never exactly on the nodule
        assert cy % env.pan_step_px == 0 and cx % env.pan_step_px == 0
        offsets.add((cy, cx))
    assert len(offsets) > 1  # the detection noise moves it


def test_viewport_pads_with_air_near_the_border(cases, stub):
    env = make("hiseg_sim/NoduleSeg2D-v0", cases, stub).unwrapped
    obs, _ = env.reset(seed=0, options={"case_id": "synth-edge"})
    vp = env.viewport
    assert vp.x0 < 0  # the nodule sits 6 px from the left edge
    air = to_uint8_window(np.array([[AIR_HU]], np.float32), LUNG_WINDOW)[0, 0]
    assert (obs["image"][0, :, : -vp.x0] == air).all()
    inside = env.case.volume_hu[vp.z0, max(vp.y0, 0):vp.y0 + vp.size, 0:vp.x0 + vp.size]
    got = obs["image"][0, max(0, -vp.y0):max(0, -vp.y0) + inside.shape[0], -vp.x0:]
    assert np.array_equal(got, to_uint8_window(inside, LUNG_WINDOW))


def test_observations_hold_no_ground_truth(cases, stub):
    """Same image, different ground truth: identical observations, different Dice."""
    from hiseg_sim.data.case import Case

    c = cases[0]
    shifted = np.roll(c.gt, 4, axis=2)
    other = Case("synth-0-other-gt", c.volume_hu, c.spacing_zyx, shifted)
    for env_id in IDS:
        e1 = make(env_id, [c], stub).unwrapped
        e2 = make(env_id, [other], stub).unwrapped
        o1, i1 = e1.reset(seed=1)
        opts = {"viewport": i1["viewport"]}
        if e1.three_d:
            opts["start_slice"] = i1["viewport"]["z0"] + i1["slice"]
        o2, _ = e2.reset(seed=1, options=opts)
        rng = np.random.default_rng(0)
        dices = []
        for _ in range(40):
            a = np.array([rng.integers(0, e1.action_space.nvec[0]), *rng.integers(0, 128, 4)])
            if a[0] == 4:
                continue
            o1, r1, *_, i1 = e1.step(a)
            o2, r2, *_, i2 = e2.step(a)
            assert all(np.array_equal(o1[k], o2[k]) for k in o1)
            dices.append((i1["dice"], i2["dice"]))
        assert any(d1 != d2 for d1, d2 in dices)


@pytest.mark.parametrize("env_id", IDS, ids=IDS)
def test_dice_matches_metrics_on_full_masks(env_id, cases, stub):
    env = make(env_id, cases, stub).unwrapped
    rng = np.random.default_rng(3)
    for seed in range(3):
        env.reset(seed=seed)
        for _ in range(25):
            a = np.array([rng.integers(0, env.action_space.nvec[0]), *rng.integers(0, 128, 4)])
            if a[0] == 4:
                continue
            _, _, _, _, info = env.step(a)
            vol = env.volume_mask()
            gt = env.case.gt
            if not env.three_d:
                z = env.viewport.z0
                vol, gt = vol[z], gt[z]
                assert (env.volume_mask().sum(axis=(1, 2)) > 0).sum() <= 1
            assert info["dice"] == pytest.approx(metrics.dice(vol, gt), abs=1e-12)
            assert info["iou"] == pytest.approx(metrics.iou(vol, gt), abs=1e-12)
            if env.three_d:
                psd = info["per_slice_dice"]
                vp = env.viewport
                for i in range(vp.n_slices):
                    assert psd[i] == pytest.approx(metrics.dice(vol[vp.z0 + i], gt[vp.z0 + i]))
                assert (psd[vp.n_slices:] == -1).all()


def test_reward_is_dice_gain_minus_lambda_seconds(cases, stub):
    lam = 0.01
    env = make("hiseg_sim/NoduleSeg2D-v0", cases, stub, time_penalty=lam)
    _, info = env.reset(seed=0)
    prev, total = info["dice"], 0.0
    for a in [BoxAction(30, 30, 100, 100), PointAction(64, 64), PointAction(5, 5, False), Undo(), Accept()]:
        _, r, term, _, info = env.step(a)
        assert r == pytest.approx(info["dice"] - prev - lam * info["seconds"])
        prev = info["dice"]
        total += r
    assert term
    assert total == pytest.approx(info["dice"] - lam * info["seconds_total"])
    with pytest.raises(ValueError):
        make("hiseg_sim/NoduleSeg2D-v0", cases, stub, time_penalty=-1)


def _state(env):
    u = env.unwrapped
    return u.slab_masks().copy(), [len(s) for s in u._stacks], u._cur


@pytest.mark.parametrize("env_id", IDS, ids=IDS)
def test_bad_actions_are_defined_and_flagged(env_id, cases, stub):
    env = make(env_id, cases, stub, time_penalty=0.01)
    env.reset(seed=0)
    S = env.unwrapped.size
    noop = lambda a, code: _expect_noop(env, a, code)  # noqa: E731
    noop(Undo(), "nothing_to_undo")
    noop(Accept(), "nothing_to_accept")  # accept before any prompt: refused, the episode goes on
    noop(BoxAction(10, 10, 10, 50), "zero_area_box")
    noop(BoxAction(10, 10, 60, 10.5), "zero_area_box")
    # reversed box: sorted and executed
    _, _, _, _, info = env.step(BoxAction(100, 100, 30, 30))
    assert info["invalid_action"] == "reversed_box" and info["n_prompts"] == 1
    assert env.unwrapped._top(env.unwrapped._cur).box == (30.0, 30.0, 100.0, 100.0)
    # a click on the border pixels: executed, flagged
    for xy in [(0, 5), (S - 1, 5), (5, 0), (5, S - 1), (S - 1, S - 1)]:
        _, _, _, _, info = env.step(PointAction(*xy, positive=False))
        assert info["invalid_action"] == "edge_point"
    # out of the space: the space check fails
    with pytest.raises(InvalidActionError):
        env.step(np.array([0, S, 0, 0, 0]))
    with pytest.raises(InvalidActionError):
        env.step(PointAction(S - 0.5, 3))
    if not env.unwrapped.three_d:
        with pytest.raises(InvalidActionError):
            env.step(NextSlice())
        with pytest.raises(InvalidActionError):
            env.step(np.array([7, 0, 0, 0, 0]))
    _, _, term, _, info = env.step(Accept())
    assert term and info["invalid_action"] == ""
    with pytest.raises(ResetNeeded):
        env.step(Undo())


def _expect_noop(env, action, code):
    before = _state(env)
    n_before = env.unwrapped._n_prompts
    _, r, term, trunc, info = env.step(action)
    after = _state(env)
    assert info["invalid_action"] == code and code in INVALID_CODES
    assert np.array_equal(before[0], after[0]) and before[1:] == after[1:]
    assert info["n_prompts"] == n_before and not term and not trunc
    assert info["seconds"] > 0 and r == pytest.approx(-0.01 * info["seconds"])


def test_3d_bad_moves(cases, stub):
    env = make("hiseg_sim/NoduleSeg3D-v0", cases, stub, time_penalty=0.01)
    env.reset(seed=0, options={"case_index": 0, "start_slice": 0 + synthetic_cases()[0].gt_slices[0]})
    u = env.unwrapped
    _expect_noop(env, Propagate(1), "nothing_to_propagate")
    # walk to the first slice of the slab, then one more
    while u._cur > 0:
        env.step(PrevSlice())
    _expect_noop(env, PrevSlice(), "no_slice_there")
    env.step(BoxAction(0, 0, 127, 127))
    if u._top(0).pred > 0:
        _expect_noop(env, Propagate(-1), "no_slice_there")
    while u._cur < u.viewport.n_slices - 1:
        env.step(NextSlice())
    _expect_noop(env, NextSlice(), "no_slice_there")


def test_undo_restores_the_exact_previous_state(cases, stub):
    env = make("hiseg_sim/NoduleSeg2D-v0", cases, stub)
    obs0, _ = env.reset(seed=4)
    obs1, *_, i1 = env.step(BoxAction(35, 35, 95, 95))
    env.step(PointAction(60, 62))
    env.step(PointAction(70, 50, positive=False))
    env.step(Undo())
    obs, *_, info = env.step(Undo())
    assert all(np.array_equal(obs[k], obs1[k]) for k in ("image", "mask", "prompts", "iou_pred"))
    assert info["dice"] == i1["dice"]
    obs, *_, info = env.step(Undo())
    assert all(np.array_equal(obs[k], obs0[k]) for k in ("image", "mask", "prompts", "iou_pred"))
    assert info["dice"] == 0.0 and info["n_prompts"] == 3


def test_observation_contents(cases, stub):
    env = make("hiseg_sim/NoduleSeg2D-v0", cases, stub, mask_feedback=False)
    obs, _ = env.reset(seed=2)
    assert not obs["mask"].any() and not obs["prompts"].any() and obs["iou_pred"][0] == 0
    obs, *_ = env.step(BoxAction(20, 30, 90, 100))
    obs, *_ = env.step(PointAction(50, 60))
    obs, *_, info = env.step(PointAction(10, 12, positive=False))
    u = env.unwrapped
    assert np.array_equal(obs["mask"][0] == 255, u.current_mask()) and set(np.unique(obs["mask"])) <= {0, 255}
    p = obs["prompts"]
    assert p[0, 60, 50] == 255 and p[1, 12, 10] == 255 and p[0, 12, 10] == 0
    assert p[2, 30, 20:91].all() and p[2, 30:101, 90].all() and p[2, 31:100, 21:90].sum() == 0
    assert obs["step"][0] == 3 and obs["seconds"][0] == pytest.approx(info["seconds_total"], rel=1e-6)
    assert obs["iou_pred"][0] == pytest.approx(info["iou_pred"])
    assert u.last_prompt["points"] == [[50.0, 60.0], [10.0, 12.0]] and u.last_prompt["labels"] == [1, 0]
    assert u.last_prompt["box"] == [20.0, 30.0, 90.0, 100.0] and u.last_prompt["mask_prompt"] is False


def test_3d_propagation_and_slice_entries(cases, stub):
    env = make("hiseg_sim/NoduleSeg3D-v0", cases, stub)
    obs, info = env.reset(seed=5, options={"case_index": 0})
    u = env.unwrapped
    n = u.viewport.n_slices
    assert obs["slice_in_slab"].sum() == n and obs["slice"] == info["slice"] and not obs["slice_has_mask"].any()
    start = u._cur
    obs, *_ = env.step(BoxAction(25, 25, 100, 100))
    assert obs["slice_has_mask"][start] == 1
    d_before = u._score()[0]
    obs, r, *_, info = env.step(Propagate(1))
    assert info["slice"] == start + 1 and obs["slice"] == start + 1 and info["invalid_action"] == ""
    assert obs["slice_has_mask"][start + 1] == 1 and info["dice"] > d_before
    assert u.last_prompt["mask_prompt"] and u.last_prompt["points"] is None and u.last_prompt["slice"] == u.viewport.z0 + start + 1
    x0, y0, x1, y1 = u.last_prompt["box"]
    m = u.slab_masks()[start]
    ys, xs = np.nonzero(m)
    assert (x0, y0, x1, y1) == (xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2)
    obs, *_, info = env.step(Undo())  # undo on the target slice takes the propagation back
    assert obs["slice_has_mask"][start + 1] == 0 and info["dice"] == pytest.approx(d_before)
    obs, *_ = env.step(PrevSlice())
    assert obs["slice"] == start and obs["mask"].any()


def test_step_before_reset_and_render(cases, stub):
    env = make("hiseg_sim/NoduleSeg2D-v0", cases, stub, render_mode="rgb_array").unwrapped
    with pytest.raises(ResetNeeded):
        env.step(Undo())
    env.reset(seed=0)
    env.step(BoxAction(30, 30, 100, 100))
    env.step(PointAction(60, 60))
    frame = env.render()
    assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8
    env.render_gt = True
    with_gt = env.render()
    cyan = (with_gt == np.array([0, 230, 255], np.uint8)).all(axis=2)
    assert cyan.any() and not (frame == np.array([0, 230, 255], np.uint8)).all(axis=2).any()
    e3 = make("hiseg_sim/NoduleSeg3D-v0", cases, stub, render_mode="rgb_array", render_gt=True, render_scale=2)
    e3.reset(seed=0)
    assert e3.render().shape == (256 + 14, 256, 3)
    with pytest.warns(UserWarning, match="render_mode"):
        assert make("hiseg_sim/NoduleSeg2D-v0", cases, stub).unwrapped.render() is None


def test_truncation_by_time_limit(cases, stub):
    env = make("hiseg_sim/NoduleSeg2D-v0", cases, stub)
    env.reset(seed=0)
    for i in range(20):
        _, _, term, trunc, _ = env.step(PointAction(60, 60))
    assert trunc and not term and i == 19


def test_arguments_are_validated(cases, stub):
    from hiseg_sim.env import NoduleSeg2DEnv

    with pytest.raises(ValueError):
        NoduleSeg2DEnv(cases, stub, render_mode="human")
    with pytest.raises(ValueError):
        NoduleSeg2DEnv(cases, stub, time_penalty=float("nan"))
    with pytest.raises(ValueError):
        make("hiseg_sim/NoduleSeg2D-v0", cases, stub, viewport_px=8)
    with pytest.raises(ValueError):
        make("hiseg_sim/NoduleSeg2D-v0", cases, stub, detection_sd_mm=0)
    env = make("hiseg_sim/NoduleSeg2D-v0", [], stub)
    with pytest.raises(ValueError, match="no cases"):
        env.reset(seed=0)
    env = make("hiseg_sim/NoduleSeg2D-v0", cases, stub)
    with pytest.raises(ValueError, match="case_id"):
        env.reset(options={"case_id": "nope"})


def test_cases_may_be_a_callable_and_default_is_lazy(cases, stub):
    calls = []

    def loader():
        calls.append(1)
        return list(cases)

    env = make("hiseg_sim/NoduleSeg2D-v0", loader, stub)
    assert not calls
    env.reset(seed=0)
    env.reset(seed=1)
    assert calls == [1]
    # no cases: nothing is loaded until the first reset
    env = gym.make("hiseg_sim/NoduleSeg2D-v0", segmenter=stub)
    assert env.unwrapped._cases is None and env.unwrapped.size == 96  # the default viewport


def test_smaller_viewport(cases, stub):
    env = make("hiseg_sim/NoduleSeg3D-v0", cases, stub, viewport_px=64, max_slices=16)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (1, 64, 64) and obs["slice_has_mask"].shape == (16,)
    assert env.unwrapped.viewport.n_slices == 16
    assert env.action_space.nvec.tolist() == [9, 64, 64, 64, 64]
