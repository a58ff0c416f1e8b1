"""Actions of the nodule environments: a ``MultiDiscrete`` space for learners, typed actions for scripts.

The space is ``MultiDiscrete([n_kinds, W, H, W, H])``: an action is ``[kind, x, y, x2, y2]`` with
``(x, y)`` and ``(x2, y2)`` viewport pixels (``x`` the column, ``y`` the row).

=====  ===================  ==========================  ===========================================
kind   typed action         uses                        meaning
=====  ===================  ==========================  ===========================================
0      ``PointAction(x, y, positive=True)``   x, y      positive click (inside the nodule)
1      ``PointAction(x, y, positive=False)``  x, y      negative click (outside the nodule)
2      ``BoxAction(x0, y0, x1, y1)``  x, y, x2, y2      box with corners (x, y) and (x2, y2), ``XYXY``
3      ``Undo()``           –                           take back the last prompt on this slice
4      ``Accept()``         –                           the mask is done: end the episode
5      ``NextSlice()``      –                           3-D only: view slice z + 1
6      ``PrevSlice()``      –                           3-D only: view slice z − 1
7      ``Propagate(+1)``    –                           3-D only: this slice's mask → prompt on z + 1
8      ``Propagate(-1)``    –                           3-D only: this slice's mask → prompt on z − 1
=====  ===================  ==========================  ===========================================

Unused entries are ignored (``to_array`` writes 0 there). The 2-D environment has kinds 0-4, the
3-D one 0-8. Typed actions may carry sub-pixel ``float`` coordinates (a simulated hand is not on
the pixel grid); :func:`to_array` rounds them to the nearest pixel. Going back and forth,
``from_array(to_array(a)) == a`` holds for every typed action with integer coordinates.

Anything outside the space (a kind the environment does not have, a coordinate outside
``[0, W-1] x [0, H-1]``, NaN) raises :class:`InvalidActionError`: the space check fails.

Typed actions check their own fields when made: coordinates are real numbers (``int`` or
``float``, numpy scalars included; not ``bool``, not strings) and finite; ``positive`` is a
``bool`` or the integer 0 or 1 (stored as a ``bool``); ``Propagate.direction`` is the integer +1
or -1. A field of the wrong type raises :class:`ActionTypeError` (a ``TypeError`` and an
:class:`InvalidActionError`); a bad value :class:`InvalidActionError` (a ``ValueError``). Both
name the field.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any

import numpy as np
from gymnasium import spaces

__all__ = [
    "Accept",
    "Action",
    "ActionTypeError",
    "BoxAction",
    "InvalidActionError",
    "Kind",
    "NextSlice",
    "PointAction",
    "PrevSlice",
    "Propagate",
    "Undo",
    "action_from_dict",
    "action_space",
    "action_to_dict",
    "coerce_action",
    "from_array",
    "to_array",
]


#: Coordinates at or beyond this magnitude are not pixel indices (and would wrap round in int64).
_INT_LIMIT = 2.0**53


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for one-line messages."""
    r = " ".join(repr(value).split())
    return r if len(r) <= limit else r[: limit - 3] + "..."


class InvalidActionError(ValueError):
    """An action outside the environment's action space (fails the space check), or a bad field value."""


class ActionTypeError(InvalidActionError, TypeError):
    """A typed action's field of the wrong type, e.g. a string coordinate (also an :class:`InvalidActionError`)."""


def _coordinate(owner: str, name: str, value: Any) -> int | float:
    """``value`` as a Python ``int`` or ``float`` (the same number), after checking it is a finite real."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ActionTypeError(
            f"{owner}.{name} must be a real number (viewport pixels); got {type(value).__name__} {_show(value)}"
        )
    v = int(value) if isinstance(value, numbers.Integral) else float(value)
    try:
        finite = math.isfinite(v)
    except OverflowError:  # an int too large for a float
        finite = False
    if not finite:
        raise InvalidActionError(f"{owner}.{name} must be a finite number (viewport pixels); got {_show(value)}")
    return v


def _flag(owner: str, name: str, value: Any) -> bool:
    """``value`` as a ``bool``: a ``bool``, a numpy bool or the integer 0 or 1."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        if int(value) in (0, 1):
            return bool(value)
        raise InvalidActionError(f"{owner}.{name} must be True or False (or 1 / 0); got {_show(value)}")
    raise ActionTypeError(f"{owner}.{name} must be True or False (or 1 / 0); got {type(value).__name__} {_show(value)}")


