"""The literature's click and box robots, and the NoC protocol that runs them.

Robots read the ground truth — that is what they are: exact baselines from published code,
so published protocols reproduce beside the behaviour models. They are pure functions (numpy
in, numpy out, randomness from an explicit ``numpy.random.Generator``); agent and environment
wrappers live elsewhere.

Coordinates: masks are ``(Y, X)`` or ``(Z, Y, X)``; a :class:`Click` holds ``(x, y)`` or
``(x, y, z)`` (SAM's order) and ``positive``; boxes are ``XYXY`` floats.

=====================  ==================================================================
robot                  source (file :: function)
=====================  ==================================================================
``ritm_click``         SamsungLabs/ritm_interactive_segmentation
                       ``isegm/inference/clicker.py :: Clicker._get_next_click``
``microsam_clicks``    computational-cell-analytics/micro-sam
                       ``micro_sam/prompt_generators.py :: IterativePromptGenerator``
``deepgrow_click``     Project-MONAI/MONAI ``monai/apps/deepgrow/transforms.py ::
                       FindDiscrepancyRegionsd, AddRandomGuidanced.find_guidance``
``sammed3d_click``     uni-medical/SAM-Med3D ``utils/infer_utils.py :: random_sample_next_click``
``medsegfm_click``     JunMa11/CVPR-MedSegFMCompetition ``CVPR25_iter_eval.py :: compute_edt,
                       sample_coord`` and its refinement loop
``medsam_box``         bowang-lab/MedSAM ``train_one_gpu.py :: NpyDataset.__getitem__``
``sam_noisy_box``      Segment Anything paper, appendix A (no public training code)
``noc``/``noc_metric`` RITM ``isegm/inference/utils.py :: compute_noc_metric``
``run_click_protocol`` RITM ``isegm/inference/evaluation.py :: evaluate_sample``
=====================  ==================================================================
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hiseg_sim.annotators.robots.boxes import gt_box, medsam_box, sam_noisy_box
from hiseg_sim.annotators.robots.points import (
    Click,
    clicks_to_sam,
    deepgrow_click,
    medsegfm_click,
    microsam_clicks,
    ritm_click,
    sammed3d_click,
)
from hiseg_sim.metrics import dice, iou

__all__ = [
    "Click",
    "clicks_to_sam",
    "ritm_click",
    "microsam_clicks",
    "deepgrow_click",
    "sammed3d_click",
    "medsegfm_click",
    "gt_box",
    "medsam_box",
    "sam_noisy_box",
    "noc",
    "noc_metric",
    "run_click_protocol",
]


def _iou_list(ious: Sequence[float] | Sequence[Mapping[str, Any]]) -> np.ndarray:
    vals = [r["iou"] if isinstance(r, Mapping) else r for r in ious]
    return np.asarray(vals, dtype=np.float64)


def noc(
    ious: Sequence[float] | Sequence[Mapping[str, Any]],
    threshold: float,
    max_clicks: int = 20,
    unreached: str = "max",
) -> int | None:
    """Number of clicks to reach ``threshold`` IoU (RITM's NoC for one object).

    Source: RITM ``isegm/inference/utils.py :: compute_noc_metric._get_noc``:
    ``argmax(ious >= thr) + 1`` if any click reaches it, else ``max_clicks``. ``ious[k]`` is the
    IoU after click ``k + 1`` (the loop's order); only the first ``max_clicks`` are read.

    Args:
        ious: IoU after each click, or the records of :func:`run_click_protocol`.
        threshold: e.g. 0.85 or 0.90 (NoC@85, NoC@90).
        max_clicks: RITM's 20.
        unreached: ``"max"`` (RITM: never reached counts as ``max_clicks``, so it cannot be
            told apart from reaching it on the last click) or ``"none"`` (return None).
    """
    if unreached not in ("max", "none"):
        raise ValueError(f"unreached must be 'max' or 'none'; got {unreached!r}")
    hit = _iou_list(ious)[:max_clicks] >= threshold
    if hit.any():
        return int(np.argmax(hit)) + 1
    return max_clicks if unreached == "max" else None


def noc_metric(
    all_ious: Sequence[Sequence[float]],
    thresholds: Sequence[float] = (0.85, 0.90),
    max_clicks: int = 20,
) -> dict[float, dict[str, float]]:
    """Mean NoC over objects and RITM's "over max" count, per threshold.

    Source: RITM ``compute_noc_metric``: ``noc`` is the mean of the per-object NoC (unreached
    = ``max_clicks``); ``over_max`` counts objects whose NoC equals ``max_clicks`` (so an object
    reaching the threshold exactly on click 20 counts too, as in RITM).
    """
    out: dict[float, dict[str, float]] = {}
    for thr in thresholds:
        scores = np.array([noc(i, thr, max_clicks) for i in all_ious], dtype=np.int64)
        out[float(thr)] = {
            "noc": float(scores.mean()) if scores.size else float("nan"),
            "over_max": int((scores == max_clicks).sum()),
        }
    return out


def _call_robot(click_fn: Callable, pred, gt, rng, history: list[Click]) -> list[Click]:
    params = inspect.signature(click_fn).parameters
    kwargs: dict[str, Any] = {}
    if "rng" in params:
        if rng is None:
            raise ValueError(f"{getattr(click_fn, '__name__', click_fn)!r} draws random numbers: pass rng=")
        kwargs["rng"] = rng
    if "previous" in params:
        kwargs["previous"] = tuple(history)
    out = click_fn(pred, gt, **kwargs)
    if out is None:
        return []
    if isinstance(out, Click):
        return [out]
    return list(out)


def run_click_protocol(
    segment_fn: Callable[[tuple[Click, ...]], np.ndarray],
    gt,
    click_fn: Callable,
    max_clicks: int = 20,
    target_iou: float = 0.9,
    rng: np.random.Generator | None = None,
    initial_pred=None,
    min_clicks: int = 1,
) -> list[dict[str, Any]]:
    """Run a click robot against a segmenter until the target IoU or the click budget.

    Robots read the ground truth — that is what they are; the loop scores with it too.
    Source: RITM ``isegm/inference/evaluation.py :: evaluate_sample``: start from an empty
    prediction, then per step: next click from the current prediction, new prediction from all
    clicks so far, record the IoU, stop once ``iou >= target_iou`` (after ``min_clicks``) or
    after ``max_clicks`` steps.

    Args:
        segment_fn: ``segment_fn(clicks) -> mask`` with ``clicks`` a tuple of every
            :class:`Click` so far, in order; returns a mask of ``gt``'s shape. It may keep its
            own state (e.g. the previous low-resolution logits as a mask prompt).
        gt: ground-truth mask ``(Y, X)`` or ``(Z, Y, X)``.
        click_fn: a robot, called as ``click_fn(pred, gt[, rng=rng][, previous=clicks])`` —
            ``rng`` and ``previous`` are passed when its signature names them. It returns a
            Click, a list of Clicks (micro-sam: two per step) or None (no error left: stop).
            Use ``functools.partial`` to fix other arguments (``method=``, ``pad=``).
        max_clicks: the budget, in robot steps (RITM 20; one micro-sam step adds two points).
        target_iou: stop threshold (RITM stops at the largest NoC threshold, e.g. 0.90).
        rng: the generator handed to robots that draw.
        initial_pred: the prediction before the first click (default: empty, as RITM; e.g. a
            box prediction for micro-sam or the MedSegFM evaluator).
        min_clicks: RITM's ``min_clicks``.

    Returns:
        One dict per step: ``step`` (1-based), ``clicks`` (the Clicks added this step),
        ``n_points`` (all points so far), ``iou``, ``dice`` (of the new mask against ``gt``),
        ``reached`` (``iou >= target_iou``) and ``stop`` (None, or on the last record
        ``"target"``, ``"max_clicks"`` or ``"no_error"`` when the robot found nothing left to
        correct). Feed it to :func:`noc`.
    """
    gt = np.asarray(gt).astype(bool, copy=False)
    pred = np.zeros_like(gt) if initial_pred is None else np.asarray(initial_pred).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"initial_pred shape {pred.shape} differs from gt {gt.shape}")
    history: list[Click] = []
    records: list[dict[str, Any]] = []
    for step in range(1, int(max_clicks) + 1):
        new = _call_robot(click_fn, pred, gt, rng, history)
        if not new:
            if records:
                records[-1]["stop"] = "no_error"
            break
        history.extend(new)
        pred = np.asarray(segment_fn(tuple(history))).astype(bool)
        if pred.shape != gt.shape:
            raise ValueError(f"segment_fn returned shape {pred.shape}; expected {gt.shape}")
        score = iou(pred, gt)
        rec = {
            "step": step,
            "clicks": tuple(new),
            "n_points": len(history),
            "iou": score,
            "dice": dice(pred, gt),
            "reached": score >= target_iou,
            "stop": None,
        }
        records.append(rec)
        if score >= target_iou and step >= min_clicks:
            rec["stop"] = "target"
            break
    else:
        if records:
            records[-1]["stop"] = "max_clicks"
    return records
