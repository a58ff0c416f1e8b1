"""Fuzz both environments: random actions, reset options, arguments and cases (TEST STUB segmenter).

Outcome checked everywhere: no exception but the documented ones (``InvalidActionError`` and its
``ActionTypeError``, ``EnvArgumentError`` and its ``EnvArgumentTypeError``, ``CaseError``,
``ResetNeeded``), and no NaN or infinity in any observation, reward or info. Where an input is
valid by the documented bounds, it must be accepted; where it is not, it must be refused.

Actions per environment: 2,000 in the seeded walk, plus the hypothesis sequences (100 of up to 40).
"""

from __future__ import annotations

import json
import math
from functools import cache

import gymnasium as gym
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import hiseg_sim  # noqa: F401  (registers the ids)
from hiseg_sim.data.case import Case, CaseError
from hiseg_sim.env import ENV_IDS
from hiseg_sim.env.actions import (
    Accept,
    BoxAction,
    InvalidActionError,
    NextSlice,
    PointAction,
    PrevSlice,
    Propagate,
    Undo,
    from_array,
)
from hiseg_sim.env.core import INVALID_CODES, ResetNeeded
from hiseg_sim.env.validation import OPTION_KEYS, EnvArgumentError, EnvArgumentTypeError
from tests.env_support import EnvStubSegmenter, synthetic_cases

IDS = list(ENV_IDS)
S = 64  # viewport of the hypothesis envs (the walk uses the default 96)

FUZZ = settings(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


def non_finite(value) -> list[str]:
    """Paths of the NaN / infinite entries anywhere in nested dicts, sequences, arrays and numbers."""
    out: list[str] = []

    def walk(v, path):
        if isinstance(v, dict):
            for k, x in v.items():
                walk(x, f"{path}.{k}")
        elif isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                walk(x, f"{path}[{i}]")
        elif isinstance(v, np.ndarray):
            if v.dtype.kind in "fc" and not np.isfinite(v).all():
                out.append(path)
        elif isinstance(v, (float, np.floating)) and not math.isfinite(v):
            out.append(path)

    walk(value, "")
    return out


def check_step(env, out) -> None:
    obs, reward, _, _, info = out
    assert not non_finite([obs, reward, info]), non_finite([obs, reward, info])
    assert env.observation_space.contains(obs)
    assert 0.0 <= info["dice"] <= 1.0 and 0.0 <= info["iou"] <= 1.0 and info["seconds"] >= 0
    assert info["invalid_action"] == "" or info["invalid_action"] in INVALID_CODES


@cache
def shared_env(env_id: str):
    """One env per id for the hypothesis tests (each example resets it)."""
    return gym.make(env_id, cases=synthetic_cases(), segmenter=EnvStubSegmenter(), viewport_px=S, time_penalty=0.01)


# ---- the seeded walk --------------------------------------------------------------------------
N_WALK = 2000  # alone the 2,000 random actions per environment the suite promises


def _typed_random(rng, space):
    """A typed action with sub-pixel coordinates, biased towards the viewport's edges."""
    size = int(space.nvec[1])
    a = from_array(space.sample())

    def coord():
        return float(
            rng.choice(
                [0.0, size - 1.0, rng.uniform(0, size - 1), rng.uniform(0, 1.5), rng.uniform(size - 2.5, size - 1)]
            )
        )

    if isinstance(a, PointAction):
        return PointAction(coord(), coord(), a.positive)
    if isinstance(a, BoxAction):
        x0, y0 = coord(), coord()
        if rng.random() < 0.2:  # degenerate drags
            return BoxAction(x0, y0, min(size - 1.0, x0 + rng.uniform(0, 0.99)), coord())
        return BoxAction(x0, y0, coord(), coord())
    return a


def _junk(rng, size, n_kinds):
    """An action outside the space."""
    return [
        np.array([n_kinds, 0, 0, 0, 0]),
        np.array([0, size, 0, 0, 0]),
        np.array([0, -1, 3, 0, 0]),
        np.array([2, 0, 0, np.nan, 1.0]),
        np.array([0, 1, 2]),
        PointAction(size - 0.4, 1.0),
        BoxAction(-0.6, 0, 3, 3),
        "click",
        np.array([0, 2**63, 1, 0, 0], np.uint64),
    ][int(rng.integers(9))]


@pytest.mark.parametrize("env_id", IDS, ids=IDS)
def test_seeded_walk(env_id):
    """Raw, typed and junk actions in turn; junk is refused without a step, the rest never raises."""
    env = gym.make(env_id, cases=synthetic_cases(), segmenter=EnvStubSegmenter(), time_penalty=0.001)
    u = env.unwrapped
    env.action_space.seed(11)
    rng = np.random.default_rng(11)
    env.reset(seed=11)
    seen_codes, episodes, refused = set(), 0, 0
    for i in range(N_WALK):
        if i % 10 == 9:
            steps = u._steps
            with pytest.raises(InvalidActionError):
                env.step(_junk(rng, u.size, int(env.action_space.nvec[0])))
            assert u._steps == steps  # refused: no step taken, no time charged
            refused += 1
            continue
        action = env.action_space.sample() if i % 2 else _typed_random(rng, env.action_space)
        out = env.step(action)
        check_step(env, out)
        seen_codes.add(out[4]["invalid_action"])
        if out[2] or out[3]:
            episodes += 1
            assert not non_finite(list(env.reset()))
    assert episodes > 10 and refused == N_WALK // 10
    assert {"", "nothing_to_undo", "reversed_box", "zero_area_box", "edge_point"} <= seen_codes
    if u.three_d:
        assert {"no_slice_there", "nothing_to_propagate"} & seen_codes
    env.close()


# ---- hypothesis: any action sequence ----------------------------------------------------------
ANY_NUMBER = st.one_of(
    st.integers(-3, S + 3),
    st.floats(-3, S + 3),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from([np.float32(3.5), np.int64(7), np.uint8(2)]),
)
ANY_FIELD = st.one_of(ANY_NUMBER, st.booleans(), st.text(max_size=3), st.none())
ANY_FLAG = st.one_of(st.booleans(), st.integers(-2, 3), st.text(max_size=2), st.none(), st.floats(0, 1))


def _is_real(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))