class Kind(IntEnum):
    """The ``kind`` entry of a ``MultiDiscrete`` action."""

    POSITIVE = 0
    NEGATIVE = 1
    BOX = 2
    UNDO = 3
    ACCEPT = 4
    NEXT = 5
    PREV = 6
    PROPAGATE_NEXT = 7
    PROPAGATE_PREV = 8


N_KINDS_2D = 5
N_KINDS_3D = 9


@dataclass(frozen=True)
class PointAction:
    """A click at ``(x, y)`` viewport pixels; ``positive`` = inside the object."""

    x: float
    y: float
    positive: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "x", _coordinate("PointAction", "x", self.x))
        object.__setattr__(self, "y", _coordinate("PointAction", "y", self.y))
        object.__setattr__(self, "positive", _flag("PointAction", "positive", self.positive))

    @property
    def kind(self) -> Kind:
        return Kind.POSITIVE if self.positive else Kind.NEGATIVE


@dataclass(frozen=True)
class BoxAction:
    """A box dragged from ``(x0, y0)`` to ``(x1, y1)``, viewport pixels (``XYXY``).

    A reversed box (``x1 < x0`` or ``y1 < y0``) is a legal drag: the environment sorts the corners.
    """

    x0: float
    y0: float
    x1: float
    y1: float

    def __post_init__(self) -> None:
        for name in ("x0", "y0", "x1", "y1"):
            object.__setattr__(self, name, _coordinate("BoxAction", name, getattr(self, name)))

    @property
    def kind(self) -> Kind:
        return Kind.BOX

    def normalised(self) -> BoxAction:
        """The same box with ``x0 <= x1`` and ``y0 <= y1``."""
        return BoxAction(min(self.x0, self.x1), min(self.y0, self.y1), max(self.x0, self.x1), max(self.y0, self.y1))

    @property
    def reversed(self) -> bool:
        return self.x1 < self.x0 or self.y1 < self.y0

    @property
    def zero_area(self) -> bool:
        """Narrower or lower than one pixel: the drag did not move."""
        return abs(self.x1 - self.x0) < 1 or abs(self.y1 - self.y0) < 1


@dataclass(frozen=True)
class Undo:
    """Take back the last prompt on the current slice (restores the mask before it)."""

    @property
    def kind(self) -> Kind:
        return Kind.UNDO


@dataclass(frozen=True)
class Accept:
    """Declare the annotation finished; ends the episode."""

    @property
    def kind(self) -> Kind:
        return Kind.ACCEPT


@dataclass(frozen=True)
class NextSlice:
    """View slice ``z + 1`` (3-D only)."""

    @property
    def kind(self) -> Kind:
        return Kind.NEXT


@dataclass(frozen=True)
class PrevSlice:
    """View slice ``z - 1`` (3-D only)."""

    @property
    def kind(self) -> Kind:
        return Kind.PREV


@dataclass(frozen=True)
class Propagate:
    """Use this slice's mask as the box and mask prompt of slice ``z + direction`` and go there (3-D only)."""

    direction: int = 1

    def __post_init__(self) -> None:
        d = self.direction
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, numbers.Integral):
            raise ActionTypeError(
                f"Propagate.direction must be the integer +1 or -1; got {type(d).__name__} {_show(d)}"
            )
        if d not in (1, -1):
            raise InvalidActionError(f"Propagate.direction must be +1 or -1; got {_show(d)}")
        object.__setattr__(self, "direction", int(d))

    @property
    def kind(self) -> Kind:
        return Kind.PROPAGATE_NEXT if self.direction == 1 else Kind.PROPAGATE_PREV


