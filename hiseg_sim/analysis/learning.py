"""Learning curves from a sequence study, and how many practice cases a newcomer needs.

In a ``design = "sequence"`` study each replicate is one simulated person who works through the
same seeded order of cases in every arm (:func:`hiseg_sim.experiments.units.sequence_order`), so
arm A's person r and arm B's person r meet the same case at the same position. Comparing them
pair by pair removes case difficulty from the comparison; the intervals resample whole persons
(replicates), seeded.

*Practice cases needed* (:func:`cases_to_reach`): the learner's per-position Dice minus the
reference arm's, averaged over persons and smoothed with a centred moving average of ``window``
positions, must come to at least ``-margin`` (Hi-Seg's "reached the level"; ``margin`` 0.02
Dice by default, the tolerance of the annotator issue). Three readings of "comes to":

- ``mode="exp"`` (the report's headline): an exponential learning curve
  ``gap(p) = a + (g0 - a) exp(-p / tau)`` fitted to the mean gap (least squares,
  :func:`fit_exponential`); the answer is where the fitted curve crosses ``-margin``, ``None``
  if its asymptote stays below. Uses every case and is not fooled by one noisy stretch.
- ``mode="first"``: the first position where the smoothed gap is at least ``-margin``.
- ``mode="stay"``: the first position from which the smoothed gap stays there to the end.

The answer is the number of cases done before (0 = at the level from the first case). A bootstrap over persons gives the interval; draws that
never get there count as "more than the sequence" and are reported as a share.

*Minutes needed*: with a ``cost`` per person and position (the minutes a case took, its feedback
included) and an ``upfront`` per person (minutes before the first case: a tutorial), the minutes to
the level are the persons' mean ``upfront`` plus the cost of the cases before the crossing,
computed on the same bootstrap draws as the cases, so the two intervals belong together.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hiseg_sim.analysis.stats import bootstrap_ci

__all__ = [
    "learning_curve",
    "paired_gap_matrix",
    "gap_curve",
    "smooth",
    "crossing",
    "fit_exponential",
    "fit_text",
    "exp_crossing",
    "cases_to_reach",
    "end_means",
    "gain_difference",
]


def learning_curve(
    episodes: pd.DataFrame,
    by: str = "annotator",
    value: str = "final_dice",
    n_boot: int = 500,
    seed: int = 0,
    window: int = 1,
) -> pd.DataFrame:
    """Mean ``value`` per arm and position (0-based) with a 95 % bootstrap band over persons.

    ``window`` > 1 smooths each person's series with a centred moving average first.
    Columns: ``by, position, case_number (1-based), value, lo, hi, n``.
    """
    rows = []
    for arm, g in episodes.groupby(by, sort=False):
        piv = g.pivot_table(index="replicate", columns="position", values=value, aggfunc="mean")
        M = piv.to_numpy(dtype=float)
        if window > 1:
            M = np.vstack([smooth(r, window) for r in M])
        for j, pos in enumerate(piv.columns):
            est, lo, hi = bootstrap_ci(M[:, j], None, n_boot, seed=seed)
            rows.append(
                {
                    by: arm,
                    "position": int(pos),
                    "case_number": int(pos) + 1,
                    value: est,
                    "lo": lo,
                    "hi": hi,
                    "n": int(np.isfinite(M[:, j]).sum()),
                }
            )
    return pd.DataFrame(rows)


def smooth(x: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of ``window`` points (shorter at the ends), NaN-aware.

    >>> smooth(np.array([0., 1., 2., 3., 4.]), 3).tolist()
    [0.5, 1.0, 2.0, 3.0, 3.5]
    """
    x = np.asarray(x, dtype=float)
    if window <= 1:
        return x.copy()
    h = window // 2
    out = np.empty_like(x)
    for i in range(x.size):
        seg = x[max(0, i - h) : i + (window - h)]
        out[i] = np.nanmean(seg) if np.isfinite(seg).any() else np.nan
    return out


def paired_gap_matrix(
    episodes: pd.DataFrame, learner: str, reference: str, value: str = "final_dice", arm_col: str = "annotator"
) -> pd.DataFrame:
    """``learner − reference`` per person (rows: replicate) and position (columns), paired on both."""
    a = episodes[episodes[arm_col] == learner].pivot_table(index="replicate", columns="position", values=value)
    b = episodes[episodes[arm_col] == reference].pivot_table(index="replicate", columns="position", values=value)
    if a.empty or b.empty:
        raise ValueError(f"need episodes of both {learner!r} and {reference!r}")
    reps = a.index.intersection(b.index)
    pos = a.columns.intersection(b.columns)
    if len(reps) == 0:
        raise ValueError(
            f"{learner!r} and {reference!r} share no replicate: pair them by giving both the same replicates"
        )
    return a.loc[reps, pos] - b.loc[reps, pos]


