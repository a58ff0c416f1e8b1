"""Checks of the environments' constructor arguments and reset options, against documented bounds.

One layer: :class:`~hiseg_sim.env.core.NoduleSegBase` calls these at construction and in
``reset`` before the episode's state is replaced, so a bad value fails there with a one-line
message that states the bound, and never reaches numpy as a negative index, a NaN or a
many-gigabyte allocation.

=======================  ======================================================================
argument                 accepted
=======================  ======================================================================
``viewport_px``          integer in [16, 1024] (SAM's largest input side)
``detection_sd_mm``      real number in (0, 100] mm
``pan_step_px``          integer in [1, viewport_px]
``window``               ``(level, width)`` HU, real numbers: level in [-100000, 100000], width in
                         [1, 100000] (a NaN, an infinity or a zero width makes NaN pixels)
``time_penalty``         real number in [0, 1000] (reward per simulated second)
``time_model``           ``None`` or a :class:`~hiseg_sim.timing.TimeModel`
``mask_feedback``        ``bool`` (or 0 / 1)
``render_mode``          ``None`` or ``"rgb_array"``
``render_gt``            ``bool`` (or 0 / 1)
``render_scale``         integer in [1, 16], with ``viewport_px * render_scale <= 4096`` (frame side)
``max_slices``           integer in [1, 512] (3-D; the 2-D env has one slice)
``propagate_margin_px``  integer in [0, viewport_px]
``cases``                ``None``, a sequence of :class:`~hiseg_sim.data.case.Case` with distinct
                         ``case_id`` (checked when first loaded), or a callable returning one
``segmenter``            a registry name, an object with ``encode`` and ``decode``, or a callable
``cache_dir``            ``None``, a ``str`` or an ``os.PathLike``
=======================  ======================================================================

Reset options (``options`` must be ``None`` or a dict with only these keys):

=================  ============================================================================
option             accepted
=================  ============================================================================
``case_id``        a ``str`` among the cases' ids (not together with ``case_index``)
``case_index``     integer in [0, number of cases)
``viewport``       a dict with exactly ``z0``, ``n_slices``, ``y0``, ``x0``, ``size`` (integers):
                   ``size == viewport_px``; ``0 <= z0`` and ``z0 + n_slices <= Z``; ``|y0|`` and
                   ``|x0|`` at most 2**31 - 1 (negative or past the scan: padded with air); 2-D:
                   ``n_slices == 1`` and ``z0`` is the case's key slice; 3-D:
                   ``1 <= n_slices <= min(max_slices, Z)``
``start_slice``    integer volume index inside the slab ``[z0, z0 + n_slices)`` (2-D: the key slice)
``time_model``     ``None`` or a :class:`~hiseg_sim.timing.TimeModel`
=================  ============================================================================

Integers are Python or numpy integers (not ``bool``); real numbers are ints or floats (not
``bool``, not strings). A value of the wrong type raises :class:`EnvArgumentTypeError` (a
``TypeError``), one out of bounds :class:`EnvArgumentError` (a ``ValueError``).
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "DETECTION_SD_MM_MAX",
    "MAX_FRAME_PX",
    "MAX_SLICES",
    "OPTION_KEYS",
    "RENDER_SCALE_MAX",
    "TIME_PENALTY_MAX",
    "VIEWPORT_KEYS",
    "VIEWPORT_OFFSET_MAX",
    "VIEWPORT_PX",
    "WINDOW_LEVEL_MAX_HU",
    "WINDOW_WIDTH_HU",
    "EnvArgumentError",
    "EnvArgumentTypeError",
    "check_bool",
    "check_int",
    "check_real",
    "check_window",
]

#: ``viewport_px`` bounds: 16 keeps a click target several pixels wide; 1024 is the largest
#: input side of the SAM family (a bigger viewport is only downsampled, at quadratic memory cost).
VIEWPORT_PX = (16, 1024)
#: Largest ``detection_sd_mm``: a detection error of 10 cm no longer points at the nodule.
DETECTION_SD_MM_MAX = 100.0
#: Largest ``time_penalty`` (reward per simulated second); keeps rewards finite.
TIME_PENALTY_MAX = 1000.0
#: ``max_slices`` upper bound: the slab's ground-truth crop is ``max_slices * viewport_px**2`` bytes.
MAX_SLICES = 512
#: ``render_scale`` upper bound, and the largest rendered frame side, pixels.
RENDER_SCALE_MAX = 16
MAX_FRAME_PX = 4096
#: Display window bounds, HU: ``|level| <= WINDOW_LEVEL_MAX_HU``, width in ``WINDOW_WIDTH_HU``.
WINDOW_LEVEL_MAX_HU = 100_000.0
WINDOW_WIDTH_HU = (1.0, 100_000.0)

#: Bound of ``options["viewport"]`` ``y0`` and ``x0``. A viewport may run past the scan, or lie
#: wholly off it (a detection point drawn far off a small scan): it is padded with air.
VIEWPORT_OFFSET_MAX = 2**31 - 1

#: The reset options the environments read.
OPTION_KEYS = ("case_id", "case_index", "viewport", "start_slice", "time_model")
#: The keys of ``options["viewport"]`` (those of ``info["viewport"]``).
VIEWPORT_KEYS = ("z0", "n_slices", "y0", "x0", "size")


class EnvArgumentError(ValueError):
    """A constructor argument or reset option of a nodule environment outside its documented bounds."""


class EnvArgumentTypeError(EnvArgumentError, TypeError):
    """A constructor argument or reset option of the wrong type (also an :class:`EnvArgumentError`)."""


def _show(value: Any, limit: int = 80) -> str:
    """``repr(value)`` on one line, cut to ``limit`` characters."""
    r = " ".join(repr(value).split())
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an ``int`` in ``[lo, hi]`` (either end may be ``None``), or raise."""
    if lo is None and hi is None:
        bounds = ""
    else:
        bounds = f" in [{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
    if not _is_int(value):
        raise EnvArgumentTypeError(f"{name} must be an integer{bounds}; got {type(value).__name__} {_show(value)}")
    v = int(value)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise EnvArgumentError(f"{name} must be an integer{bounds}; got {v}")
    return v


