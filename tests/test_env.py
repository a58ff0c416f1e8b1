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
    ActionTypeError,
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
from hiseg_sim.env.validation import EnvArgumentError, EnvArgumentTypeError
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
        assert (
            i1["dice"] == i2["dice"] and i1["seconds"] == i2["seconds"] and i1["invalid_action"] == i2["invalid_action"]
        )


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
    inside = env.case.volume_hu[vp.z0, max(vp.y0, 0) : vp.y0 + vp.size, 0 : vp.x0 + vp.size]
    got = obs["image"][0, max(0, -vp.y0) : max(0, -vp.y0) + inside.shape[0], -vp.x0 :]
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
                assert (psd[vp.n_slices :] == -1).all()


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
    assert (
        u.last_prompt["mask_prompt"]
        and u.last_prompt["points"] is None
        and u.last_prompt["slice"] == u.viewport.z0 + start + 1
    )
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
    steps = 0
    for _ in range(20):
        _, _, term, trunc, _ = env.step(PointAction(60, 60))
        steps += 1
    assert trunc and not term and steps == 20


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


# ---- argument and option bounds ----------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"viewport_px": 10**5}, EnvArgumentError, r"viewport_px must be an integer in \[16, 1024\]; got 100000"),
        ({"viewport_px": 15}, EnvArgumentError, r"\[16, 1024\]"),
        ({"viewport_px": 96.0}, EnvArgumentTypeError, "viewport_px must be an integer"),
        ({"window": (float("nan"), 1500)}, EnvArgumentError, "window level must be a finite number"),
        ({"window": (-600, 0)}, EnvArgumentError, r"window width must be a finite number in \[1, 100000\] HU"),
        ({"window": (-600, float("inf"))}, EnvArgumentError, "window width"),
        ({"window": (-600,)}, EnvArgumentError, r"window must be \(level, width\)"),
        ({"window": "lung"}, EnvArgumentTypeError, r"window must be \(level, width\)"),
        ({"detection_sd_mm": float("inf")}, EnvArgumentError, r"detection_sd_mm .*\(0, 100\] mm"),
        ({"pan_step_px": 0}, EnvArgumentError, r"pan_step_px must be an integer in \[1, 128\]"),
        ({"pan_step_px": 129}, EnvArgumentError, "pan_step_px"),
        ({"time_penalty": 1e308}, EnvArgumentError, r"time_penalty .*\[0, 1000\]"),
        ({"time_model": {"M": 2}}, EnvArgumentTypeError, "time_model must be None or a hiseg_sim.timing.TimeModel"),
        ({"mask_feedback": "no"}, EnvArgumentTypeError, r"mask_feedback must be True or False \(or 1 / 0\)"),
        ({"mask_feedback": 2}, EnvArgumentError, "mask_feedback"),
        ({"render_gt": None}, EnvArgumentTypeError, "render_gt"),
        ({"render_scale": 0}, EnvArgumentError, r"render_scale must be an integer in \[1, 16\]"),
        ({"viewport_px": 1024, "render_scale": 8}, EnvArgumentError, r"viewport_px \* render_scale must be <= 4096"),
        ({"max_slices": 0}, EnvArgumentError, r"max_slices must be an integer in \[1, 512\]"),
        ({"max_slices": 10**6}, EnvArgumentError, "max_slices"),
        ({"propagate_margin_px": -1}, EnvArgumentError, r"propagate_margin_px must be an integer in \[0, 128\]"),
        ({"cache_dir": 5}, EnvArgumentTypeError, "cache_dir must be None, a str or a path"),
        ({"segmenter": "nope"}, EnvArgumentError, "'nope' is not a registered segmenter; one of .*litemedsam"),
        ({"segmenter": 5}, EnvArgumentTypeError, "segmenter must be a registry name"),
        ({"cases": "synth-0"}, EnvArgumentTypeError, "cases must be a sequence of Case"),
    ],
)
def test_constructor_arguments_outside_their_bounds(cases, stub, kwargs, error, match):
    kw = {"cases": cases, "segmenter": stub, "viewport_px": 128, **kwargs}
    with pytest.raises(error, match=match) as exc:
        gym.make("hiseg_sim/NoduleSeg3D-v0", **kw)
    assert "\n" not in str(exc.value)


