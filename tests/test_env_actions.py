"""The action space, the typed actions and the mapping between them."""

import numpy as np
import pytest

from hiseg_sim.env.actions import (
    N_KINDS_2D,
    N_KINDS_3D,
    Accept,
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

TYPED = [PointAction(3, 4), PointAction(5, 6, positive=False), BoxAction(1, 2, 30, 40), BoxAction(30, 40, 1, 2),
         Undo(), Accept(), NextSlice(), PrevSlice(), Propagate(1), Propagate(-1)]


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