def check_real(name: str, value: Any, lo: float, hi: float, lo_open: bool = False, unit: str = "") -> float:
    """``value`` as a finite ``float`` in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), or raise."""
    bounds = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}]{unit}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise EnvArgumentTypeError(f"{name} must be a real number {bounds}; got {type(value).__name__} {_show(value)}")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not (math.isfinite(v) and (v > lo if lo_open else v >= lo) and v <= hi):
        raise EnvArgumentError(f"{name} must be a finite number {bounds}; got {_show(value)}")
    return v


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a ``bool``: a ``bool``, a numpy bool, or the integer 0 or 1; else raise."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if _is_int(value) and int(value) in (0, 1):
        return bool(value)
    if _is_int(value):
        raise EnvArgumentError(f"{name} must be True or False (or 1 / 0); got {_show(value)}")
    raise EnvArgumentTypeError(f"{name} must be True or False (or 1 / 0); got {type(value).__name__} {_show(value)}")


def check_window(window: Any, name: str = "window") -> tuple[float, float]:
    """``(level, width)`` HU as two floats within the documented bounds, or raise."""
    lo_w, hi_w = WINDOW_WIDTH_HU
    what = (
        f"{name} must be (level, width) in HU with |level| <= {WINDOW_LEVEL_MAX_HU:g} and width in [{lo_w:g}, {hi_w:g}]"
    )
    if isinstance(window, (str, bytes, Mapping)) or not hasattr(window, "__len__") or not hasattr(window, "__iter__"):
        raise EnvArgumentTypeError(f"{what}; got {type(window).__name__} {_show(window)}")
    items = list(window)
    if len(items) != 2:
        raise EnvArgumentError(f"{what}; got {len(items)} value(s): {_show(items)}")
    level = check_real(f"{name} level", items[0], -WINDOW_LEVEL_MAX_HU, WINDOW_LEVEL_MAX_HU, unit=" HU")
    width = check_real(f"{name} width", items[1], lo_w, hi_w, unit=" HU")
    return level, width