def _is_flag(v) -> bool:
    return isinstance(v, bool) or (isinstance(v, int) and v in (0, 1))


RAW_ACTION = st.one_of(
    st.tuples(st.just("point"), ANY_FIELD, ANY_FIELD, ANY_FLAG),
    st.tuples(st.just("box"), ANY_FIELD, ANY_FIELD, ANY_FIELD, ANY_FIELD),
    st.tuples(st.just("simple"), st.sampled_from([Undo, Accept, NextSlice, PrevSlice])),
    st.tuples(st.just("propagate"), st.one_of(st.integers(-3, 3), st.booleans(), st.floats(-2, 2))),
    st.tuples(st.just("array"), st.lists(st.one_of(st.integers(-2, S + 2), st.floats()), max_size=7)),
    st.tuples(st.just("sample")),
)


def _valid_fields(raw) -> bool:
    """Whether the documented field rules accept ``raw`` (the oracle for making the action)."""
    kind = raw[0]
    if kind == "point":
        return _is_real(raw[1]) and _is_real(raw[2]) and _is_flag(raw[3])
    if kind == "box":
        return all(_is_real(v) for v in raw[1:])
    if kind == "propagate":
        return isinstance(raw[1], int) and not isinstance(raw[1], bool) and raw[1] in (1, -1)
    return True


def _make(raw, env):
    """The action ``raw`` describes; making a typed action may raise the documented errors."""
    kind = raw[0]
    if kind == "point":
        return PointAction(raw[1], raw[2], raw[3])
    if kind == "box":
        return BoxAction(*raw[1:])
    if kind == "simple":
        return raw[1]()
    if kind == "propagate":
        return Propagate(raw[1])
    if kind == "array":
        return np.array(raw[1])
    return env.action_space.sample()


