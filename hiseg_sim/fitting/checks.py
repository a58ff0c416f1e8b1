"""Does the fit work: parameter recovery on simulated persons, and the posterior predictive check.

*Recovery* (:func:`recovery_rows`): sessions simulated from a known profile are fitted; each
identified parameter's 90 % interval should cover the value the persons were simulated with, and
the median's bias and the interval's width say how much a pilot of that size pins it down (fits
of the first ``p`` persons' first ``k`` nodules give the widths at smaller pilots).

*Posterior predictive check* (:func:`predictive_ks`): persons simulated from the fitted profile's
posterior (one joint draw per person) are compared with held-out persons nodule by nodule: the
two-sample Kolmogorov–Smirnov distance between their per-nodule final Dice and seconds. What a
perfect fit gives at the same numbers of persons (:func:`predictive_ks_null`): held-out and
predictive persons both drawn from one pool of persons of the true profile.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from hiseg_sim.annotators.behaviour.profiles import Profile
from hiseg_sim.fitting.fit import fit_sessions
from hiseg_sim.fitting.sessions import Session

__all__ = ["episode_outcomes", "predictive_ks", "predictive_ks_null", "recovery_rows", "subset"]


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
    """One row per (pilot size, fitted parameter): truth, median, 90 % interval, identified, covered.

    ``calibration``: the calibration persons' sessions (cut to each size's nodules and fitted in
    sets of its persons, as :func:`fit_sessions` does) or, for a single size, their
    :func:`~hiseg_sim.fitting.fit.calibration_draws`."""
    rows = []
    for persons, nodules in sizes:
        data = subset(sessions, persons, nodules)
        cal = subset(calibration, len(calibration), nodules) if isinstance(calibration, list) else calibration
        fit = fit_sessions(data, truth, calibration=cal, references=references, seed=seed)
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


def predictive_ks_null(
    persons: list[Session], n_held_out: int, n_predictive: int, reps: int = 300, seed: int = 0
) -> dict[str, np.ndarray]:
    """KS distances of :func:`predictive_ks` when the predictive persons come from the held-out
    persons' own profile: ``reps`` disjoint draws of ``n_held_out`` and ``n_predictive`` persons
    from ``persons`` (at least their sum). Returns ``{"dice_ks", "seconds_ks"}``, ``reps`` each."""
    if len(persons) < n_held_out + n_predictive:
        raise ValueError(f"{len(persons)} persons cannot give {n_held_out} + {n_predictive} disjoint ones")
    rng = np.random.default_rng(seed)
    dice, secs = [], []
    for _ in range(reps):
        idx = rng.permutation(len(persons))
        r = predictive_ks([persons[i] for i in idx[:n_held_out]], [persons[i] for i in idx[n_held_out:][:n_predictive]])
        dice.append(r["dice_ks"])
        secs.append(r["seconds_ks"])
    return {"dice_ks": np.asarray(dice), "seconds_ks": np.asarray(secs)}