Action = PointAction | BoxAction | Undo | Accept | NextSlice | PrevSlice | Propagate
_TYPED = (PointAction, BoxAction, Undo, Accept, NextSlice, PrevSlice, Propagate)
_NAMES = {
    Kind.POSITIVE: "point",
    Kind.NEGATIVE: "point",
    Kind.BOX: "box",
    Kind.UNDO: "undo",
    Kind.ACCEPT: "accept",
    Kind.NEXT: "next",
    Kind.PREV: "prev",
    Kind.PROPAGATE_NEXT: "propagate",
    Kind.PROPAGATE_PREV: "propagate",
}


def kind_name(action: Action) -> str:
    """The time-model name of an action: point, box, undo, accept, next, prev or propagate."""
    return _NAMES[action.kind]


def action_space(n_kinds: int, width: int, height: int) -> spaces.MultiDiscrete:
    """``MultiDiscrete([n_kinds, W, H, W, H])`` (int64)."""
    return spaces.MultiDiscrete(np.array([n_kinds, width, height, width, height], dtype=np.int64))


def from_array(a: Any) -> Action:
    """Typed action of a ``[kind, x, y, x2, y2]`` array (no range check of x, y; see :func:`coerce_action`).

    Raises :class:`InvalidActionError` unless ``a`` holds 5 integral numbers and a known kind.
    """
    try:
        flat = np.asarray(a).reshape(-1)
        ok = flat.shape == (5,) and (
            np.issubdtype(flat.dtype, np.integer)
            or (
                np.issubdtype(flat.dtype, np.floating)
                and bool(np.all(np.isfinite(flat)))
                and bool(np.all(flat == np.rint(flat)))
            )
        )
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InvalidActionError(f"action {_show(a)} is not 5 integers [kind, x, y, x2, y2]")
    k, x, y, x2, y2 = (int(v) for v in flat)
    if not 0 <= k < len(Kind):
        raise InvalidActionError(f"action kind {k} is not one of 0..{len(Kind) - 1}")
    kind = Kind(k)
    simple: dict[Kind, Action]
    if kind in (Kind.POSITIVE, Kind.NEGATIVE):
        return PointAction(x, y, kind == Kind.POSITIVE)
    if kind == Kind.BOX:
        return BoxAction(x, y, x2, y2)
    simple = {
        Kind.UNDO: Undo(),
        Kind.ACCEPT: Accept(),
        Kind.NEXT: NextSlice(),
        Kind.PREV: PrevSlice(),
        Kind.PROPAGATE_NEXT: Propagate(1),
        Kind.PROPAGATE_PREV: Propagate(-1),
    }
    return simple[kind]


def to_array(action: Action) -> np.ndarray:
    """``[kind, x, y, x2, y2]`` int64 of a typed action; coordinates rounded to the nearest pixel."""
    if not isinstance(action, _TYPED):
        raise ActionTypeError(f"to_array takes a typed action; got {type(action).__name__}")
    out = np.zeros(5, dtype=np.int64)
    out[0] = int(action.kind)
    if isinstance(action, PointAction):
        xy = np.rint([action.x, action.y])
    elif isinstance(action, BoxAction):
        xy = np.rint([action.x0, action.y0, action.x1, action.y1])
    else:
        return out
    if not np.all(np.abs(xy) < _INT_LIMIT):  # beyond this the int64 cast would wrap round
        raise InvalidActionError(f"{type(action).__name__} coordinates {xy.tolist()} do not fit a pixel index")
    out[1 : 1 + xy.size] = xy
    return out


def action_to_dict(action: Action) -> dict:
    """JSON-ready dict of a typed action, e.g. ``{"kind": "box", "x0": 3, "y0": 4, "x1": 20, "y1": 30}``.

    >>> action_to_dict(PointAction(3, 4, positive=False))
    {'kind': 'point', 'x': 3, 'y': 4, 'positive': False}
    """
    d = {"kind": kind_name(action)}
    d.update(asdict(action))
    return d


