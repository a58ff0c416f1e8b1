"""Seconds a person spends on each annotation action: keystroke-level operators and Fitts' law.

Every function here is pure: the same arguments give the same seconds, with no state and no
randomness. The environment charges each action with :func:`action_seconds`; annotator profiles
scale the operators through the fields of :class:`TimeModel`.

Sources of the defaults (published figures on human time and pointing):

- Keystroke-level model, Card, Moran & Newell (1980), "The keystroke-level model for user
  performance time with interactive systems", CACM 23(7): K = 0.20 s per keystroke (0.28 s for a
  non-typist), P = 1.10 s to point with a mouse (0.8-1.5 s), H = 0.40 s to home a hand between
  keyboard and mouse, M = 1.35 s of mental preparation, and 0.2 s for a mouse-button click.
- Fitts' law for the mouse, Card, English & Burr (1978), "Evaluation of mouse, rate-controlled
  isometric joystick, step keys, and text keys for text selection on a CRT", Ergonomics 21(8):
  MT = 1.03 + 0.096 * log2(D / S + 0.5) s, with D the distance to the target and S its size in the
  same unit (screen pixels here).

How an action is charged (each term times its scale factor; see :meth:`TimeModel` fields):

========================  ===================================================================
action                    seconds
========================  ===================================================================
positive/negative point   M + [K if switching from the box tool] + Fitts(pointer → point, S_point) + click + decode latency
box                       M + [K if switching from the point tool] + Fitts(pointer → corner 1) + Fitts(corner 1 → corner 2, the drag) + click (press + release) + decode latency
undo                      M + 2 K (Ctrl+Z)
accept                    M + K (Enter)
next / previous slice     scroll (one wheel notch or arrow key per slice) + inspect + encode latency of a slice not seen yet
propagate                 M + K + scroll + inspect + decode latency (+ encode latency of a slice not seen yet)
========================  ===================================================================

Practice: people get faster with a tool. By the power law of practice (Newell & Rosenbloom 1981;
``T_n = T_1 n^-alpha`` with ``alpha`` about 0.4, range 0.2-0.6, in the Model Human Processor of
Card, Moran & Newell 1983) the time of the ``n``-th trial falls toward what a practised user needs:
:func:`practice_factor` gives the share of the first trial's time left at trial ``n``,
``floor + (1 - floor) n^-alpha``, where ``floor`` is that practised user's share. The annotator
side picks ``n`` (cases done with the tool), the exponents and floors per operator (mental
preparation and pointing learn at their own rates) and hands the env a :class:`TimeModel` whose
``mental_scale`` and ``motor_scale`` carry the factors
(:func:`hiseg_sim.annotators.behaviour.execution.time_model_for`).

*inspect* (``inspect_s`` per slice moved, 0 by default) is the look a person gives a slice newly
shown while scrolling, propagating or reviewing a volume (is the nodule still there, does the mask
fit it); it is charged as mental time (scaled with M). Annotator profiles set it
(``[volume] inspect_slice_s``); with the default 0 nothing about 2-D or scrolling changes.

With ``homing=True`` an H is added whenever the hand moves between keyboard and mouse (a person
working with one hand); by default one hand stays on each device and H is not charged. An action
that the environment refuses (a zero-area box, undo with nothing to undo, ...) costs its motor
and mental part but no model latency, because nothing reached the model.

Worked example with the defaults (screen zoom 4, point target 8 screen px): a click 75 viewport px
(300 screen px) from the pointer costs 1.35 + (1.03 + 0.096 * log2(300 / 8 + 0.5)) + 0.2 + 0.06
≈ 3.14 s; the EVA-VOS annotation-cost model charges 1.5 s per click without the mental step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

__all__ = [
    "KLM",
    "ActionCharge",
    "TimeModel",
    "action_seconds",
    "distance",
    "fitts_seconds",
    "klm_seconds",
    "practice_factor",
]

#: Keystroke-level operators in seconds (Card, Moran & Newell 1980):
#: K keystroke, P point with the mouse, H home hand, M mental preparation, B mouse click.
KLM: dict[str, float] = {"K": 0.20, "P": 1.10, "H": 0.40, "M": 1.35, "B": 0.20}

#: Fitts' law coefficients for the mouse (Card, English & Burr 1978): MT = a + b log2(D/S + 0.5).
FITTS_A = 1.03
FITTS_B = 0.096

_MOUSE_KINDS = frozenset({"point", "box"})
_KINDS = frozenset({"point", "box", "undo", "accept", "next", "prev", "propagate"})


def fitts_seconds(
    distance_px: float, size_px: float, a: float = FITTS_A, b: float = FITTS_B, min_move_px: float = 1.0
) -> float:
    """Movement time of one mouse pointing movement by Fitts' law (Card, English & Burr 1978).

    ``MT = a + b * log2(D / S + 0.5)`` seconds. A movement shorter than ``min_move_px`` costs
    nothing (the pointer is already there); the result is never negative.

    Args:
        distance_px: ``D``, distance from the pointer to the target centre, screen pixels (>= 0).
        size_px: ``S``, the target's size along the movement, screen pixels (> 0).
        a, b: intercept (s) and slope (s/bit); defaults 1.03 and 0.096.
        min_move_px: shorter movements are free.

    >>> round(fitts_seconds(300, 8), 3)
    1.534
    >>> fitts_seconds(0.0, 8)
    0.0
    """
    if not size_px > 0:
        raise ValueError(f"target size must be > 0 px; got {size_px}")
    if not distance_px >= 0 or not math.isfinite(distance_px):
        raise ValueError(f"distance must be a finite number >= 0 px; got {distance_px}")
    if distance_px < min_move_px:
        return 0.0
    return max(0.0, a + b * math.log2(distance_px / size_px + 0.5))


def klm_seconds(operators: str, table: dict[str, float] | None = None) -> float:
    """Sum of keystroke-level operators, e.g. ``"MKK"`` for a considered Ctrl+Z.

    >>> klm_seconds("MK")
    1.55
    """
    t = KLM if table is None else table
    try:
        return round(sum(t[c] for c in operators if not c.isspace()), 10)
    except KeyError as exc:
        raise ValueError(f"unknown KLM operator {exc.args[0]!r}; known: {''.join(t)}") from None


def practice_factor(n: int, exponent: float, floor: float = 0.0) -> float:
    """Share of the first trial's time that trial ``n`` (1, 2, ...) takes by the power law of
    practice: ``floor + (1 - floor) * n ** -exponent`` (Newell & Rosenbloom 1981). Exactly 1 at
    ``n = 1`` or ``exponent = 0``.

    >>> round(practice_factor(10, 0.4), 3), practice_factor(1, 0.4), round(practice_factor(10, 0.4, floor=0.5), 3)
    (0.398, 1.0, 0.699)
    """
    n = int(n)
    if n < 1:
        raise ValueError(f"trials are counted from 1; got n = {n}")
    e, f = float(exponent), float(floor)
    if not (math.isfinite(e) and e >= 0):
        raise ValueError(f"the practice exponent must be >= 0; got {exponent}")
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"the practised share must be in [0, 1]; got {floor}")
    if n == 1 or e == 0.0:
        return 1.0
    return f + (1.0 - f) * n**-e


def distance(p: tuple[float, float], q: tuple[float, float]) -> float:
    """Euclidean distance between two ``(x, y)`` points."""
    return math.hypot(float(q[0]) - float(p[0]), float(q[1]) - float(p[1]))


@dataclass(frozen=True)
class TimeModel:
    """Parameters of the time charged per action. Frozen; make variants with :meth:`scaled`.

    Operators (seconds; Card, Moran & Newell 1980):
        K: keystroke (0.20; 0.28 for a non-typist).
        P: pointing without Fitts' law (1.10), used when ``use_fitts=False``.
        H: homing a hand between keyboard and mouse (0.40), charged only with ``homing=True``.
        M: mental preparation before each deliberate action (1.35).
        B: mouse-button click, press and release (0.20).

    Pointing (Card, English & Burr 1978): ``fitts_a`` = 1.03 s, ``fitts_b`` = 0.096 s/bit.

    Geometry:
        screen_scale: screen pixels per viewport pixel (4: a 96-px viewport shown at 384 px).
        point_target_px: size S of the spot aimed at with a click, screen px (8).
        corner_target_px: size S of a box corner aimed at, screen px (16; corners are placed
            less precisely than clicks).

    Slice scrolling: ``scroll_s`` per slice moved (one wheel notch or arrow key, = K by default),
    and ``inspect_s`` per slice moved to look at the slice shown (0 by default; set by the
    annotator's profile, ``[volume] inspect_slice_s``), charged as mental time.

    Model latency:
        decode_latency_s: seconds the person waits for a mask (0.06: the median LiteMedSAM
            decode of a 96-128-px viewport on 2 CPU cores, measured by ``hiseg_sim.bench``).
        encode_latency_s: wait when a slice is shown for the first time (0: annotation tools
            such as micro-sam's pre-compute the embeddings before the person starts).
        use_measured_latency: charge the measured wall-clock decode time instead of
            ``decode_latency_s``. Makes rewards depend on the machine: off by default, so the
            same seed gives the same trace everywhere.

    Scale factors (set by annotator profiles; 1 = the literature values):
        mental_scale (M), motor_scale (pointing and clicks), key_scale (K, H, scrolling),
        latency_scale (model latency).
    """

    K: float = KLM["K"]
    P: float = KLM["P"]
    H: float = KLM["H"]
    M: float = KLM["M"]
    B: float = KLM["B"]
    fitts_a: float = FITTS_A
    fitts_b: float = FITTS_B
    use_fitts: bool = True
    screen_scale: float = 4.0
    point_target_px: float = 8.0
    corner_target_px: float = 16.0
    scroll_s: float = KLM["K"]
    inspect_s: float = 0.0
    decode_latency_s: float = 0.06
    encode_latency_s: float = 0.0
    use_measured_latency: bool = False
    homing: bool = False
    mental_scale: float = 1.0
    motor_scale: float = 1.0
    key_scale: float = 1.0
    latency_scale: float = 1.0

    def __post_init__(self) -> None:
        for name in (
            "K",
            "P",
            "H",
            "M",
            "B",
            "scroll_s",
            "inspect_s",
            "decode_latency_s",
            "encode_latency_s",
            "mental_scale",
            "motor_scale",
            "key_scale",
            "latency_scale",
            "fitts_a",
            "fitts_b",
        ):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 <= v <= 1e3):
                raise ValueError(f"TimeModel.{name} must be a number in [0, 1000]; got {v}")
        for name in ("screen_scale", "point_target_px", "corner_target_px"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 < v <= 1e4):
                raise ValueError(f"TimeModel.{name} must be in (0, 10000]; got {v}")

    def scaled(self, **factors: Any) -> TimeModel:
        """A copy with fields replaced, e.g. ``tm.scaled(mental_scale=1.5, motor_scale=1.2)``."""
        return replace(self, **factors)

    def pointing(self, from_xy: tuple[float, float], to_xy: tuple[float, float], target_px: float) -> float:
        """Seconds of one pointing movement between viewport pixels, before scaling.

        Distances are converted to screen pixels with ``screen_scale``; ``target_px`` is already
        in screen pixels.
        """
        if not self.use_fitts:
            return self.P if distance(from_xy, to_xy) > 0 else 0.0
        d = distance(from_xy, to_xy) * self.screen_scale
        return fitts_seconds(d, target_px, self.fitts_a, self.fitts_b)


class ActionCharge(NamedTuple):
    """What :func:`action_seconds` returns.

    Attributes:
        seconds: total charged for the action.
        pointer: the mouse pointer afterwards, ``(x, y)`` viewport pixels.
        tool: the active prompt tool afterwards (``"point"``, ``"box"`` or ``None``).
        device: the device the hand was last on (``"mouse"`` or ``"keyboard"``).
        parts: seconds per component (mental, motor, keys, latency), for inspection.
    """

    seconds: float
    pointer: tuple[float, float]
    tool: str | None
    device: str
    parts: dict


def action_seconds(
    model: TimeModel,
    kind: str,
    *,
    pointer: tuple[float, float],
    tool: str | None = None,
    device: str = "mouse",
    xy: tuple[float, float] | None = None,
    xy2: tuple[float, float] | None = None,
    decoded: bool = False,
    slices_moved: int = 0,
    new_slice: bool = False,
    measured_latency_s: float | None = None,
) -> ActionCharge:
    """Seconds charged for one action; pure.

    Args:
        model: the :class:`TimeModel`.
        kind: ``"point"``, ``"box"``, ``"undo"``, ``"accept"``, ``"next"``, ``"prev"`` or
            ``"propagate"``.
        pointer: mouse pointer before the action, ``(x, y)`` viewport pixels.
        tool: prompt tool active before the action (switching point ↔ box costs a K).
        device: ``"mouse"`` or ``"keyboard"``: where the hand was (for ``homing``).
        xy: the point, or the box's first corner, ``(x, y)`` viewport pixels (point and box).
        xy2: the box's second corner (box only).
        decoded: the model ran (adds decode latency); False for refused actions.
        slices_moved: slices scrolled (next, prev, propagate).
        new_slice: a slice shown for the first time (adds encode latency).
        measured_latency_s: the measured decode wall time, used when
            ``model.use_measured_latency``.

    Returns:
        :class:`ActionCharge`.

    >>> tm = TimeModel()
    >>> round(action_seconds(tm, "undo", pointer=(0, 0)).seconds, 3)
    1.75
    """
    if kind not in _KINDS:
        raise ValueError(f"unknown action kind {kind!r}; expected one of {sorted(_KINDS)}")
    mental = motor = keys = latency = 0.0
    new_pointer = (float(pointer[0]), float(pointer[1]))
    new_tool = tool
    new_device = "mouse" if kind in _MOUSE_KINDS else "keyboard"
    if model.homing and new_device != device:
        keys += model.H
    if kind == "point":
        if xy is None:
            raise ValueError("a point action needs xy")
        mental += model.M
        if tool == "box":
            keys += model.K
        motor += model.pointing(new_pointer, xy, model.point_target_px) + model.B
        new_pointer, new_tool = (float(xy[0]), float(xy[1])), "point"
    elif kind == "box":
        if xy is None or xy2 is None:
            raise ValueError("a box action needs xy and xy2 (its two corners)")
        mental += model.M
        if tool == "point":
            keys += model.K
        motor += model.pointing(new_pointer, xy, model.corner_target_px)
        motor += model.pointing(xy, xy2, model.corner_target_px)
        motor += model.B
        new_pointer, new_tool = (float(xy2[0]), float(xy2[1])), "box"
    elif kind == "undo":
        mental += model.M
        keys += 2 * model.K
    elif kind == "accept":
        mental += model.M
        keys += model.K
    elif kind in ("next", "prev"):
        keys += model.scroll_s * abs(int(slices_moved))
        mental += model.inspect_s * abs(int(slices_moved))
    elif kind == "propagate":
        mental += model.M + model.inspect_s * abs(int(slices_moved))
        keys += model.K + model.scroll_s * abs(int(slices_moved))
    if decoded:
        if model.use_measured_latency and measured_latency_s is not None:
            latency += float(measured_latency_s)
        else:
            latency += model.decode_latency_s
    if new_slice:
        latency += model.encode_latency_s
    parts = {
        "mental": mental * model.mental_scale,
        "motor": motor * model.motor_scale,
        "keys": keys * model.key_scale,
        "latency": latency * model.latency_scale,
    }
    total = parts["mental"] + parts["motor"] + parts["keys"] + parts["latency"]
    return ActionCharge(float(total), new_pointer, new_tool, new_device, parts)