def gap_curve(
    episodes: pd.DataFrame,
    learner: str,
    reference: str,
    window: int = 5,
    n_boot: int = 500,
    seed: int = 0,
    value: str = "final_dice",
    arm_col: str = "annotator",
) -> pd.DataFrame:
    """The smoothed mean paired gap ``learner − reference`` per position with a 95 % band (bootstrap
    over persons) and the fitted exponential learning curve: columns ``learner, position,
    case_number, gap, lo, hi, fit``."""
    M = paired_gap_matrix(episodes, learner, reference, value, arm_col).to_numpy(dtype=float)
    est = smooth(np.nanmean(M, axis=0), window)
    rng = np.random.default_rng(seed)
    n = M.shape[0]
    boot = np.array([smooth(np.nanmean(M[rng.integers(0, n, n)], axis=0), window) for _ in range(int(n_boot))])
    lo, hi = (
        np.quantile(boot, [0.025, 0.975], axis=0)
        if n > 1 and n_boot > 0
        else (np.full_like(est, np.nan), np.full_like(est, np.nan))
    )
    pos = np.arange(M.shape[1])
    fit = fit_exponential(np.nanmean(M, axis=0))
    fitted = np.full(pos.size, np.nan) if fit is None else fit[1] + (fit[0] - fit[1]) * np.exp(-pos / fit[2])
    return pd.DataFrame(
        {"learner": learner, "position": pos, "case_number": pos + 1, "gap": est, "lo": lo, "hi": hi, "fit": fitted}
    )


def crossing(curve: np.ndarray, level: float, mode: str = "first") -> int | None:
    """Where ``curve`` reaches ``level``: ``mode="first"`` the first index with ``curve >= level``;
    ``mode="stay"`` the first index from which it holds to the end. ``None`` if never.

    >>> crossing(np.array([-.1, 0.01, -.05, 0.0, 0.02]), 0.0), crossing(np.array([-.1, 0.01, -.05, 0.0, 0.02]), 0.0, "stay")
    (1, 3)
    """
    ok = np.asarray(curve) >= level
    if mode == "first":
        hit = np.flatnonzero(ok)
        return int(hit[0]) if hit.size else None
    if mode != "stay":
        raise ValueError(f"mode must be 'first' or 'stay'; got {mode!r}")
    if ok.size == 0 or not ok[-1]:
        return None
    bad = np.flatnonzero(~ok)
    return 0 if bad.size == 0 else int(bad[-1] + 1)


