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

When the study ran in 3-D (whole nodules), :func:`build_label_volumes` makes the labels volumes:
every slice of each training case's volume, in the same in-plane crop, labelled by the arm's 3-D
mask (slices the annotator left empty are labelled background, as a volume label says), the crowd
fused by STAPLE in 3-D. The rows of its label sets are slices, ``case_ids`` one per row; the 2-D
net of :mod:`hiseg_sim.downstream.training` trains on all of them (nnU-Net's 2d configuration)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hiseg_sim.analysis.crowd import fuse_staple
from hiseg_sim.codec import unpack_mask
from hiseg_sim.downstream.pseudo import confidence_weights, round_spread, unpack_rounds
from hiseg_sim.downstream.slices import CROP_PX, crop_of, crop_origin, volume_mask_slice

__all__ = [
    "LabelSet",
    "episode_key_mask",
    "episode_volume_mask",
    "specialist_weights_slice",
    "build_label_sets",
    "build_label_volumes",
    "label_quality",
]


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


def episode_volume_mask(row, case) -> np.ndarray:
    """The final mask of an episode row pasted into the case's volume, ``(Z, Y, X)`` bool."""
    crop, origin = unpack_mask(row)
    out = np.zeros(case.shape, bool)
    if crop.size:
        z0, y0, x0 = (int(v) for v in origin)
        Z, Y, X = case.shape
        ze, ye, xe = min(z0 + crop.shape[0], Z), min(y0 + crop.shape[1], Y), min(x0 + crop.shape[2], X)
        out[z0:ze, y0:ye, x0:xe] = crop[: ze - z0, : ye - y0, : xe - x0]
    return out


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


def _fuse_in_box(masks: np.ndarray) -> np.ndarray:
    """STAPLE of ``(k, Z, Y, X)`` masks on the bounding box of their union (where the workers drew;
    outside it every worker said background), pasted back into the volume."""
    out = np.zeros(masks.shape[1:], bool)
    idx = np.argwhere(masks.any(0))
    if idx.size == 0:
        return out
    a, b = idx.min(0), idx.max(0) + 1
    box = (slice(a[0], b[0]), slice(a[1], b[1]), slice(a[2], b[2]))
    out[box] = fuse_staple(masks[(slice(None), *box)])
    return out


def build_label_volumes(
    episodes: pd.DataFrame,
    cases,
    arms: dict,
    crowd_k: int,
    seed: int = 0,
    size: int = CROP_PX,
) -> dict[str, LabelSet]:
    """Volume label sets of ``arms`` (as :func:`build_label_sets`; no ``specialist``: its annotator
    works in 2-D) from 3-D episodes: every slice of each case, cropped in-plane at
    :func:`crop_origin`; one row per slice, ``case_ids`` one per row. The crowd arm is the STAPLE
    fusion of ``crowd_k`` workers' 3-D masks, voxel by voxel on the box of their union. Weights are 1."""
    if "specialist" in arms:
        raise ValueError(
            "the specialist annotator labels one key slice (NoduleSeg2D-v0); a 3-D downstream study "
            "trains on arms gt, expert, crowd and novice"
        )
    out: dict[str, dict[str, list]] = {name: {"x": [], "y": [], "ids": []} for name in arms}
    for case in cases:
        o = crop_origin(case, "train", seed, size)
        img = np.stack([crop_of(case.volume_hu[z], o, size) for z in range(case.shape[0])]).astype(np.float32)
        for name, arm in arms.items():
            if arm is None:
                m = case.gt
            else:
                rows = _rows(episodes, arm, case.case_id)
                need = crowd_k if name == "crowd" else 1
                if len(rows) < need:
                    raise ValueError(f"case {case.case_id}: arm {arm!r} has {len(rows)} episode(s), {need} needed")
                masks = np.stack([episode_volume_mask(r, case) for _, r in rows.head(need).iterrows()])
                m = _fuse_in_box(masks) if name == "crowd" else masks[0]
            out[name]["x"].append(img)
            out[name]["y"].append(np.stack([crop_of(sl, o, size, fill=False) for sl in m]).astype(np.float32))
            out[name]["ids"] += [case.case_id] * case.shape[0]
    return {
        name: LabelSet(
            name, d["ids"], np.concatenate(d["x"]), np.concatenate(d["y"]), np.ones_like(np.concatenate(d["y"]))
        )
        for name, d in out.items()
    }


def label_quality(sets: dict[str, LabelSet]) -> pd.DataFrame:
    """Every label set's (binarised) targets against the ``gt`` set, per case (over all the case's
    rows: its key slice, or every slice of a volume label): ``arm, case_id, dice, area_ratio``
    (label voxels / ground-truth voxels: > 1 over-, < 1 under-segmenting)."""
    ref = sets["gt"].targets > 0.5
    rows = []
    for name, ls in sets.items():
        t = ls.targets > 0.5
        per = (
            pd.DataFrame(
                {
                    "case_id": ls.case_ids,
                    "inter": (t & ref).sum((1, 2)),
                    "lab": t.sum((1, 2)),
                    "ref": ref.sum((1, 2)),
                }
            )
            .groupby("case_id", sort=False)[["inter", "lab", "ref"]]
            .sum()
        )
        s = per["lab"] + per["ref"]
        d = np.where(s == 0, 1.0, 2.0 * per["inter"] / np.maximum(s, 1))
        ratio = per["lab"] / np.maximum(per["ref"], 1)
        rows += [
            {"arm": name, "case_id": c, "dice": float(v), "area_ratio": float(r)}
            for c, v, r in zip(per.index, d, ratio)
        ]
    return pd.DataFrame(rows)
