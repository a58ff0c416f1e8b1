"""The time model: pure functions of the action and the viewport geometry."""

import dataclasses
import math

import pytest

from hiseg_sim.timing import KLM, TimeModel, action_seconds, fitts_seconds, klm_seconds


def test_klm_operators_are_the_published_values():
    assert KLM == {"K": 0.20, "P": 1.10, "H": 0.40, "M": 1.35, "B": 0.20}
    assert klm_seconds("MK") == pytest.approx(1.55)
    assert klm_seconds("M K K") == pytest.approx(1.75)
    with pytest.raises(ValueError, match="unknown KLM operator"):
        klm_seconds("MX")


def test_fitts_law_card_english_burr():
    # MT = 1.03 + 0.096 log2(D/S + 0.5)
    assert fitts_seconds(300, 8) == pytest.approx(1.03 + 0.096 * math.log2(300 / 8 + 0.5))
    assert fitts_seconds(0, 8) == 0.0  # no movement, no time
    assert fitts_seconds(0.5, 8) == 0.0  # below min_move_px
    ds = [2, 10, 50, 200, 800]
    assert all(a < b for a, b in zip([fitts_seconds(d, 8) for d in ds], [fitts_seconds(d, 8) for d in ds[1:]]))
    assert fitts_seconds(200, 4) > fitts_seconds(200, 16)
    with pytest.raises(ValueError):
        fitts_seconds(10, 0)
    with pytest.raises(ValueError):
        fitts_seconds(-1, 8)
    with pytest.raises(ValueError):
        fitts_seconds(float("nan"), 8)


def test_point_charge_is_mental_plus_fitts_plus_click_plus_latency():
    tm = TimeModel()
    c = action_seconds(tm, "point", pointer=(0, 0), xy=(30, 40), decoded=True)
    expected = tm.M + fitts_seconds(50 * tm.screen_scale, tm.point_target_px) + tm.B + tm.decode_latency_s
    assert c.seconds == pytest.approx(expected)
    assert c.pointer == (30.0, 40.0) and c.tool == "point" and c.device == "mouse"
    assert sum(c.parts.values()) == pytest.approx(c.seconds)
    # switching tools costs a keystroke
    sw = action_seconds(tm, "point", pointer=(0, 0), tool="box", xy=(30, 40), decoded=True)
    assert sw.seconds == pytest.approx(expected + tm.K)


def test_box_is_two_pointing_movements_and_a_drag():
    tm = TimeModel()
    c = action_seconds(tm, "box", pointer=(64, 64), xy=(10, 10), xy2=(50, 40), decoded=True)
    expected = (
        tm.M
        + tm.pointing((64, 64), (10, 10), tm.corner_target_px)
        + tm.pointing((10, 10), (50, 40), tm.corner_target_px)
        + tm.B
        + tm.decode_latency_s
    )
    assert c.seconds == pytest.approx(expected)
    assert c.pointer == (50.0, 40.0) and c.tool == "box"
    with pytest.raises(ValueError):
        action_seconds(tm, "box", pointer=(0, 0), xy=(1, 1))


def test_keyboard_actions_and_scrolling():
    tm = TimeModel()
    assert action_seconds(tm, "undo", pointer=(5, 5)).seconds == pytest.approx(tm.M + 2 * tm.K)
    assert action_seconds(tm, "accept", pointer=(5, 5)).seconds == pytest.approx(tm.M + tm.K)
    assert action_seconds(tm, "next", pointer=(5, 5), slices_moved=1).seconds == pytest.approx(tm.scroll_s)
    assert action_seconds(tm, "prev", pointer=(5, 5), slices_moved=3).seconds == pytest.approx(3 * tm.scroll_s)
    prop = action_seconds(tm, "propagate", pointer=(5, 5), slices_moved=1, decoded=True)
    assert prop.seconds == pytest.approx(tm.M + tm.K + tm.scroll_s + tm.decode_latency_s)
    # the pointer does not move on keyboard actions
    assert prop.pointer == (5.0, 5.0) and prop.device == "keyboard"
    with pytest.raises(ValueError, match="unknown action kind"):
        action_seconds(tm, "wiggle", pointer=(0, 0))


def test_latency_fixed_by_default_measured_on_request_and_none_when_refused():
    tm = TimeModel(decode_latency_s=0.1, encode_latency_s=2.0)
    fixed = action_seconds(tm, "point", pointer=(0, 0), xy=(0, 0), decoded=True, measured_latency_s=9.0)
    refused = action_seconds(tm, "point", pointer=(0, 0), xy=(0, 0), decoded=False)
    assert fixed.seconds - refused.seconds == pytest.approx(0.1)
    measured = action_seconds(
        tm.scaled(use_measured_latency=True), "point", pointer=(0, 0), xy=(0, 0), decoded=True, measured_latency_s=0.5
    )
    assert measured.seconds - refused.seconds == pytest.approx(0.5)
    new = action_seconds(tm, "next", pointer=(0, 0), slices_moved=1, new_slice=True)
    assert new.seconds == pytest.approx(tm.scroll_s + 2.0)


