"""The action space, the typed actions and the mapping between them."""

import numpy as np
import pytest

from hiseg_sim.env.actions import (
    N_KINDS_2D,
    N_KINDS_3D,
    Accept,
    ActionTypeError,
    BoxAction,
    InvalidActionError,
    Kind,
    NextSlice,
    PointAction,
    PrevSlice,
    Propagate,
    Undo,
    action_from_dict,
    action_space,
    action_to_dict,
    coerce_action,
    from_array,
    to_array,
)

TYPED = [
    PointAction(3, 4),
    PointAction(5, 6, positive=False),
    BoxAction(1, 2, 30, 40),
    BoxAction(30, 40, 1, 2),
    Undo(),
    Accept(),
    NextSlice(),
    PrevSlice(),
    Propagate(1),
    Propagate(-1),
]


@pytest.mark.parametrize("action", TYPED, ids=lambda a: type(a).__name__)
def test_round_trips(action):
    arr = to_array(action)
    assert arr.dtype == np.int64 and arr.shape == (5,)
    assert from_array(arr) == action
    assert action_from_dict(action_to_dict(action)) == action
    assert coerce_action(arr, action_space(N_KINDS_3D, 64, 64)) == action


def test_kind_numbers_are_the_documented_ones():
    assert [int(a.kind) for a in TYPED] == [0, 1, 2, 2, 3, 4, 5, 6, 7, 8]
    assert Kind.PROPAGATE_PREV == 8 and N_KINDS_2D == 5 and N_KINDS_3D == 9


def test_float_coordinates_round_to_nearest_pixel():
    assert to_array(PointAction(3.4, 4.6)).tolist() == [0, 3, 5, 0, 0]
    assert to_array(BoxAction(0.5, 1.49, 9.51, 10.0)).tolist()[1:] == [0, 1, 10, 10]


def test_space_check_failures():
    space2d = action_space(N_KINDS_2D, 32, 32)
    with pytest.raises(InvalidActionError):
        coerce_action(np.array([5, 0, 0, 0, 0]), space2d)  # 3-D kind in 2-D
    with pytest.raises(InvalidActionError):
        coerce_action(np.array([0, 32, 0, 0, 0]), space2d)  # x == W
    with pytest.raises(InvalidActionError):
        coerce_action(np.array([0, -1, 0, 0, 0]), space2d)
    with pytest.raises(InvalidActionError):
        coerce_action(np.array([0, 1, 2]), space2d)  # wrong shape
    with pytest.raises(InvalidActionError):
        coerce_action(np.array([0, 1.5, 2, 0, 0]), space2d)  # not integers
    with pytest.raises(InvalidActionError):
        coerce_action(NextSlice(), space2d)
    with pytest.raises(InvalidActionError):
        coerce_action(PointAction(-0.1, 3), space2d)
    with pytest.raises(InvalidActionError):
        coerce_action(PointAction(float("nan"), 3), space2d)
    with pytest.raises(InvalidActionError):
        coerce_action(BoxAction(0, 0, 40, 3), space2d)
    with pytest.raises(InvalidActionError):
        coerce_action("box please", space2d)
    with pytest.raises(InvalidActionError):
        Propagate(2)
    # integral floats and lists are accepted
    assert coerce_action([2.0, 1.0, 2.0, 3.0, 4.0], space2d) == BoxAction(1, 2, 3, 4)
    assert coerce_action(PointAction(31.0, 0.0), space2d) == PointAction(31.0, 0.0)


def test_box_helpers():
    b = BoxAction(30, 40, 1, 2)
    assert b.reversed and b.normalised() == BoxAction(1, 2, 30, 40) and not b.normalised().reversed
    assert BoxAction(3, 3, 3, 9).zero_area and BoxAction(3, 3, 3.5, 9).zero_area and not BoxAction(3, 3, 4, 9).zero_area