def fit_exponential(gap: np.ndarray) -> tuple[float, float, float] | None:
    """Least-squares fit of ``gap(p) = a + (g0 - a) * exp(-p / tau)`` (p = 0, 1, …) to a mean gap
    curve (NaN ignored); returns ``(g0, a, tau)`` or ``None`` when the fit fails.

    >>> p = np.arange(30.0)
    >>> g0, a, tau = fit_exponential(0.05 - 0.2 * np.exp(-p / 6.0))
    >>> round(g0, 3), round(a, 3), round(tau, 2)
    (-0.15, 0.05, 6.0)
    """
    from scipy.optimize import curve_fit

    y = np.asarray(gap, dtype=float)
    p = np.arange(y.size, dtype=float)
    ok = np.isfinite(y)
    if ok.sum() < 4:
        return None

    def f(x, g0, a, log_tau):
        return a + (g0 - a) * np.exp(-x / np.exp(log_tau))

    tail = float(np.nanmean(y[-max(3, y.size // 4) :]))
    try:
        (g0, a, lt), _ = curve_fit(
            f,
            p[ok],
            y[ok],
            p0=(float(y[ok][0]), tail, np.log(max(2.0, y.size / 5))),
            bounds=([-2, -2, 0.0], [2, 2, np.log(1e4)]),
            maxfev=5000,
        )
    except (RuntimeError, ValueError):
        return None
    return float(g0), float(a), float(np.exp(lt))


def fit_text(fit: tuple[float, float, float] | None, n_cases: int) -> str:
    """A fitted learning curve for a table: ``"g0 → a (tau)"``; when ``tau`` is past ten times the
    sequence the curve is a straight line over the data and its asymptote is only the fit's bound,
    so the text says which way it goes instead.

    >>> fit_text((-0.05, -0.02, 4.0), 20)
    '-0.050 → -0.020 (4.0)'
    >>> fit_text((-0.04, -2.0, 512.3), 20)
    '-0.040 → falls throughout (no level within 20 cases)'
    >>> fit_text(None, 20)
    '–'
    """
    if fit is None:
        return "–"
    g0, a, tau = fit
    if tau > 10 * n_cases:
        way = "falls" if a < g0 else "rises"
        return f"{g0:+.3f} → {way} throughout (no level within {n_cases} cases)"
    return f"{g0:+.3f} → {a:+.3f} ({tau:.1f})"


def exp_crossing(gap: np.ndarray, level: float) -> int | None:
    """Cases of practice until the fitted exponential learning curve reaches ``level`` for good:
    ``None`` if its asymptote is below ``level`` (it never gets there, or falls away from it) or the
    fit fails; 0 if it starts there; else the first whole position at or after the crossing.
    ``tau`` is at least one case."""
    fit = fit_exponential(gap)
    if fit is None:
        return None
    g0, a, tau = fit
    if a < level:
        return None
    if g0 >= level:
        return 0
    return int(np.ceil(tau * np.log((g0 - a) / (level - a))))


def cases_to_reach(
    episodes: pd.DataFrame,
    learner: str,
    reference: str,
    margin: float = 0.02,
    window: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
    value: str = "final_dice",
    arm_col: str = "annotator",
    mode: str = "first",
    cost: pd.DataFrame | None = None,
    upfront: pd.Series | None = None,
) -> dict:
    """Practice cases until ``learner`` reaches ``reference``'s level (see the module docstring).

    Returns ``{"cases", "lo", "hi", "never_share", "length", "persons", "gap_first", "gap_last",
    "curve"}``: ``cases`` the point estimate (``None`` if not reached within the sequence),
    ``lo``/``hi`` the 2.5th/97.5th percentiles of the bootstrap (``hi`` is ``None`` when more
    than 2.5 % of draws never reach it: "> length"), ``gap_*`` the smoothed gap at the first and
    last position and ``curve`` the smoothed mean gap per position. With ``cost`` (the learner's
    minutes per case: rows replicate, columns position) also ``minutes``, ``minutes_lo`` and
    ``minutes_hi`` (``None`` where the cases are); ``upfront`` (minutes per replicate before the
    first case) is added to them.
    """
    D = paired_gap_matrix(episodes, learner, reference, value, arm_col)
    M = D.to_numpy(dtype=float)
    length = M.shape[1]
    curve = smooth(np.nanmean(M, axis=0), window)
    cum = None
    if cost is not None:
        C = cost.reindex(index=D.index, columns=D.columns).to_numpy(dtype=float)
        up = np.zeros(len(D.index)) if upfront is None else upfront.reindex(D.index).fillna(0.0).to_numpy(float)
        cum = up[:, None] + np.concatenate([np.zeros((C.shape[0], 1)), np.nancumsum(C, axis=1)], axis=1)

    def cross(mean_gap: np.ndarray):
        if mode == "exp":
            c = exp_crossing(mean_gap, -margin)
            return None if c is not None and c >= length else c
        return crossing(smooth(mean_gap, window), -margin, mode)

    est = cross(np.nanmean(M, axis=0))
    rng = np.random.default_rng(seed)
    n = M.shape[0]
    never_code = length + 1  # "not within the sequence": above every reachable position
    hits = np.empty(n_boot, dtype=np.int64)
    mins = np.full(n_boot, np.inf)
    for b in range(n_boot):
        idx = rng.integers(0, n, size=n)
        c = cross(np.nanmean(M[idx], axis=0))
        hits[b] = never_code if c is None else c
        if cum is not None and c is not None:
            mins[b] = float(cum[idx, c].mean())
    never = float((hits == never_code).mean())
    lo, hi = (int(v) for v in np.quantile(hits, [0.025, 0.975], method="inverted_cdf"))
    out = {
        "learner": learner,
        "reference": reference,
        "margin": margin,
        "window": window,
        "mode": mode,
        "cases": est,
        "lo": None if lo == never_code else lo,
        "hi": None if hi == never_code else hi,
        "never_share": never,
        "length": int(length),
        "persons": int(n),
        "gap_first": float(curve[0]),
        "gap_last": float(curve[-1]),
        "curve": curve.tolist(),
    }
    if cum is not None:
        mlo, mhi = (float(v) for v in np.quantile(mins, [0.025, 0.975], method="inverted_cdf"))
        out.update(
            minutes=None if est is None else float(cum[:, est].mean()),
            minutes_lo=None if not np.isfinite(mlo) else mlo,
            minutes_hi=None if not np.isfinite(mhi) else mhi,
        )
    return out


def end_means(
    episodes: pd.DataFrame, arm: str, ends: int = 5, value: str = "final_dice", arm_col: str = "annotator"
) -> pd.DataFrame:
    """Each person's mean ``value`` on the first and on the last ``ends`` cases of their sequence:
    rows replicate, columns ``first`` and ``last``."""
    g = episodes[episodes[arm_col] == arm]
    if g.empty:
        raise ValueError(f"no episodes of {arm!r}")
    length = int(g["position"].max()) + 1
    first = g[g["position"] < ends].groupby("replicate")[value].mean()
    last = g[g["position"] >= length - ends].groupby("replicate")[value].mean()
    return pd.DataFrame({"first": first, "last": last})


def case_adjusted_gain(
    episodes: pd.DataFrame,
    arm: str,
    ends: int = 5,
    value: str = "final_dice",
    n_boot: int = 2000,
    seed: int = 0,
    arm_col: str = "annotator",
) -> tuple[float, float, float]:
    """``(est, lo, hi)``: the arm's gain from its first to its last ``ends`` cases with the cases'
    own difficulty taken out, and a 95 % bootstrap interval over persons.

    ``value`` is fitted as a case effect plus a position effect (least squares on both sets of
    indicators); the gain is the mean position effect of the last ``ends`` places less that of the
    first ``ends``. With seeded orders a few persons' last cases can simply be harder ones: the raw
    gain moves with that, this one does not (each case is met at several places, which is what
    separates the two)."""
    g = episodes[episodes[arm_col] == arm]
    if g.empty:
        raise ValueError(f"no episodes of {arm!r}")
    cases = {c: i for i, c in enumerate(sorted(g["case_id"].unique()))}
    length = int(g["position"].max()) + 1
    per_person = [
        (
            np.array([cases[c] for c in d["case_id"]]),
            d["position"].to_numpy(int),
            d[value].to_numpy(float),
        )
        for _, d in g.groupby("replicate")
    ]
    first, last = np.arange(ends), np.arange(length - ends, length)

    def gain(idx) -> float:
        ci = np.concatenate([per_person[i][0] for i in idx])
        pi = np.concatenate([per_person[i][1] for i in idx])
        y = np.concatenate([per_person[i][2] for i in idx])
        X = np.zeros((y.size, len(cases) + length - 1))
        X[np.arange(y.size), ci] = 1.0
        later = pi > 0  # position 0 is the level the others are measured from
        X[np.flatnonzero(later), len(cases) + pi[later] - 1] = 1.0
        beta = np.linalg.lstsq(X, y, rcond=None)[0]
        pos = np.concatenate([[0.0], beta[len(cases) :]])
        return float(pos[last].mean() - pos[first].mean())

    n = len(per_person)
    est = gain(range(n))
    rng = np.random.default_rng(seed)
    draws = np.array([gain(rng.integers(0, n, n)) for _ in range(n_boot)])
    lo, hi = np.quantile(draws, [0.025, 0.975])
    return est, float(lo), float(hi)


def gain_difference(
    episodes: pd.DataFrame,
    arm: str,
    baseline: str,
    ends: int = 5,
    value: str = "final_dice",
    n_boot: int = 2000,
    seed: int = 0,
    arm_col: str = "annotator",
) -> tuple[float, float, float]:
    """``(est, lo, hi)``: how much more ``arm`` gains from its first to its last ``ends`` cases than
    ``baseline`` does, paired by person (person r of both arms meets the same cases), with a 95 %
    bootstrap interval over persons."""
    a = end_means(episodes, arm, ends, value, arm_col)
    b = end_means(episodes, baseline, ends, value, arm_col)
    reps = a.index.intersection(b.index)
    d = (a.loc[reps, "last"] - a.loc[reps, "first"]) - (b.loc[reps, "last"] - b.loc[reps, "first"])
    return bootstrap_ci(d.to_numpy(float), None, n_boot, seed=seed)