def test_scale_factors_and_homing():
    tm = TimeModel()
    base = action_seconds(tm, "point", pointer=(0, 0), xy=(40, 0), decoded=True)
    slow = action_seconds(
        tm.scaled(mental_scale=2.0, motor_scale=1.5, latency_scale=0.0),
        "point",
        pointer=(0, 0),
        xy=(40, 0),
        decoded=True,
    )
    assert slow.parts["mental"] == pytest.approx(2 * base.parts["mental"])
    assert slow.parts["motor"] == pytest.approx(1.5 * base.parts["motor"])
    assert slow.parts["latency"] == 0.0
    h = action_seconds(tm.scaled(homing=True), "undo", pointer=(0, 0), device="mouse")
    assert h.seconds == pytest.approx(tm.M + 2 * tm.K + tm.H)
    assert action_seconds(tm.scaled(homing=True), "undo", pointer=(0, 0), device="keyboard").seconds == pytest.approx(
        tm.M + 2 * tm.K
    )
    no_fitts = action_seconds(tm.scaled(use_fitts=False), "point", pointer=(0, 0), xy=(40, 0))
    assert no_fitts.seconds == pytest.approx(tm.M + tm.P + tm.B)


def test_pure_and_frozen():
    tm = TimeModel()
    a = action_seconds(tm, "box", pointer=(1, 2), xy=(3, 4), xy2=(30, 40), decoded=True)
    b = action_seconds(tm, "box", pointer=(1, 2), xy=(3, 4), xy2=(30, 40), decoded=True)
    assert a == b
    with pytest.raises(dataclasses.FrozenInstanceError):
        tm.M = 2.0  # type: ignore[misc]
    with pytest.raises(ValueError):
        TimeModel(M=-1.0)
    with pytest.raises(ValueError):
        TimeModel(screen_scale=0.0)


def test_power_law_of_practice():
    from hiseg_sim.timing import practice_factor

    # T_n / T_1 = floor + (1 - floor) n^-a (Newell & Rosenbloom 1981)
    assert practice_factor(1, 0.4) == 1.0 and practice_factor(25, 0.0) == 1.0
    assert practice_factor(10, 0.4) == pytest.approx(10**-0.4)
    assert practice_factor(10, 0.4, floor=0.5) == pytest.approx(0.5 + 0.5 * 10**-0.4)
    seq = [practice_factor(n, 0.4, 0.3) for n in range(1, 200)]
    assert all(a > b for a, b in zip(seq, seq[1:])) and seq[-1] > 0.3  # falls, never below the practised share
    for bad in ((0, 0.4, 0.0), (3, -0.1, 0.0), (3, 0.4, 1.5)):
        with pytest.raises(ValueError):
            practice_factor(*bad)


def test_a_group_gets_faster_with_practice_toward_the_practised_operators():
    from hiseg_sim.annotators.behaviour.execution import ExecutionParams, TimeParams, time_model_for

    ex = ExecutionParams()
    novice = TimeParams(
        mental_scale=1.5, hesitation=0.3, mental_practice_exp=0.4, motor_practice_exp=0.2, motor_practised_share=0.8
    )
    first = time_model_for(ex, novice, (0.7, 0.7))
    unpractised = time_model_for(ex, TimeParams(mental_scale=1.5, hesitation=0.3), (0.7, 0.7))
    assert first == unpractised  # the first case: nothing learned yet
    m = [time_model_for(ex, novice, (0.7, 0.7), practice_n=n) for n in (1, 5, 30, 1_000_000)]
    assert m[0].mental_scale > m[1].mental_scale > m[2].mental_scale > m[3].mental_scale >= 1.0  # toward the KLM M
    assert m[3].mental_scale == pytest.approx(1.0, abs=0.01)
    assert m[2].motor_scale == pytest.approx(0.8 + 0.2 * 30**-0.2) and m[3].motor_scale > 0.8
    expert = TimeParams(mental_practice_exp=0.4, motor_practice_exp=0.2)  # at the KLM M, practised hand
    assert time_model_for(ex, expert, (0.7, 0.7), practice_n=30) == time_model_for(ex, expert, (0.7, 0.7))
    tm = m[2]
    click = action_seconds(tm, "point", pointer=(0, 0), xy=(30, 40), decoded=True).seconds
    assert click < action_seconds(m[0], "point", pointer=(0, 0), xy=(30, 40), decoded=True).seconds


def test_a_time_model_whose_seconds_would_overflow_is_refused():
    """M = 1e308 times a scale of 10 is an infinite second count, and 0 x inf a NaN reward."""
    from hiseg_sim.timing import TimeModel

    with pytest.raises(ValueError, match="M must be a number in"):
        TimeModel(M=1e308)
    with pytest.raises(ValueError, match="screen_scale"):
        TimeModel(screen_scale=1e9)
    assert TimeModel(M=2.0).M == 2.0


def test_inspecting_a_slice_is_charged_per_slice_shown_and_nowhere_else():
    base, tm = TimeModel(), TimeModel(inspect_s=0.5)
    for kind in ("next", "prev"):
        extra = action_seconds(tm, kind, pointer=(5, 5), slices_moved=2).seconds
        assert extra - action_seconds(base, kind, pointer=(5, 5), slices_moved=2).seconds == pytest.approx(1.0)
    prop = action_seconds(tm, "propagate", pointer=(5, 5), slices_moved=1, decoded=True)
    assert prop.seconds - action_seconds(base, "propagate", pointer=(5, 5), slices_moved=1, decoded=True).seconds == (
        pytest.approx(0.5)
    )
    assert prop.parts["mental"] == pytest.approx(tm.M + 0.5)  # a look is mental time, scaled with M
    for kind, kw in (("point", {"xy": (9, 9)}), ("box", {"xy": (1, 1), "xy2": (9, 9)}), ("undo", {}), ("accept", {})):
        assert action_seconds(tm, kind, pointer=(5, 5), **kw) == action_seconds(base, kind, pointer=(5, 5), **kw)
    slower = tm.scaled(mental_scale=2.0)
    assert action_seconds(slower, "next", pointer=(0, 0), slices_moved=1).parts["mental"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="inspect_s"):
        TimeModel(inspect_s=-1.0)