def _in_space(action, env) -> bool:
    """Whether the documented space accepts ``action`` (the oracle for stepping)."""
    n_kinds, size = int(env.action_space.nvec[0]), int(env.action_space.nvec[1])
    if isinstance(action, np.ndarray):
        if action.shape != (5,) or action.dtype.kind not in "if" or not np.isfinite(action).all():
            return False
        return bool(
            (action == np.rint(action)).all() and (action >= 0).all() and (action < env.action_space.nvec).all()
        )
    if int(action.kind) >= n_kinds:
        return False
    coords = [getattr(action, f) for f in ("x", "y", "x0", "y0", "x1", "y1") if hasattr(action, f)]
    return all(0 <= c <= size - 1 for c in coords)


@pytest.mark.parametrize("env_id", IDS, ids=IDS)
@FUZZ
@given(seed=st.integers(0, 2**16), raws=st.lists(RAW_ACTION, min_size=1, max_size=40))
def test_any_action_sequence(env_id, seed, raws):
    """Valid fields make a typed action; an action in the space steps; anything else is refused as documented."""
    env = shared_env(env_id)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    terminated = False
    for raw in raws:
        valid = _valid_fields(raw)
        try:
            action = _make(raw, env)
        except InvalidActionError as exc:  # ActionTypeError included
            assert not valid, f"{raw!r} was refused: {exc}"
            continue
        assert valid, f"{raw!r} was accepted"
        if terminated:
            with pytest.raises(ResetNeeded):
                env.step(action)
        elif _in_space(action, env):
            out = env.step(action)
            check_step(env, out)
            terminated = out[2]
            if out[3]:  # cut by the time limit: start again, as a learner would
                env.reset(seed=seed)
        else:
            with pytest.raises(InvalidActionError):
                env.step(action)


# ---- hypothesis: reset options ----------------------------------------------------------------
BAD_INT = st.one_of(st.floats(), st.text(max_size=3), st.booleans(), st.none())