def check_path_or_none(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise EnvArgumentTypeError(f"{name} must be None, a str or a path; got {type(value).__name__} {_show(value)}")


def check_option_keys(options: Any) -> dict:
    """``options`` as a new dict, after checking it is ``None`` or a mapping with known keys only."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise EnvArgumentTypeError(f"reset options must be None or a dict; got {type(options).__name__}")
    unknown = sorted(str(k) for k in options if k not in OPTION_KEYS)
    if unknown:
        raise EnvArgumentError(
            f"unknown reset option(s) {', '.join(map(repr, unknown))}; the options are {', '.join(OPTION_KEYS)}"
        )
    if "case_id" in options and "case_index" in options:
        raise EnvArgumentError("give options['case_id'] or options['case_index'], not both")
    return dict(options)


def check_viewport_option(
    d: Any, *, size: int, case_shape: tuple[int, int, int], three_d: bool, max_slices: int, key_slice: int, case_id: str
) -> dict[str, int]:
    """The integers of ``options["viewport"]`` after checking them against the case; see the module table."""
    if not isinstance(d, Mapping):
        raise EnvArgumentTypeError(
            f"options['viewport'] must be a dict with keys {', '.join(VIEWPORT_KEYS)} "
            f"(as in info['viewport']); got {type(d).__name__}"
        )
    missing = [k for k in VIEWPORT_KEYS if k not in d]
    extra = sorted(str(k) for k in d if k not in VIEWPORT_KEYS)
    if missing or extra:
        raise EnvArgumentError(
            f"options['viewport'] must have exactly the keys {', '.join(VIEWPORT_KEYS)}; "
            f"missing {missing}, unknown {extra}"
        )
    v = {k: check_int(f"options['viewport']['{k}']", d[k]) for k in VIEWPORT_KEYS}
    Z = case_shape[0]
    if v["size"] != size:
        raise EnvArgumentError(f"options['viewport'] has size {v['size']}, this env's viewport is {size} px")
    n_max = min(max_slices, Z) if three_d else 1
    if not 1 <= v["n_slices"] <= n_max:
        raise EnvArgumentError(
            f"options['viewport']['n_slices'] must be in [1, {n_max}] (min(max_slices, Z) in 3-D, "
            f"1 in 2-D); got {v['n_slices']}"
        )
    if not 0 <= v["z0"] <= Z - v["n_slices"]:
        raise EnvArgumentError(
            f"options['viewport'] slab [z0, z0 + n_slices) = [{v['z0']}, {v['z0'] + v['n_slices']}) "
            f"must lie inside the {Z} slices of case {case_id!r}"
        )
    if not three_d and v["z0"] != key_slice:
        raise EnvArgumentError(
            f"options['viewport']['z0'] = {v['z0']} is not the key slice {key_slice} of case "
            f"{case_id!r}: the 2-D env scores the key slice"
        )
    for k in ("y0", "x0"):
        if not -VIEWPORT_OFFSET_MAX <= v[k] <= VIEWPORT_OFFSET_MAX:
            raise EnvArgumentError(
                f"options['viewport']['{k}'] = {v[k]} is not a pixel offset; it must be in "
                f"[{-VIEWPORT_OFFSET_MAX}, {VIEWPORT_OFFSET_MAX}]"
            )
    return v


def check_segmenter(segmenter: Any) -> None:
    """A registry name, an object with ``encode`` and ``decode``, or a callable building one."""
    if isinstance(segmenter, str):
        from hiseg_sim import segmenters

        names = segmenters.available()
        if segmenter not in names:
            raise EnvArgumentError(
                f"segmenter {_show(segmenter)} is not a registered segmenter; one of {', '.join(names)}"
            )
        return
    if (hasattr(segmenter, "encode") and hasattr(segmenter, "decode")) or callable(segmenter):
        return
    raise EnvArgumentTypeError(
        f"segmenter must be a registry name, a Segmenter or a callable building one; got {type(segmenter).__name__}"
    )


def check_cases_source(cases: Any) -> None:
    """``None``, a callable, or an iterable (its items are checked by :func:`check_cases` when loaded)."""
    if cases is None or callable(cases):
        return
    if isinstance(cases, (str, bytes, Mapping)) or not hasattr(cases, "__iter__"):
        raise EnvArgumentTypeError(
            f"cases must be a sequence of Case, a callable returning one, or None; got {type(cases).__name__}"
        )


def check_cases(cases: list) -> None:
    """Every item a :class:`~hiseg_sim.data.case.Case`, and no two different cases sharing a ``case_id``."""
    from hiseg_sim.data.case import Case

    seen: dict[str, Any] = {}
    for i, c in enumerate(cases):
        if not isinstance(c, Case):
            raise EnvArgumentTypeError(f"cases[{i}] is a {type(c).__name__}, not a hiseg_sim.data.case.Case")
        other = seen.setdefault(c.case_id, c)
        if other is not c:
            raise EnvArgumentError(
                f"cases[{i}] reuses case_id {c.case_id!r} of another case; "
                "case ids must be unique (options['case_id'] and traces name cases by id)"
            )
