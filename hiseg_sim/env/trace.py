"""Episode traces: one JSON object per action, reading, writing and replaying them.

A trace record holds ``case``, ``annotator``, ``step``, ``action``,
``prompt``, ``seconds``, ``dice``, ``iou_pred``, ``perceived_quality``, and what replay needs to
rebuild the episode without the seed: ``env``, ``episode``, ``seed``, ``viewport`` and
``start_slice``; plus ``seconds_total``, ``reward``, ``invalid_action``, ``terminated`` and
``truncated``:

======================  =====================================================================
field                   meaning
======================  =====================================================================
``env``                 environment id, e.g. ``"hiseg_sim/NoduleSeg2D-v0"``
``case``                ``Case.case_id``
``annotator``           who acted: a profile name, a click robot, ``"policy"``
``episode``             episode counter of the recorder (0-based)
``seed``                the seed given to ``reset`` (``None`` if none)
``viewport``            ``{"z0", "n_slices", "y0", "x0", "size"}`` volume indices
``start_slice``         volume index of the first slice in view
``step``                1-based action index within the episode
``action``              the typed action as a dict (:func:`~hiseg_sim.env.actions.action_to_dict`)
``prompt``              what reached the model: ``{"slice", "points", "labels", "box",
                        "mask_prompt"}`` (viewport pixels, volume slice index), or ``None``
``seconds``             simulated seconds charged for the action
``seconds_total``       simulated seconds since reset
``reward``              the reward returned
``dice``                Dice after the action
``iou_pred``            the model's predicted IoU of the mask in view
``invalid_action``      ``""`` or a bad-action code
``perceived_quality``   the annotator's own judgement of the mask (``None`` from the env)
``terminated``          the episode ended here by ``Accept``
``truncated``           the episode was cut here by the time limit
======================  =====================================================================

Real human session logs use the same schema, so a behaviour model can be fitted to them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hiseg_sim.env.actions import action_from_dict, action_to_dict

__all__ = ["TRACE_FIELDS", "ReplayMismatch", "ReplayResult", "read_trace", "replay", "step_record", "write_trace"]

TRACE_FIELDS = (
    "env",
    "case",
    "annotator",
    "episode",
    "seed",
    "viewport",
    "start_slice",
    "step",
    "action",
    "prompt",
    "seconds",
    "seconds_total",
    "reward",
    "dice",
    "iou_pred",
    "invalid_action",
    "perceived_quality",
    "terminated",
    "truncated",
)


class ReplayMismatch(AssertionError):
    """A replayed episode did not reproduce the recorded Dice."""


def _jsonable(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def step_record(
    ctx: dict,
    step: int,
    action: Any,
    prompt: Any,
    reward: float,
    terminated: bool,
    truncated: bool,
    info: dict,
    with_iou: bool = False,
) -> dict:
    """One trace record: the episode's context ``ctx`` (env, case, annotator, seed, viewport, ...)
    and what one ``env.step`` did: the typed ``action``, the ``prompt`` the env decoded
    (``env.unwrapped.last_prompt``), the reward and the info's seconds, Dice, predicted IoU and
    refusal code (``with_iou``: the scored IoU too). ``perceived_quality`` is filled in later by
    whoever knows it."""
    rec = dict(ctx)
    rec.update(
        step=int(step),
        action=action_to_dict(action),
        prompt=prompt,
        seconds=info["seconds"],
        seconds_total=info["seconds_total"],
        reward=float(reward),
        dice=info["dice"],
    )
    if with_iou:
        rec["iou"] = info["iou"]
    rec.update(
        iou_pred=info["iou_pred"],
        invalid_action=info["invalid_action"],
        perceived_quality=None,
        terminated=bool(terminated),
        truncated=bool(truncated),
    )
    return rec


def write_trace(records: Iterable[dict], path: str | os.PathLike, append: bool = True) -> int:
    """Write records as JSON lines; returns how many were written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(p, "a" if append else "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, default=_jsonable, allow_nan=True) + "\n")
            n += 1
    return n


def read_trace(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines trace file."""
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


@dataclass
class ReplayResult:
    """One replayed episode.

    Attributes:
        case: the case id.
        episode: the recorder's episode number.
        recorded_dice, replayed_dice: Dice after each action.
        max_abs_diff: largest ``|recorded - replayed|``.
        final_mask: ``bool`` ``(n_slices, H, W)``: the slab's masks at the end of the replay.
    """

    case: str
    episode: int
    recorded_dice: list = field(default_factory=list)
    replayed_dice: list = field(default_factory=list)
    max_abs_diff: float = 0.0
    final_mask: np.ndarray | None = None

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= 1e-6


def _episodes(records: list[dict]) -> list[list[dict]]:
    eps: list[list[dict]] = []
    key = None
    for r in records:
        k = (r.get("episode"), r.get("case"))
        if k != key or (eps and r.get("step", 0) <= eps[-1][-1].get("step", 0)):
            eps.append([])
            key = k
        eps[-1].append(r)
    return eps


def replay(
    trace: str | os.PathLike | Iterable[dict], env, atol: float = 1e-6, strict: bool = True
) -> list[ReplayResult]:
    """Replay a trace in ``env`` (same env id, same cases, same segmenter); return one result per episode.

    Each episode is reset on its recorded case and viewport (``options``), so replay needs neither
    the seed nor the recorder, then every recorded action is stepped in order.

    Args:
        trace: a JSON-lines path or the records themselves.
        env: an environment made like the recorded one (wrappers allowed).
        atol: largest Dice difference accepted.
        strict: raise :class:`ReplayMismatch` on a difference above ``atol``.
    """
    records = read_trace(trace) if isinstance(trace, (str, os.PathLike)) else list(trace)
    results = []
    for ep in _episodes(records):
        first = ep[0]
        options = {"case_id": first["case"], "viewport": first["viewport"]}
        if first.get("start_slice") is not None and first["viewport"]["n_slices"] > 1:
            options["start_slice"] = first["start_slice"]
        env.reset(seed=first.get("seed"), options=options)
        res = ReplayResult(case=first["case"], episode=int(first.get("episode") or 0))
        for r in ep:
            _, _, term, trunc, info = env.step(action_from_dict(r["action"]))
            res.recorded_dice.append(float(r["dice"]))
            res.replayed_dice.append(float(info["dice"]))
            if term or trunc:
                break
        diffs = np.abs(np.array(res.recorded_dice) - np.array(res.replayed_dice))
        res.max_abs_diff = float(diffs.max()) if diffs.size else 0.0
        if len(res.replayed_dice) != len(ep):
            res.max_abs_diff = float("inf")
        res.final_mask = env.unwrapped.slab_masks()
        if strict and res.max_abs_diff > atol:
            raise ReplayMismatch(
                f"episode {res.episode} on {res.case}: Dice differs by {res.max_abs_diff:.3g} "
                f"(> {atol}); recorded {res.recorded_dice}, replayed {res.replayed_dice}"
            )
        results.append(res)
    return results