def action_from_dict(d: dict) -> Action:
    """Inverse of :func:`action_to_dict`; the fields are checked as the typed action checks them."""
    if not isinstance(d, Mapping):
        raise ActionTypeError(f"an action dict is needed, e.g. {{'kind': 'undo'}}; got {type(d).__name__}")
    kind = d.get("kind")
    fields = {"point": ("x", "y"), "box": ("x0", "y0", "x1", "y1")}.get(str(kind), ())
    missing = [f for f in fields if f not in d]
    if missing:
        raise InvalidActionError(f"{kind} action dict lacks {', '.join(missing)}: {_show(d)}")
    if kind == "point":
        return PointAction(d["x"], d["y"], d.get("positive", True))
    if kind == "box":
        return BoxAction(d["x0"], d["y0"], d["x1"], d["y1"])
    if kind == "propagate":
        return Propagate(d.get("direction", 1))
    simple: dict[str, Callable[[], Action]] = {"undo": Undo, "accept": Accept, "next": NextSlice, "prev": PrevSlice}
    if not isinstance(kind, str) or kind not in simple:
        raise InvalidActionError(
            f"unknown action kind {_show(kind)} in {_show(d)}; one of point, box, {', '.join(simple)}, propagate"
        )
    return simple[kind]()


def _check_xy(x: float, y: float, width: int, height: int, what: str) -> None:
    if not (np.isfinite(x) and np.isfinite(y)):
        raise InvalidActionError(f"{what} ({x}, {y}) is not finite")
    if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
        raise InvalidActionError(
            f"{what} ({x}, {y}) lies outside the {width}x{height} viewport "
            f"(x in [0, {width - 1}], y in [0, {height - 1}]): not in the action space"
        )


def coerce_action(action: Any, space: spaces.MultiDiscrete) -> Action:
    """Check ``action`` (a typed action or a ``[kind, x, y, x2, y2]`` array) against ``space``.

    Returns the typed action. Raises :class:`InvalidActionError` when it is not in the space.
    """
    n_kinds, width = int(space.nvec[0]), int(space.nvec[1])
    height = int(space.nvec[2])
    if isinstance(action, _TYPED):
        if int(action.kind) >= n_kinds:
            raise InvalidActionError(
                f"{type(action).__name__} is not available here (this environment has kinds "
                f"0..{n_kinds - 1}); it is not in the action space"
            )
        if isinstance(action, PointAction):
            _check_xy(action.x, action.y, width, height, "point")
        elif isinstance(action, BoxAction):
            _check_xy(action.x0, action.y0, width, height, "box corner")
            _check_xy(action.x1, action.y1, width, height, "box corner")
        return action
    try:
        arr = np.asarray(action)
    except Exception as exc:  # noqa: BLE001 - whatever numpy makes of it, it is not an action
        raise InvalidActionError(f"action {_show(action)} is neither a typed action nor an array") from exc
    if arr.shape != (5,) or not np.issubdtype(arr.dtype, np.integer):
        if (
            arr.shape == (5,)
            and np.issubdtype(arr.dtype, np.floating)
            and np.all(np.isfinite(arr))
            and np.all(arr == np.rint(arr))
            and np.all(np.abs(arr) < _INT_LIMIT)
        ):
            arr = arr.astype(np.int64)
        else:
            raise InvalidActionError(
                f"action {_show(action)} is not in {space}: expected 5 integers [kind, x, y, x2, y2]"
            )
    # Compared before any cast, so a huge unsigned entry cannot wrap round into the space.
    if not (np.all(arr >= 0) and np.all(arr < space.nvec)):
        raise InvalidActionError(
            f"action {arr.tolist()} is not in {space} (kind < {n_kinds}, x < {width}, y < {height})"
        )
    return from_array(arr.astype(space.dtype))