@st.composite
def options_and_validity(draw, env):
    """Reset options built from a valid base and at most one documented violation: (options, valid)."""
    u = env.unwrapped
    cases = u.cases
    ci = draw(st.integers(0, len(cases) - 1))
    case = cases[ci]
    base = draw(st.sampled_from(["none", "id", "index", "viewport"]))
    if base == "none":
        opts = None
    elif base == "id":
        opts = {"case_id": case.case_id}
    elif base == "index":
        opts = {"case_index": ci}
    else:
        _, info = env.reset(seed=draw(st.integers(0, 1000)), options={"case_index": ci})
        opts = {"case_id": case.case_id, "viewport": dict(info["viewport"])}
        if u.three_d:
            opts["start_slice"] = info["viewport"]["z0"] + info["slice"]
    flaw = draw(
        st.sampled_from(
            [
                "",
                "",
                "unknown_key",
                "not_a_dict",
                "case_index",
                "case_id",
                "both",
                "viewport",
                "start_slice",
                "time_model",
            ]
        )
    )
    if not flaw:
        return opts, True
    opts = dict(opts or {})
    Z = case.shape[0]
    if flaw == "unknown_key":
        opts[draw(st.text(min_size=1, max_size=8).filter(lambda k: k not in OPTION_KEYS))] = 1
    elif flaw == "not_a_dict":
        return draw(st.sampled_from([[("case_index", 0)], "case 0", 3])), False
    elif flaw == "case_index":
        opts.pop("case_id", None)
        opts["case_index"] = draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=len(cases)), BAD_INT))
    elif flaw == "case_id":
        opts.pop("case_index", None)
        ids = {c.case_id for c in cases}
        opts["case_id"] = draw(st.one_of(st.text(max_size=10).filter(lambda s: s not in ids), st.integers(), st.none()))
        opts.pop("viewport", None)
        opts.pop("start_slice", None)
    elif flaw == "both":
        opts.update(case_id=case.case_id, case_index=ci)
    elif flaw == "viewport":
        vp = dict(opts.get("viewport") or {"z0": case.key_slice, "n_slices": 1, "y0": 0, "x0": 0, "size": u.size})
        opts.pop("start_slice", None)
        opts.pop("case_index", None)
        opts["case_id"] = case.case_id
        how = draw(
            st.sampled_from(
                ["z0_neg", "z0_past", "size", "n0", "n_big", "missing", "extra", "type", "offset", "not_key"]
            )
        )
        if how == "not_key" and u.three_d:
            how = "z0_neg"
        if how == "z0_neg":
            vp["z0"] = draw(st.integers(max_value=-1))
        elif how == "z0_past":
            vp["z0"] = draw(st.integers(min_value=Z - vp["n_slices"] + 1))
        elif how == "size":
            vp["size"] = draw(st.integers().filter(lambda s: s != u.size))
        elif how == "n0":
            vp["n_slices"] = draw(st.integers(max_value=0))
        elif how == "n_big":
            vp["n_slices"] = draw(st.integers(min_value=(min(u.max_slices, Z) if u.three_d else 1) + 1))
        elif how == "missing":
            vp.pop(draw(st.sampled_from(sorted(vp))))
        elif how == "extra":
            vp["zz"] = 0
        elif how == "type":
            vp[draw(st.sampled_from(sorted(vp)))] = draw(BAD_INT)
        elif how == "offset":
            vp[draw(st.sampled_from(["y0", "x0"]))] = draw(st.sampled_from([2**31, -(2**31) - 5, 10**40]))
        else:
            vp["z0"] = draw(st.integers(0, Z - 1).filter(lambda z: z != case.key_slice))
        opts["viewport"] = vp
    elif flaw == "start_slice":
        opts.pop("viewport", None)
        opts["start_slice"] = draw(st.one_of(st.integers(max_value=-1), st.integers(min_value=Z), BAD_INT))
    else:
        opts["time_model"] = draw(
            st.one_of(st.dictionaries(st.text(max_size=2), st.floats(), max_size=2), st.integers(), st.text(max_size=3))
        )
    return opts, False


@pytest.mark.parametrize("env_id", IDS, ids=IDS)
@FUZZ
@given(data=st.data())
def test_reset_options(env_id, data):
    env = shared_env(env_id)
    opts, valid = data.draw(options_and_validity(env))
    seed = data.draw(st.integers(0, 2**31 - 1))
    env.action_space.seed(seed)
    if valid:
        obs, info = env.reset(seed=seed, options=opts)
        assert not non_finite([obs, info])
        if opts and "viewport" in opts:
            assert info["viewport"] == opts["viewport"]
        check_step(env, env.step(env.action_space.sample()))
    else:
        with pytest.raises(EnvArgumentError):
            env.reset(seed=seed, options=opts)
        with pytest.raises(ResetNeeded):  # a refused reset leaves no episode running
            env.step(Undo())


# ---- hypothesis: constructor arguments --------------------------------------------------------
NOT_INT = st.one_of(st.floats(), st.text(max_size=3), st.booleans(), st.none())
NOT_REAL = st.one_of(st.text(max_size=3), st.booleans(), st.none(), st.just(float("nan")), st.just(float("inf")))
#: argument -> (values within the documented bounds, values outside them or of the wrong type)
ARGS = {
    "viewport_px": (st.integers(16, 160), st.one_of(st.integers(max_value=15), st.integers(min_value=1025), NOT_INT)),
    "detection_sd_mm": (
        st.floats(0.01, 100.0),
        st.one_of(st.floats(max_value=0.0), st.floats(min_value=100.001), NOT_REAL),
    ),
    "window": (
        st.tuples(st.floats(-5000, 5000), st.floats(1.0, 1e5)),
        st.one_of(
            st.tuples(st.floats(allow_nan=True), st.floats(max_value=0.99)),
            st.tuples(st.just(float("nan")), st.floats(1, 10)),
            st.tuples(st.floats(1, 10)),
            st.just("lung"),
        ),
    ),
    "time_penalty": (st.floats(0, 1000), st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1000.01), NOT_REAL)),
    "mask_feedback": (
        st.sampled_from([True, False, 0, 1, np.bool_(True)]),
        st.one_of(st.integers(2, 9), st.text(max_size=2), st.none(), st.floats()),
    ),
    "render_scale": (st.integers(1, 2), st.one_of(st.integers(max_value=0), st.integers(min_value=17), NOT_INT)),
}
ARGS_3D = {
    "max_slices": (st.integers(1, 80), st.one_of(st.integers(max_value=0), st.integers(min_value=513), NOT_INT)),
    "propagate_margin_px": (st.integers(0, 16), st.one_of(st.integers(max_value=-1), NOT_INT)),
}


