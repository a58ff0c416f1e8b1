"""Bootstrap intervals: percentile intervals of means, resampling whole clusters (cases or persons).

Episodes of one case are not independent (the same nodule is easy or hard for everyone), so the
intervals here resample *clusters* — cases, or simulated persons in a sequence study — with
replacement, and recompute the statistic over all episodes of the drawn clusters. All draws come
from ``numpy.random.default_rng(seed)``: the same seed gives the same interval.

>>> est, lo, hi = bootstrap_ci([0.8, 0.9, 0.85, 0.7], seed=0)
>>> round(est, 4), lo <= est <= hi
(0.8125, True)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["bootstrap_ci", "cluster_means_boot", "paired_bootstrap"]


def cluster_means_boot(values, clusters=None, n_boot: int = 2000, seed: int = 0) -> tuple[float, np.ndarray]:
    """The mean of ``values`` and ``n_boot`` bootstrap replicates of it, resampling ``clusters``.

    NaN values are left out (of the estimate and of every replicate). Returns ``(mean, draws)``;
    ``draws`` is empty when there is nothing to resample.
    """
    v = np.asarray(values, dtype=np.float64)
    c = np.arange(v.size) if clusters is None else pd.factorize(np.asarray(clusters))[0]
    ok = np.isfinite(v)
    v, c = v[ok], c[ok]
    if v.size == 0:
        return float("nan"), np.array([])
    c = pd.factorize(c)[0]
    n_c = int(c.max()) + 1
    sums = np.bincount(c, weights=v, minlength=n_c)
    counts = np.bincount(c, minlength=n_c).astype(np.float64)
    est = float(sums.sum() / counts.sum())
    if n_c < 2 or n_boot <= 0:
        return est, np.array([])
    rng = np.random.default_rng(seed)
    draws = np.empty(int(n_boot))
    chunk = max(1, int(2_000_000 // n_c))
    for s in range(0, int(n_boot), chunk):
        idx = rng.integers(0, n_c, size=(min(chunk, int(n_boot) - s), n_c))
        draws[s : s + idx.shape[0]] = sums[idx].sum(1) / counts[idx].sum(1)
    return est, draws


def bootstrap_ci(
    values, clusters=None, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean and its percentile bootstrap interval (resampling ``clusters``).

    Args:
        values: one number per episode (NaN ignored).
        clusters: one label per value (e.g. the case id); ``None`` resamples values one by one.
        n_boot: bootstrap replicates.
        level: coverage of the interval (0.95 → 2.5th and 97.5th percentiles).
        seed: seed of the resampling.

    With fewer than two clusters the interval is ``(nan, nan)``.
    """
    est, draws = cluster_means_boot(values, clusters, n_boot, seed)
    if draws.size == 0:
        return est, float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(draws, [a, 1.0 - a])
    return est, float(lo), float(hi)


def paired_bootstrap(
    df: pd.DataFrame,
    value: str,
    arm_col: str,
    a: str,
    b: str,
    pair_on: Sequence[str] = ("case_id", "replicate"),
    cluster: str = "case_id",
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Mean of ``value[a] - value[b]`` over pairs matched on ``pair_on``, with a cluster-bootstrap interval.

    Pairs are the rows of arms ``a`` and ``b`` with the same ``pair_on`` key (e.g. the same case
    and replicate); clusters (``cluster``, a column of ``pair_on``) are resampled whole.

    Returns:
        ``{"a", "b", "diff", "lo", "hi", "n_pairs", "p_boot"}``; ``p_boot`` is the two-sided
        bootstrap p-value (twice the smaller share of replicates on either side of 0).
    """
    keys = list(pair_on)
    if cluster not in keys:
        raise ValueError(f"cluster {cluster!r} must be one of pair_on {keys}")
    wa = df[df[arm_col] == a].set_index(keys)[value]
    wb = df[df[arm_col] == b].set_index(keys)[value]
    both = pd.concat([wa.rename("a"), wb.rename("b")], axis=1, join="inner").dropna()
    if both.empty:
        return {
            "a": a,
            "b": b,
            "diff": float("nan"),
            "lo": float("nan"),
            "hi": float("nan"),
            "n_pairs": 0,
            "p_boot": float("nan"),
        }
    diff = (both["a"] - both["b"]).to_numpy()
    cl = both.index.get_level_values(cluster)
    est, draws = cluster_means_boot(diff, cl, n_boot, seed)
    if draws.size:
        q = (1.0 - level) / 2.0
        lo, hi = np.quantile(draws, [q, 1.0 - q])
        p = float(min(1.0, 2.0 * min((draws <= 0).mean(), (draws >= 0).mean())))
    else:
        lo = hi = p = float("nan")
    return {"a": a, "b": b, "diff": est, "lo": float(lo), "hi": float(hi), "n_pairs": int(len(diff)), "p_boot": p}