# ---- field checks of the typed actions --------------------------------------------------------
@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: PointAction("3", "4"), r"PointAction\.x"),
        (lambda: PointAction(3, None), r"PointAction\.y"),
        (lambda: PointAction(True, 4), r"PointAction\.x"),
        (lambda: PointAction(3, 4, positive="no"), r"PointAction\.positive"),
        (lambda: PointAction(3, 4, positive=0.5), r"PointAction\.positive"),
        (lambda: PointAction(3, 4, positive=None), r"PointAction\.positive"),
        (lambda: BoxAction(0, 0, "9", 9), r"BoxAction\.x1"),
        (lambda: BoxAction(0, 0, 9, [9]), r"BoxAction\.y1"),
        (lambda: Propagate(True), r"Propagate\.direction"),
        (lambda: Propagate(1.0), r"Propagate\.direction"),
    ],
)
def test_fields_of_the_wrong_type_raise_a_type_error_naming_them(make, field):
    with pytest.raises(ActionTypeError, match=field) as exc:
        make()
    assert isinstance(exc.value, TypeError) and isinstance(exc.value, InvalidActionError)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "make, field",
    [
        (lambda: PointAction(float("nan"), 4), r"PointAction\.x must be a finite number"),
        (lambda: PointAction(3, -float("inf")), r"PointAction\.y must be a finite number"),
        (lambda: PointAction(3, 10**400), r"PointAction\.y must be a finite number"),
        (lambda: PointAction(3, 4, positive=2), r"PointAction\.positive must be True or False \(or 1 / 0\); got 2"),
        (lambda: BoxAction(0, float("inf"), 9, 9), r"BoxAction\.y0 must be a finite number"),
        (lambda: Propagate(0), r"Propagate\.direction must be \+1 or -1; got 0"),
    ],
)
def test_field_values_out_of_bounds_raise_invalid_action_error(make, field):
    with pytest.raises(InvalidActionError, match=field) as exc:
        make()
    assert not isinstance(exc.value, TypeError)


def test_accepted_fields_are_normalised_without_changing_the_numbers():
    p = PointAction(np.float32(3.5), np.int64(4), positive=np.bool_(False))
    assert (p.x, p.y, p.positive) == (3.5, 4, False)
    assert type(p.x) is float and type(p.y) is int and type(p.positive) is bool
    assert PointAction(3, 4, 1).positive is True and PointAction(3, 4, 0).kind == Kind.NEGATIVE
    assert PointAction(3, 4, 1) == PointAction(3, 4, True)
    assert Propagate(np.int64(-1)).direction == -1 and type(Propagate(np.int64(-1)).direction) is int
    b = BoxAction(np.float64(0.25), 1, np.uint8(9), 10.0)
    assert (b.x0, b.y0, b.x1, b.y1) == (0.25, 1, 9, 10.0) and to_array(b).tolist() == [2, 0, 1, 9, 10]


def test_action_dicts_are_checked_like_typed_actions():
    with pytest.raises(ActionTypeError, match=r"PointAction\.positive"):
        action_from_dict({"kind": "point", "x": 1, "y": 2, "positive": "no"})
    with pytest.raises(InvalidActionError, match="point action dict lacks y"):
        action_from_dict({"kind": "point", "x": 1})
    with pytest.raises(InvalidActionError, match="box action dict lacks x1, y1"):
        action_from_dict({"kind": "box", "x0": 1, "y0": 2})
    with pytest.raises(InvalidActionError, match="unknown action kind 'swipe'"):
        action_from_dict({"kind": "swipe"})
    with pytest.raises(ActionTypeError, match="an action dict is needed"):
        action_from_dict(["point", 1, 2])
    with pytest.raises(ActionTypeError, match=r"Propagate\.direction"):
        action_from_dict({"kind": "propagate", "direction": "up"})
    assert action_from_dict({"kind": "point", "x": 1, "y": 2}) == PointAction(1, 2, True)


def test_arrays_are_checked_without_wrapping_round():
    space2d = action_space(N_KINDS_2D, 32, 32)
    with pytest.raises(InvalidActionError, match="is not in"):
        coerce_action(np.array([0, 2**64 - 1, 0, 0, 0], np.uint64), space2d)
    with pytest.raises(InvalidActionError, match="expected 5 integers"):
        coerce_action(np.array([0, 2.0**64, 0, 0, 0]), space2d)  # integral, but no pixel index
    with pytest.raises(InvalidActionError, match="expected 5 integers"):
        coerce_action(np.array([True, False, True, True, False]), space2d)
    with pytest.raises(InvalidActionError, match="action kind 9 is not one of 0..8"):
        from_array([9, 0, 0, 0, 0])
    with pytest.raises(InvalidActionError, match="is not 5 integers"):
        from_array([0, 1.5, 0, 0, 0])  # used to be truncated to 1
    with pytest.raises(InvalidActionError, match="is not 5 integers"):
        from_array([0, 1, 2])
    with pytest.raises(InvalidActionError, match="do not fit a pixel index"):
        to_array(PointAction(1e300, 0))
    with pytest.raises(ActionTypeError, match="to_array takes a typed action"):
        to_array([0, 1, 2, 3, 4])
    assert from_array(np.array([[1, 2, 3, 0, 0]])) == PointAction(2, 3, False)