def test_constructor_bounds_themselves_are_accepted(cases, stub):
    from hiseg_sim.env import NoduleSeg3DEnv

    env = NoduleSeg3DEnv(
        cases,
        stub,
        viewport_px=16,
        pan_step_px=16,
        detection_sd_mm=100,
        window=(-100000, 1),
        time_penalty=1000,
        max_slices=512,
        propagate_margin_px=16,
        render_scale=16,
        mask_feedback=np.int64(0),
        render_gt=np.bool_(True),
    )
    assert env.mask_feedback is False and env.render_gt is True and env.size == 16
    obs, _ = env.reset(seed=0)
    assert obs["slice_in_slab"].shape == (512,)
    big = NoduleSeg3DEnv(cases, stub, viewport_px=np.int64(1024), render_scale=4, window=[-600, 100000])
    assert big.size == 1024 and big.window == (-600.0, 100000.0)


def test_cases_are_checked_when_loaded(cases, stub):
    from hiseg_sim.data.case import Case

    c = cases[0]
    twin = Case(c.case_id, c.volume_hu, c.spacing_zyx, c.gt)
    env = make("hiseg_sim/NoduleSeg2D-v0", [c, twin], stub)
    with pytest.raises(EnvArgumentError, match="reuses case_id 'synth-0'"):
        env.reset(seed=0)
    env = make("hiseg_sim/NoduleSeg2D-v0", lambda: [c, {"case_id": "x"}], stub)
    with pytest.raises(EnvArgumentTypeError, match=r"cases\[1\] is a dict, not a hiseg_sim.data.case.Case"):
        env.reset(seed=0)
    env = make("hiseg_sim/NoduleSeg2D-v0", [c, c], stub)  # the same case twice: sampled twice as often
    assert env.reset(seed=0)[1]["case_id"] == "synth-0"


def _viewport_of(env, case_index=0):
    _, info = env.reset(seed=0, options={"case_index": case_index})
    return dict(info["viewport"]), info


@pytest.mark.parametrize(
    "options, error, match",
    [
        ({"case_index": -1}, EnvArgumentError, r"options\['case_index'\] must be an integer in \[0, 2\]; got -1"),
        ({"case_index": 3}, EnvArgumentError, "case_index"),
        ({"case_index": 1.0}, EnvArgumentTypeError, "case_index"),
        ({"case_index": True}, EnvArgumentTypeError, "case_index"),
        ({"case_id": 0}, EnvArgumentTypeError, r"options\['case_id'\] must be a str"),
        ({"case_id": "synth-0", "case_index": 0}, EnvArgumentError, "not both"),
        ({"case_idx": 0}, EnvArgumentError, r"unknown reset option\(s\) 'case_idx'; the options are case_id"),
        ({"time_model": "slow"}, EnvArgumentTypeError, "TimeModel"),
    ],
)
@pytest.mark.parametrize("env_id", IDS, ids=IDS)
def test_reset_options_outside_their_bounds(env_id, cases, stub, options, error, match):
    env = make(env_id, cases, stub)
    env.reset(seed=0)
    with pytest.raises(error, match=match):
        env.reset(seed=0, options=options)
    with pytest.raises(ResetNeeded):  # the refused reset ended the previous episode
        env.step(Undo())
    with pytest.raises(EnvArgumentTypeError, match="reset options must be None or a dict"):
        env.reset(options=[("case_index", 0)])