@pytest.mark.parametrize("env_id", IDS, ids=IDS)
@FUZZ
@given(data=st.data())
def test_constructor_arguments(env_id, data):
    """All arguments within their bounds: the env runs; one out of bounds: EnvArgumentError at construction."""
    specs = dict(ARGS, **(ARGS_3D if "3D" in env_id else {}))
    bad = data.draw(st.sampled_from([None, *specs]), label="argument out of bounds")
    kwargs = {}
    for name, (valid, invalid) in specs.items():
        kwargs[name] = data.draw(invalid if name == bad else valid, label=name)
    size = kwargs["viewport_px"]
    if bad != "viewport_px" and data.draw(st.booleans(), label="pan_step_px = viewport_px"):
        kwargs["pan_step_px"] = size
    kwargs.update(cases=synthetic_cases(), segmenter=EnvStubSegmenter(), render_mode="rgb_array")
    if bad is not None:
        with pytest.raises(EnvArgumentError):
            gym.make(env_id, **kwargs)
        return
    env = gym.make(env_id, **kwargs)
    obs, info = env.reset(seed=0)
    assert not non_finite([obs, info]) and env.observation_space.contains(obs)
    env.action_space.seed(0)
    check_step(env, env.step(env.action_space.sample()))
    assert env.render().dtype == np.uint8


def test_constructor_type_errors_are_type_errors():
    with pytest.raises(EnvArgumentTypeError) as exc:
        gym.make("hiseg_sim/NoduleSeg2D-v0", cases=synthetic_cases(), segmenter=EnvStubSegmenter(), viewport_px="96")
    assert isinstance(exc.value, TypeError) and isinstance(exc.value, ValueError)


# ---- hypothesis: random cases -----------------------------------------------------------------
SHAPES = hnp.array_shapes(min_dims=3, max_dims=3, min_side=1, max_side=24)
VOLUME = st.one_of(
    hnp.arrays(np.float64, SHAPES, elements=st.floats(-3e38, 3e38)),
    hnp.arrays(np.float32, SHAPES, elements=st.floats(-3000, 3000, width=32)),
    hnp.arrays(np.int16, SHAPES),
)
CASE_FLAWS = [
    "",
    "",
    "",
    "nan",
    "inf",
    "beyond_float32",
    "bool_volume",
    "mask_shape",
    "mask_values",
    "empty_gt",
    "spacing_value",
    "spacing_length",
    "spacing_type",
    "case_id",
    "readers",
]


