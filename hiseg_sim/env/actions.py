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
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import IntEnum
from typing import Any, Union

import numpy as np
from gymnasium import spaces

__all__ = [
    "Accept",
    "Action",
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


class InvalidActionError(ValueError):
    """An action outside the environment's action space (fails the space check)."""


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

    @property
    def kind(self) -> Kind:
        return Kind.BOX

    def normalised(self) -> "BoxAction":
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
        if self.direction not in (1, -1):
            raise InvalidActionError(f"Propagate.direction must be +1 or -1; got {self.direction!r}")

    @property
    def kind(self) -> Kind:
        return Kind.PROPAGATE_NEXT if self.direction == 1 else Kind.PROPAGATE_PREV


Action = Union[PointAction, BoxAction, Undo, Accept, NextSlice, PrevSlice, Propagate]
_TYPED = (PointAction, BoxAction, Undo, Accept, NextSlice, PrevSlice, Propagate)
_NAMES = {Kind.POSITIVE: "point", Kind.NEGATIVE: "point", Kind.BOX: "box", Kind.UNDO: "undo", Kind.ACCEPT: "accept",
          Kind.NEXT: "next", Kind.PREV: "prev", Kind.PROPAGATE_NEXT: "propagate", Kind.PROPAGATE_PREV: "propagate"}


def kind_name(action: Action) -> str:
    """The time-model name of an action: point, box, undo, accept, next, prev or propagate."""
    return _NAMES[action.kind]


def action_space(n_kinds: int, width: int, height: int) -> spaces.MultiDiscrete:
    """``MultiDiscrete([n_kinds, W, H, W, H])`` (int64)."""
    return spaces.MultiDiscrete(np.array([n_kinds, width, height, width, height], dtype=np.int64))


def from_array(a: Any) -> Action:
    """Typed action of a ``[kind, x, y, x2, y2]`` array (no range check; see :func:`coerce_action`)."""
    k, x, y, x2, y2 = (int(v) for v in np.asarray(a).reshape(-1)[:5])
    kind = Kind(k)
    if kind in (Kind.POSITIVE, Kind.NEGATIVE):
        return PointAction(x, y, kind == Kind.POSITIVE)
    if kind == Kind.BOX:
        return BoxAction(x, y, x2, y2)
    return {Kind.UNDO: Undo(), Kind.ACCEPT: Accept(), Kind.NEXT: NextSlice(), Kind.PREV: PrevSlice(),
            Kind.PROPAGATE_NEXT: Propagate(1), Kind.PROPAGATE_PREV: Propagate(-1)}[kind]


def to_array(action: Action) -> np.ndarray:
    """``[kind, x, y, x2, y2]`` int64 of a typed action; coordinates rounded to the nearest pixel."""
    out = np.zeros(5, dtype=np.int64)
    out[0] = int(action.kind)
    if isinstance(action, PointAction):
        out[1:3] = np.rint([action.x, action.y])
    elif isinstance(action, BoxAction):
        out[1:5] = np.rint([action.x0, action.y0, action.x1, action.y1])
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
    """Inverse of :func:`action_to_dict`."""
    kind = d.get("kind")
    if kind == "point":
        return PointAction(d["x"], d["y"], bool(d.get("positive", True)))
    if kind == "box":
        return BoxAction(d["x0"], d["y0"], d["x1"], d["y1"])
    if kind == "propagate":
        return Propagate(int(d.get("direction", 1)))
    simple = {"undo": Undo, "accept": Accept, "next": NextSlice, "prev": PrevSlice}
    if kind not in simple:
        raise InvalidActionError(f"unknown action kind {kind!r} in {d!r}")
    return simple[kind]()


def _check_xy(x: float, y: float, width: int, height: int, what: str) -> None:
    if not (np.isfinite(x) and np.isfinite(y)):
        raise InvalidActionError(f"{what} ({x}, {y}) is not finite")
    if not (0 <= x <= width - 1 and 0 <= y <= height - 1):
        raise InvalidActionError(f"{what} ({x}, {y}) lies outside the {width}x{height} viewport "
                                 f"(x in [0, {width - 1}], y in [0, {height - 1}]): not in the action space")


def coerce_action(action: Any, space: spaces.MultiDiscrete) -> Action:
    """Check ``action`` (a typed action or a ``[kind, x, y, x2, y2]`` array) against ``space``.

    Returns the typed action. Raises :class:`InvalidActionError` when it is not in the space.
    """
    n_kinds, width = int(space.nvec[0]), int(space.nvec[1])
    height = int(space.nvec[2])
    if isinstance(action, _TYPED):
        if int(action.kind) >= n_kinds:
            raise InvalidActionError(f"{type(action).__name__} is not available here (this environment has kinds "
                                     f"0..{n_kinds - 1}); it is not in the action space")
        if isinstance(action, PointAction):
            _check_xy(action.x, action.y, width, height, "point")
        elif isinstance(action, BoxAction):
            _check_xy(action.x0, action.y0, width, height, "box corner")
            _check_xy(action.x1, action.y1, width, height, "box corner")
        return action
    try:
        arr = np.asarray(action)
    except Exception as exc:  # noqa: BLE001
        raise InvalidActionError(f"action {action!r} is neither a typed action nor an array") from exc
    if arr.shape != (5,) or not np.issubdtype(arr.dtype, np.integer):
        if arr.shape == (5,) and np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) \
                and np.all(arr == np.rint(arr)):
            arr = arr.astype(np.int64)
        else:
            raise InvalidActionError(f"action {action!r} is not in {space}: expected 5 integers [kind, x, y, x2, y2]")
    if not space.contains(arr.astype(space.dtype)):
        raise InvalidActionError(f"action {arr.tolist()} is not in {space} (kind < {n_kinds}, x < {width}, y < {height})")
    return from_array(arr)