@pytest.mark.parametrize("env_id", IDS, ids=IDS)
def test_viewport_option_is_checked_against_the_case(env_id, cases, stub):
    """z0 = -5 used to index from the end of the volume and score another slice."""
    env = make(env_id, cases, stub)
    vp, info = _viewport_of(env)
    start = {"start_slice": vp["z0"] + info["slice"]} if env.unwrapped.three_d else {}
    bad = [
        ({**vp, "z0": -5}, r"slab \[z0, z0 \+ n_slices\) = \[-5, .*must lie inside the 48 slices of case 'synth-0'"),
        ({**vp, "z0": 48 - vp["n_slices"] + 1}, "must lie inside the 48 slices"),
        ({**vp, "size": 96}, "has size 96, this env's viewport is 128 px"),
        ({**vp, "n_slices": 0}, r"n_slices'\] must be in \[1, "),
        ({**vp, "y0": 2**40}, "is not a pixel offset"),
        ({k: v for k, v in vp.items() if k != "x0"}, r"exactly the keys .*missing \['x0'\]"),
        ({**vp, "zz": 1}, r"unknown \['zz'\]"),
    ]
    for viewport, match in bad:
        with pytest.raises(EnvArgumentError, match=match):
            env.reset(seed=0, options={"case_index": 0, "viewport": viewport})
    with pytest.raises(EnvArgumentTypeError, match=r"options\['viewport'\]\['z0'\] must be an integer"):
        env.reset(seed=0, options={"case_index": 0, "viewport": {**vp, "z0": float(vp["z0"])}})
    with pytest.raises(EnvArgumentTypeError, match="must be a dict with keys z0"):
        env.reset(seed=0, options={"case_index": 0, "viewport": list(vp.values())})
    # the recorded viewport replays, and it may lie off the scan (padded with air)
    _, again = env.reset(seed=0, options={"case_index": 0, "viewport": vp, **start})
    assert again["viewport"] == vp
    off = {**vp, "y0": 500}
    obs, info = env.reset(seed=0, options={"case_index": 0, "viewport": off, **start})
    assert info["viewport"] == off and info["dice"] == 0.0
    env.step(BoxAction(0, 0, 127, 127))
    assert not env.unwrapped.volume_mask().any()


def test_2d_viewport_and_start_slice_are_the_key_slice(cases, stub):
    env = make("hiseg_sim/NoduleSeg2D-v0", cases, stub)
    vp, _ = _viewport_of(env)
    key = cases[0].key_slice
    with pytest.raises(EnvArgumentError, match=f"is not the key slice {key} of case 'synth-0'"):
        env.reset(seed=0, options={"case_index": 0, "viewport": {**vp, "z0": key + 1}})
    with pytest.raises(EnvArgumentError, match=r"n_slices'\] must be in \[1, 1\]"):
        env.reset(seed=0, options={"case_index": 0, "viewport": {**vp, "n_slices": 2}})
    with pytest.raises(EnvArgumentError, match=f"start_slice'\\] = {key - 1} lies outside the slab"):
        env.reset(seed=0, options={"case_index": 0, "start_slice": key - 1})
    assert env.reset(seed=0, options={"case_index": 0, "start_slice": key})[1]["viewport"]["z0"] == key


def test_3d_start_slice_must_be_in_the_slab(cases, stub):
    env = make("hiseg_sim/NoduleSeg3D-v0", cases, stub, max_slices=8)
    vp, _ = _viewport_of(env)
    for s in (vp["z0"] - 1, vp["z0"] + 8):
        with pytest.raises(EnvArgumentError, match=f"start_slice'\\] = {s} lies outside the slab"):
            env.reset(seed=0, options={"case_index": 0, "viewport": vp, "start_slice": s})
    with pytest.raises(EnvArgumentTypeError, match=r"start_slice'\] must be an integer; got float"):
        env.reset(seed=0, options={"case_index": 0, "start_slice": 20.5})
    _, info = env.reset(seed=0, options={"case_index": 0, "viewport": vp, "start_slice": vp["z0"] + 7})
    assert info["slice"] == 7


@pytest.mark.parametrize("env_id", IDS, ids=IDS)
def test_a_refused_first_reset_does_not_break_the_next_steps(env_id, cases, stub):
    """The ids are registered without Gymnasium's passive checker, which fails after a refused first reset."""
    env = gym.make(env_id, cases=cases, segmenter=stub)
    with pytest.raises(EnvArgumentError):
        env.reset(seed=0, options={"case_id": "nope"})
    env.reset(seed=0)
    for action in (BoxAction(20, 20, 70, 70), PointAction(40, 40), Undo()):
        env.step(action)


def test_typed_action_fields_are_checked_before_the_step(cases, stub):
    env = make("hiseg_sim/NoduleSeg2D-v0", cases, stub)
    env.reset(seed=0)
    with pytest.raises(ActionTypeError, match=r"PointAction\.x must be a real number"):
        env.step(PointAction("3", "4"))
    _, _, _, _, info = env.step(PointAction(64, 64, positive=np.bool_(False)))
    assert env.unwrapped.last_prompt["labels"] == [0] and info["invalid_action"] == ""