@st.composite
def case_inputs(draw):
    """``(Case kwargs, flaw)``: valid inputs with at most one documented violation."""
    vol = draw(VOLUME)
    shape = vol.shape
    gt = draw(
        st.one_of(
            hnp.arrays(np.bool_, shape),
            hnp.arrays(np.uint8, shape, elements=st.integers(0, 1)),
            hnp.arrays(np.float32, shape, elements=st.sampled_from([0.0, 1.0])),
        )
    )
    gt.flat[draw(st.integers(0, gt.size - 1))] = 1
    spacing = draw(st.tuples(*[st.floats(1e-3, 1e3)] * 3))
    kw = {"case_id": "fuzz", "volume_hu": vol, "spacing_zyx": spacing, "gt": gt, "reader_masks": ()}
    flaw = draw(st.sampled_from(CASE_FLAWS))
    at = draw(st.integers(0, vol.size - 1))
    if flaw in ("nan", "inf", "beyond_float32"):
        vol = vol.astype(np.float64)
        vol.flat[at] = {"nan": np.nan, "inf": -np.inf, "beyond_float32": 1e39}[flaw]
        kw["volume_hu"] = vol
    elif flaw == "bool_volume":
        kw["volume_hu"] = vol > 0
    elif flaw == "mask_shape":
        kw["gt"] = np.ones((shape[0], shape[1], shape[2] + 1), bool)
    elif flaw == "mask_values":
        kw["gt"] = gt.astype(np.float32) * draw(st.sampled_from([2.0, 0.5, np.nan]))
    elif flaw == "empty_gt":
        kw["gt"] = np.zeros(shape, bool)
    elif flaw == "spacing_value":
        i = draw(st.integers(0, 2))
        bad = draw(st.one_of(st.floats(max_value=9.99e-4), st.floats(min_value=1000.01), st.just(float("nan"))))
        kw["spacing_zyx"] = spacing[:i] + (bad,) + spacing[i + 1 :]
    elif flaw == "spacing_length":
        kw["spacing_zyx"] = spacing[: draw(st.sampled_from([0, 1, 2]))] + spacing * draw(st.sampled_from([0, 1]))
    elif flaw == "spacing_type":
        kw["spacing_zyx"] = draw(st.sampled_from(["1,1,1", None, (True, 1.0, 1.0), ("1", 1.0, 1.0)]))
    elif flaw == "case_id":
        kw["case_id"] = draw(st.sampled_from(["", "  ", None, 7]))
    elif flaw == "readers":
        kw["reader_masks"] = draw(st.sampled_from([gt, None, (gt[..., :-1] if shape[2] > 1 else gt[None],)]))
    return kw, flaw


@settings(FUZZ, max_examples=60)
@given(inputs=case_inputs(), seed=st.integers(0, 1000))
def test_random_cases(inputs, seed):
    """Valid inputs make a Case that runs an episode in both envs; one violation raises CaseError."""
    kw, flaw = inputs
    if flaw:
        with pytest.raises(CaseError):
            Case(**kw)
        return
    case = Case(**kw)
    assert case.volume_hu.dtype == np.float32 and np.isfinite(case.volume_hu).all() and case.gt.any()
    rng = np.random.default_rng(seed)
    for env_id in IDS:
        extra = {"max_slices": 8} if "3D" in env_id else {}
        env = gym.make(env_id, cases=[case], segmenter=EnvStubSegmenter(), viewport_px=16, **extra)
        env.action_space.seed(seed)
        obs, info = env.reset(seed=seed)
        assert not non_finite([obs, info])
        for _ in range(6):
            out = env.step(env.action_space.sample() if rng.random() < 0.7 else BoxAction(0, 0, 15, 15))
            check_step(env, out)
            if out[2] or out[3]:
                break
        assert env.unwrapped.volume_mask().shape == case.shape


# ---- the benchmark fuzz run --------------------------------------------------------------------
def test_run_fuzz_counts_and_is_deterministic():
    from hiseg_sim.fuzz import run_fuzz

    a = run_fuzz(actions_per_env=120, seed=3, progress=False)
    b = run_fuzz(actions_per_env=120, seed=3, progress=False)
    assert set(a) == {"envs", "seconds"} and set(a["envs"]) == {"2d", "3d"}
    for key, r in a["envs"].items():
        assert set(r) == {"actions", "undocumented_exceptions", "nan", "documented_errors"}
        assert r["actions"] == 120 and r["undocumented_exceptions"] == 0 and r["nan"] == 0
        assert r["documented_errors"] > 0  # the junk was refused
        assert r == b["envs"][key]


def test_fuzz_cli_prints_json_last(capsys):
    from hiseg_sim.fuzz import main

    assert main(["--actions", "20", "--json", "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["envs"]["3d"]["actions"] == 20
