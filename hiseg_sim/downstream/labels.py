"""Label sets for downstream training, read back from a study's episode rows.

For each training case, on the key slice, in the crop of :func:`hiseg_sim.downstream.slices.crop_origin`:

- ``gt``: the ground truth (arm (a));
- ``expert``: one expert radiologist's final LiteMedSAM mask (b);
- ``crowd``: ``k`` crowd workers' masks fused by STAPLE (:func:`hiseg_sim.analysis.crowd.fuse_staple`) (c);
- ``novice``: one untrained non-medical person's mask (d);
- ``specialist``: the specialist annotator's final mask, each pixel weighted by the spread of its
  prompt rounds (:mod:`hiseg_sim.downstream.pseudo`); on the cases the specialist was trained on
  (labelled, so labels exist) the ground truth with weight 1 (e).

A :class:`LabelSet` holds ``(N, S, S)`` images, targets and weights in one fixed case order, so
every arm trains on the same pixels and only the labels differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hiseg_sim.analysis.crowd import fuse_staple
from hiseg_sim.codec import unpack_mask
from hiseg_sim.downstream.pseudo import confidence_weights, round_spread, unpack_rounds
from hiseg_sim.downstream.slices import CROP_PX, crop_of, crop_origin, volume_mask_slice

__all__ = ["LabelSet", "episode_key_mask", "specialist_weights_slice", "build_label_sets", "label_quality"]


@dataclass
class LabelSet:
    """Training data of one arm: ``images`` HU, ``targets`` in ``[0, 1]``, ``weights`` ``(N, S, S)`` float32."""

    name: str
    case_ids: list[str]
    images: np.ndarray
    targets: np.ndarray
    weights: np.ndarray


def episode_key_mask(row, case) -> np.ndarray:
    """The final mask of an episode row on the case's key slice, ``(Y, X)`` bool in volume pixels."""
    crop, origin = unpack_mask(row)
    return volume_mask_slice(crop, origin, case.shape, case.key_slice)


def specialist_weights_slice(row, case, floor: float = 0.2) -> np.ndarray:
    """Pixel weights ``(Y, X)`` of a specialist episode on the key slice: :func:`confidence_weights` of
    the spread across its rounds inside the viewport, 1 outside it."""
    out = np.ones(case.shape[1:], np.float32)
    R, S = int(row["sp_rounds"]), int(row["sp_size"])
    if R < 1:
        return out
    rounds = unpack_rounds(row["sp_rounds_bits"], (R, S, S))
    _, var = round_spread(rounds)
    w = confidence_weights(var, floor)
    y0, x0 = int(row["sp_vp_y0"]), int(row["sp_vp_x0"])
    Y, X = out.shape
    ys, ye, xs, xe = max(y0, 0), min(y0 + S, Y), max(x0, 0), min(x0 + S, X)
    out[ys:ye, xs:xe] = w[ys - y0 : ye - y0, xs - x0 : xe - x0]
    return out


def _rows(episodes: pd.DataFrame, arm: str, case_id: str) -> pd.DataFrame:
    sel = episodes[(episodes["annotator"] == arm) & (episodes["case_id"] == case_id)]
    return sel.sort_values("replicate", kind="mergesort")


def build_label_sets(
    episodes: pd.DataFrame,
    cases,
    arms: dict,
    crowd_k: int,
    labelled: set[str] = frozenset(),
    weight_floor: float = 0.2,
    seed: int = 0,
    size: int = CROP_PX,
) -> dict[str, LabelSet]:
    """The label sets of ``arms`` (``{"gt": None, "expert": label, "crowd": label, "novice": label,
    "specialist": label}``, arm labels of the study) on ``cases`` (the study's training cases).

    A case missing an arm's episode (or with fewer than ``crowd_k`` crowd workers) is an error:
    every arm must train on the same cases.
    """
    out: dict[str, dict[str, list]] = {name: {"x": [], "y": [], "w": []} for name in arms}
    ids = [c.case_id for c in cases]
    for case in cases:
        o = crop_origin(case, "train", seed, size)
        img = crop_of(case.volume_hu[case.key_slice], o, size).astype(np.float32)
        gt = case.gt[case.key_slice]
        for name, arm in arms.items():
            w = np.ones(gt.shape, np.float32)
            if arm is None or (name == "specialist" and case.case_id in labelled):
                m = gt
            else:
                rows = _rows(episodes, arm, case.case_id)
                need = crowd_k if name == "crowd" else 1
                if len(rows) < need:
                    raise ValueError(f"case {case.case_id}: arm {arm!r} has {len(rows)} episode(s), {need} needed")
                masks = [episode_key_mask(r, case) for _, r in rows.head(need).iterrows()]
                m = fuse_staple(np.stack(masks)) if name == "crowd" else masks[0]
                if name == "specialist":
                    w = specialist_weights_slice(rows.iloc[0], case, weight_floor)
            out[name]["x"].append(img)
            out[name]["y"].append(crop_of(m, o, size, fill=False).astype(np.float32))
            out[name]["w"].append(crop_of(w, o, size, fill=1.0).astype(np.float32))
    return {name: LabelSet(name, ids, np.stack(d["x"]), np.stack(d["y"]), np.stack(d["w"])) for name, d in out.items()}


def label_quality(sets: dict[str, LabelSet]) -> pd.DataFrame:
    """Every label set's (binarised) targets against the ``gt`` set, per case: ``arm, case_id, dice,
    area_ratio`` (label pixels / ground-truth pixels: > 1 over-, < 1 under-segmenting)."""
    ref = sets["gt"].targets > 0.5
    rows = []
    for name, ls in sets.items():
        t = ls.targets > 0.5
        inter = (t & ref).sum((1, 2))
        s = t.sum((1, 2)) + ref.sum((1, 2))
        d = np.where(s == 0, 1.0, 2.0 * inter / np.maximum(s, 1))
        ratio = t.sum((1, 2)) / np.maximum(ref.sum((1, 2)), 1)
        rows += [
            {"arm": name, "case_id": c, "dice": float(v), "area_ratio": float(r)}
            for c, v, r in zip(ls.case_ids, d, ratio)
        ]
    return pd.DataFrame(rows)
