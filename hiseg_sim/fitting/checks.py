"""Does the fit work: parameter recovery on simulated persons, and the posterior predictive check.

*Recovery* (:func:`recovery_rows`): sessions simulated from a known profile are fitted; each
identified parameter's 90 % interval should cover the value the persons were simulated with, and
the median's bias and the interval's width say how much a pilot of that size pins it down (fits
of the first ``p`` persons' first ``k`` nodules give the widths at smaller pilots).

*Posterior predictive check* (:func:`predictive_ks`): persons simulated from the fitted profile's
posterior (one joint draw per person) are compared with held-out persons nodule by nodule: the
two-sample Kolmogorov–Smirnov distance between their per-nodule final Dice and seconds.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from hiseg_sim.annotators.behaviour.profiles import Profile
from hiseg_sim.fitting.fit import fit_sessions
from hiseg_sim.fitting.sessions import Session

__all__ = ["episode_outcomes", "predictive_ks", "recovery_rows", "subset"]


def subset(sessions: list[Session], persons: int, nodules: int | None = None) -> list[Session]:
    """The first ``persons`` sessions, each cut to its first ``nodules`` nodules."""
    out = []
    for s in sessions[:persons]:
        eps = s.episodes if nodules is None else [e for e in s.episodes if e.order < nodules]
        out.append(replace(s, episodes=eps))
    return out


def recovery_rows(
    truth: Profile,
    sessions: list[Session],
    calibration,
    references,
    sizes: list[tuple[int, int | None]],
    seed: int = 0,
) -> list[dict]:
    """One row per (pilot size, fitted parameter): truth, median, 90 % interval, identified, covered."""
    rows = []
    for persons, nodules in sizes:
        data = subset(sessions, persons, nodules)
        fit = fit_sessions(data, truth, calibration=calibration, references=references, seed=seed)
        for name, pf in fit.params.items():
            if pf.lo == pf.hi:
                continue  # not read by any part of the fit
            t = float(truth.value(name))
            rows.append(
                {
                    "profile": truth.name,
                    "persons": persons,
                    "nodules": nodules or max(len(s.episodes) for s in data),
                    "parameter": name,
                    "truth": t,
                    "median": float(np.median(pf.draws)) if pf.draws is not None else float("nan"),
                    "lo": pf.lo,
                    "hi": pf.hi,
                    "identified": pf.identified,
                    "covered": bool(pf.lo - 1e-9 <= t <= pf.hi + 1e-9),
                    "width": pf.hi - pf.lo,
                }
            )
    return rows


def episode_outcomes(sessions: list[Session]) -> tuple[np.ndarray, np.ndarray]:
    """Per nodule: the final Dice and the seconds spent (the last action's)."""
    dice, secs = [], []
    for s in sessions:
        for ep in s.episodes:
            if ep.records:
                dice.append(float(ep.records[-1]["dice"]))
                secs.append(float(ep.records[-1]["seconds_total"]))
    return np.asarray(dice), np.asarray(secs)


def predictive_ks(held_out: list[Session], predictive: list[Session]) -> dict:
    """KS distances between held-out and posterior-predictive per-nodule Dice and seconds."""
    from scipy.stats import ks_2samp

    d_obs, s_obs = episode_outcomes(held_out)
    d_pred, s_pred = episode_outcomes(predictive)
    return {
        "dice_ks": float(ks_2samp(d_obs, d_pred).statistic),
        "seconds_ks": float(ks_2samp(s_obs, s_pred).statistic),
        "n_held_out": int(d_obs.size),
        "n_predictive": int(d_pred.size),
    }
