"""One episode → its rows: the default episode function and what the runner adds to every episode.

The runner calls an *episode function* ``fn(env, annotator, *, case_id, seed, feedback)`` that
returns an object with ``trace`` (one dict per action, the schema of :mod:`hiseg_sim.env.trace`)
and ``summary`` (one dict), or a ``(trace, summary)`` pair. The default,
:func:`harness_episode`, is :func:`hiseg_sim.annotators.harness.run_episode`.

After the episode the runner reads the env's final mask (:func:`final_mask_record`) and adds
what the analysis needs and the harness does not give: HD95 and NSD against the reference, and
the mask itself (its bounding-box crop, bit-packed, in volume coordinates), so crowd fusion
can be done afterwards without re-running anything.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from hiseg_sim import metrics

__all__ = ["harness_episode", "final_mask_record", "pack_mask", "unpack_mask", "case_record", "trace_rows",
           "jsonable", "NSD_TOLERANCE_MM"]

#: tolerance of the NSD column ``nsd`` (mm): about one pixel of the default cohort (0.5–0.9 mm)
NSD_TOLERANCE_MM = 1.0


def harness_episode(env, annotator, *, case_id: str, seed: int, feedback: str = "none"):
    """The default episode function: :func:`hiseg_sim.annotators.harness.run_episode`.

    ``feedback`` is the study's mode: ``"none"`` (``end_case(None)``), ``"score"`` (a teacher
    shows the Dice the env scored and the seconds: the harness's ``feedback=True``) or
    ``"worked_example"`` (the same, plus the reference mask in the viewport as
    ``Feedback.expert_mask``: the worked example a teacher shows after the case).
    """
    from hiseg_sim.annotators.harness import run_episode

    if feedback == "worked_example":
        annotator = _WorkedExampleTeacher(annotator, env)
    return run_episode(env, annotator, case_id=case_id, seed=seed, feedback=feedback != "none")


class _WorkedExampleTeacher:
    """Forwards everything to the annotator; adds the reference mask to the feedback at ``end_case``."""

    def __init__(self, inner, env) -> None:
        self._inner = inner
        self._env = env

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def end_case(self, feedback) -> None:
        from hiseg_sim.annotators.protocol import Feedback

        u = self._env.unwrapped
        S = u.size
        vp = u.viewport
        from hiseg_sim.env.viewport import crop2d

        ref = np.stack([crop2d(u.case.gt[vp.z0 + i], vp.y0, vp.x0, S, fill=False) for i in range(vp.n_slices)])
        expert = ref if getattr(u, "three_d", False) else ref[0]
        fb = Feedback(dice=getattr(feedback, "dice", None), seconds=getattr(feedback, "seconds", None),
                      expert_mask=expert)
        self._inner.end_case(fb)


# ---- masks ------------------------------------------------------------------------------------
def pack_mask(mask: np.ndarray, origin=(0, 0, 0), prefix: str = "mask") -> dict:
    """The tight bounding-box crop of a ``bool`` ``(Z, Y, X)`` mask placed at ``origin`` (volume
    indices of ``mask[0, 0, 0]``), as row fields ``{prefix}_z0/_y0/_x0`` (volume indices of the
    crop's corner), ``{prefix}_dz/_dy/_dx`` (crop shape; 0 for an empty mask) and
    ``{prefix}_bits`` (``np.packbits`` of the crop, C order)."""
    m = np.asarray(mask, bool)
    if m.ndim != 3:
        raise ValueError(f"pack_mask takes a (Z, Y, X) mask; got shape {m.shape}")
    idx = np.argwhere(m)
    if idx.size == 0:
        lo, shape, crop = np.asarray(origin), (0, 0, 0), np.zeros((0,), bool)
    else:
        a, b = idx.min(0), idx.max(0) + 1
        crop = m[a[0]:b[0], a[1]:b[1], a[2]:b[2]]
        lo, shape = np.asarray(origin) + a, crop.shape
    out = {f"{prefix}_{k}0": int(v) for k, v in zip("zyx", lo)}
    out.update({f"{prefix}_d{k}": int(v) for k, v in zip("zyx", shape)})
    out[f"{prefix}_bits"] = np.packbits(crop.ravel()).tobytes()
    return out


def unpack_mask(row, prefix: str = "mask") -> tuple[np.ndarray, tuple[int, int, int]]:
    """Inverse of :func:`pack_mask`: ``(crop, (z0, y0, x0))`` from a row (dict or pandas Series)."""
    shape = tuple(int(row[f"{prefix}_d{k}"]) for k in "zyx")
    origin = tuple(int(row[f"{prefix}_{k}0"]) for k in "zyx")
    n = int(np.prod(shape))
    bits = np.frombuffer(row[f"{prefix}_bits"], np.uint8)
    crop = np.unpackbits(bits, count=n).astype(bool).reshape(shape) if n else np.zeros(shape, bool)
    return crop, origin


def final_mask_record(env, case) -> dict:
    """The final mask of the episode just run on ``env`` (any wrapper), scored against ``case.gt``.

    The reference is what the env scores against: the whole slices of the viewport's slab (in
    2-D the key slice), ground truth outside the viewport counting as missed. Returns row fields:
    ``dice_check`` (equals the env's final Dice), ``hd95`` (mm; NaN if either mask is empty),
    ``nsd`` (at :data:`NSD_TOLERANCE_MM`), ``mask_*`` (:func:`pack_mask`) and ``score_z0`` /
    ``score_nz`` (the slab scored).
    """
    u = env.unwrapped
    vp = u.viewport
    slab = u.slab_masks()
    n, S = slab.shape[0], slab.shape[1]
    Z, Y, X = case.shape
    ys, ye = max(vp.y0, 0), min(vp.y0 + S, Y)
    xs, xe = max(vp.x0, 0), min(vp.x0 + S, X)
    pred = np.zeros((n, Y, X), bool)
    pred[:, ys:ye, xs:xe] = slab[:, ys - vp.y0:ye - vp.y0, xs - vp.x0:xe - vp.x0]
    ref = case.gt[vp.z0:vp.z0 + n]
    if n == 1:
        p2, r2, sp = pred[0], ref[0], case.spacing_zyx[1:]
    else:
        p2, r2, sp = pred, ref, case.spacing_zyx
    rec = {"dice_check": metrics.dice(p2, r2), "hd95": metrics.hd95(p2, r2, sp),
           "nsd": metrics.nsd(p2, r2, NSD_TOLERANCE_MM, sp), "score_z0": int(vp.z0), "score_nz": int(n)}
    rec.update(pack_mask(pred, (vp.z0, 0, 0)))
    return rec


def case_record(case) -> dict:
    """One row per case: its metadata, key slice, spacing, shape and ground truth (packed, ``gt_*``)."""
    from hiseg_sim.experiments.cases import case_meta

    row = case_meta(case)
    row.update(key_slice=int(case.key_slice), spacing_z=float(case.spacing_zyx[0]), spacing_y=float(case.spacing_zyx[1]),
               spacing_x=float(case.spacing_zyx[2]), shape_z=int(case.shape[0]), shape_y=int(case.shape[1]),
               shape_x=int(case.shape[2]))
    row.update(pack_mask(case.gt, (0, 0, 0), prefix="gt"))
    return row


# ---- rows -------------------------------------------------------------------------------------
def jsonable(v: Any) -> Any:
    """A Parquet-friendly scalar: numpy scalars → Python, containers → canonical JSON text."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (dict, list, tuple, np.ndarray)):
        return json.dumps(v, sort_keys=True, default=_json_default)
    return v


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if hasattr(o, "__dict__"):
        return {k: v for k, v in vars(o).items() if not k.startswith("_")}
    return str(o)


_TRACE_DROP = {"env", "case", "annotator", "episode", "seed", "viewport", "start_slice"}


def trace_rows(trace: list[dict], keys: dict) -> list[dict]:
    """Per-action rows: ``keys`` (the episode's identity) + each trace record, flattened.

    Adds ``kind`` (the action's kind), ``is_prompt`` (the action reached the model) and
    ``prompt_index`` (prompts so far, this one included). Nested fields become JSON text.
    """
    rows = []
    n_prompts = 0
    for i, rec in enumerate(trace):
        row = dict(keys)
        act = rec.get("action")
        kind = act.get("kind") if isinstance(act, dict) else (type(act).__name__ if act is not None else None)
        is_prompt = rec.get("prompt") is not None
        n_prompts += int(is_prompt)
        row.update(step=int(rec.get("step", i + 1)), kind=None if kind is None else str(kind), is_prompt=is_prompt,
                   prompt_index=n_prompts)
        for k, v in rec.items():
            if k in _TRACE_DROP or k in row:
                continue
            row[k] = jsonable(v)
        rows.append(row)
    return rows
