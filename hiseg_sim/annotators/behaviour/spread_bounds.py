"""What any simulator could reach on the spread targets: reliability ceilings and resampling nulls.

The spread report (:mod:`~hiseg_sim.annotators.behaviour.calibration_spread`) compares each
nodule's real mean pairwise Dice, measured from only 2-4 LIDC readers, with the simulated one,
averaged over many panels. The real figure is a noisy measure of the nodule's *true* agreement
(the expected Dice of two readers drawn from the nodule's population of readers), so even a
perfect simulator, one that draws its readers from that population, cannot reach a rank
correlation of 1 with it, nor a band KS of 0. This module estimates those bounds from the
readers' pair Dice alone (pure functions of numbers: numpy and scipy only).

Model (per nodule ``i``, readers ``a < b`` of its ``k`` readers, on a ``scale`` where effects
add: ``"logit"`` of the pair Dice, or ``"raw"``)::

    t_iab = tau_i + u_ia + u_ib + w_iab,   u ~ N(0, C),  w ~ N(0, V - 2C)

``tau_i`` is the nodule's true agreement (between-nodule variance ``B_k`` around the mean of
the nodules with the same ``k``), ``u`` a reader's own departure on that nodule (two pairs
sharing a reader covariance ``C``), ``w`` the pair's own part; one pair's noise variance is
``V``. Pairs with no reader in common are independent given the nodule: that is what makes a
nodule-level quantity (``tau``) identifiable from 4-reader nodules. The logit is the main scale:
there a pair's noise hardly depends on the nodule's level, on the raw Dice it shrinks fourfold
from the least to the most agreeing nodules. The normal model's variances take in the rare
outlying reader (a core drawn without its rim) more than ranks do, so its ceilings err low:
on LIDC its own split-half is 0.05-0.06 below the data's. The noise of the mean over the
``k (k - 1) / 2`` pairs is ``4 C / k + 2 (V - 2 C) / (k (k - 1))`` (:meth:`VarianceComponents.noise`);
for ``k = 2`` it is ``V``, for ``k = 4`` ``C + (V - 2 C) / 6``, not ``V / 6``.

Estimators (:func:`fit_variance_components`, moments within nodules):

- ``V``: half the mean squared difference of two disjoint pairs of a 4-reader nodule;
- ``V - C``: the same over two pairs sharing a reader (3- and 4-reader nodules);
- ``B_k``: the variance of the per-nodule mean ``t`` within reader-count group ``k``, less that
  group's panel noise. Two-reader nodules give no within-nodule information (one pair each), and
  they vary far more than the others (they are the nodules the other readers passed over): either
  their nodules differ more (``two_readers="between"``: same ``V``) or their one pair is noisier
  (``"noise"``: the 3-4 reader nodules' ``B``, the rest noise). The two bracket the ceiling.

Bounds:

- :func:`split_half`: model-free test-retest of a one-pair measure: on 4-reader nodules the
  Spearman between the Dice of disjoint pairs ({1,2} vs {3,4}, averaged over the 3 ways to split
  4 readers); :func:`implied_ceiling` steps it up to the full panel against an averaged simulator.
- :func:`ceiling`: parametric bootstrap. Each nodule's ``tau`` is drawn from its posterior given
  its own pairs (so the draws keep the nodules' spread, ``B``, and their order), then two
  independent real-sized panels (``retest``: Spearman between them) and ``reps`` simulated
  panels of the same size averaged per nodule, exactly the estimator of ``spearman_per_nodule``
  (``sim``: Spearman of one real panel with that average). Its ``sim_q05`` is what a perfect
  simulator falls below one time in twenty at this number of nodules.
- :func:`ceiling_interval`: the same refitted on nodules resampled with replacement: a 95 %
  interval of the expected ceiling.
- :func:`ks_null_iid` and :func:`ks_null`: the KS a perfect simulator shows in a band of ``n``
  nodules. The first is distribution-free (``n`` independent values against ``n * reps`` from
  the same continuous law); the second draws, per nodule, one real panel and ``reps`` simulated
  ones from the same ``tau`` (the real sample is one value per nodule of a mixture the simulated
  sample covers, so its KS is smaller than the iid one when nodules differ).
- :func:`ks_subsample_null`: the KS a fitted simulator shows on random ``n``-nodule samples of
  a larger set of nodules, from its own simulated panels there: for a simulator that does not
  know each nodule's true agreement (only what its properties say of it, see
  :mod:`~hiseg_sim.annotators.behaviour.property_bound`), the null of a small band is this one,
  not :func:`ks_null`'s.
- :func:`bootstrap_spearman`: percentile interval over nodules of a measured Spearman.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from typing import Any

import numpy as np
from scipy import special, stats

__all__ = [
    "EPS",
    "VarianceComponents",
    "pair_splits",
    "split_half",
    "fit_variance_components",
    "implied_ceiling",
    "posterior_tau",
    "simulate_panels",
    "ceiling",
    "ceiling_interval",
    "bootstrap_spearman",
    "ks_null_iid",
    "ks_null",
    "ks_subsample_null",
    "pearson_to_spearman",
    "spearman_to_pearson",
]

#: Pair Dice are clipped to ``[EPS, 1 - EPS]`` before the logit (a Dice of 0 has no logit).
EPS = 0.01


def _pairs_of(k: int) -> list[tuple[int, int]]:
    return list(combinations(range(int(k)), 2))


def pair_splits(k: int = 4) -> list[tuple[int, int]]:
    """Indices (``itertools.combinations`` order, as :func:`agreement_stats` stores ``pairs``) of
    every two pairs with no reader in common; for 4 readers ``[(0, 5), (1, 4), (2, 3)]``."""
    p = _pairs_of(k)
    return [(i, j) for i, j in combinations(range(len(p)), 2) if not set(p[i]) & set(p[j])]


def _shared(k: int) -> list[tuple[int, int]]:
    p = _pairs_of(k)
    return [(i, j) for i, j in combinations(range(len(p)), 2) if set(p[i]) & set(p[j])]


def pearson_to_spearman(r):
    """Spearman's rho of a bivariate normal with Pearson ``r``: ``6 / pi * arcsin(r / 2)``."""
    return 6.0 / np.pi * np.arcsin(np.asarray(r) / 2.0)


def spearman_to_pearson(rs):
    """The inverse of :func:`pearson_to_spearman`: ``2 sin(pi rs / 6)``."""
    return 2.0 * np.sin(np.pi * np.asarray(rs) / 6.0)


def _to_scale(d, scale: str) -> np.ndarray:
    d = np.asarray(d, float)
    if scale == "raw":
        return d
    if scale == "logit":
        return special.logit(np.clip(d, EPS, 1.0 - EPS))
    raise ValueError(f"scale must be 'raw' or 'logit'; got {scale!r}")


def _from_scale(t, scale: str) -> np.ndarray:
    return np.clip(t, 0.0, 1.0) if scale == "raw" else special.expit(t)


def split_half(pairs4) -> dict[str, float | list[float]]:
    """Test-retest of the one-pair Dice on 4-reader nodules (``pairs4``: ``(n, 6)``, one row per
    nodule in combinations order): Spearman and Pearson between the Dice of the two disjoint pairs,
    for each of the 3 ways to split 4 readers, and their means. Needs no model: two disjoint pairs
    are two independent measurements of the same nodule."""
    x = np.asarray(pairs4, float)
    if x.ndim != 2 or x.shape[1] != 6 or len(x) < 3:
        raise ValueError("split_half needs an (n >= 3, 6) array of 4-reader pair Dice")
    sp = [float(stats.spearmanr(x[:, i], x[:, j]).statistic) for i, j in pair_splits(4)]
    pe = [float(np.corrcoef(x[:, i], x[:, j])[0, 1]) for i, j in pair_splits(4)]
    return {"spearman": sp, "spearman_mean": float(np.mean(sp)), "pearson": pe, "pearson_mean": float(np.mean(pe))}


@dataclass(frozen=True)
class VarianceComponents:
    """The model of the module docstring on ``scale``: ``between[k]`` (``B`` of the nodules with
    ``k`` readers), ``pair`` (``V``), ``shared`` (``C``), each group's mean per-nodule ``t``
    (``means[k]``) and, where a group's one-pair noise is not ``V``, ``pair_by_k[k]`` (its
    reader-shared part in the same proportion ``C / V``)."""

    scale: str
    between: dict[int, float]
    pair: float
    shared: float
    means: dict[int, float] = field(default_factory=dict)
    pair_by_k: dict[int, float] = field(default_factory=dict)

    def pair_noise(self, k: int) -> tuple[float, float]:
        """``(V_k, C_k)`` of a ``k``-reader nodule."""
        v = float(self.pair_by_k.get(int(k), self.pair))
        return v, self.share * v

    def noise(self, k) -> np.ndarray:
        """Variance of the mean of a ``k``-reader panel's pair values around ``tau``."""
        k_arr = np.atleast_1d(np.asarray(k, int))
        out = np.empty(k_arr.shape)
        for i, kk in enumerate(k_arr):
            v, c = self.pair_noise(kk)
            out[i] = 4.0 * c / kk + 2.0 * (v - 2.0 * c) / (kk * (kk - 1.0))
        return out.reshape(np.shape(k))

    def between_of(self, k) -> np.ndarray:
        """``B`` of each entry of ``k`` (a group not fitted gets the pooled ``B`` of the others)."""
        pooled = float(np.mean(list(self.between.values())))
        return np.array([self.between.get(int(kk), pooled) for kk in np.atleast_1d(k)], float).reshape(np.shape(k))

    @property
    def share(self) -> float:
        """``C / V``: the correlation of two pairs' noise when they share a reader."""
        return self.shared / self.pair if self.pair > 0 else 0.0


def _as_rows(pairs: Sequence[Sequence[float]]) -> tuple[list[np.ndarray], np.ndarray]:
    rows = [np.asarray(p, float) for p in pairs]
    ks = np.array([int(round((1 + np.sqrt(1 + 8 * len(r))) / 2)) for r in rows])
    for r, k in zip(rows, ks):
        if len(r) != k * (k - 1) // 2 or k < 2:
            raise ValueError(f"{len(r)} pair values are not the pairs of 2 or more readers")
    return rows, ks


def fit_variance_components(
    pairs: Sequence[Sequence[float]],
    scale: str = "logit",
    noise: VarianceComponents | None = None,
    two_readers: str = "between",
) -> VarianceComponents:
    """The moment estimates of the module docstring from each nodule's pair Dice (``pairs[i]``:
    its :func:`agreement_stats` ``pairs``, combinations order; 2-4 readers, at least three nodules
    with 4). Each nodule weighs the same in ``V`` and ``C``; ``C`` is kept in ``[0, V / 2]``.

    ``B`` is estimated per reader-count group (its variance of the per-nodule mean ``t`` less its
    panel noise), because the groups differ: nodules only two of four readers marked vary far more.
    How much of that is the nodules and how much their one pair's noise the data cannot say
    (one pair per nodule), so ``two_readers`` chooses: ``"between"`` (the same pair noise as the
    other nodules; all the excess is between nodules) or ``"noise"`` (their ``B`` is the pooled
    ``B`` of the 3-4 reader nodules; the excess is pair noise: the lower ceiling).
    ``noise``: take ``V`` and ``C`` from that fit (another, larger split) and estimate only the
    ``B`` and the group means here."""
    if two_readers not in ("between", "noise"):
        raise ValueError(f"two_readers must be 'between' or 'noise'; got {two_readers!r}")
    rows, ks = _as_rows(pairs)
    t = [_to_scale(r, scale) for r in rows]
    if noise is not None:
        if noise.scale != scale:
            raise ValueError(f"noise was fitted on the {noise.scale} scale, not {scale}")
        v, c = noise.pair, noise.shared
    else:
        v_disj = [np.mean([(x[i] - x[j]) ** 2 / 2 for i, j in pair_splits(4)]) for x, k in zip(t, ks) if k == 4]
        if len(v_disj) < 3:
            raise ValueError("the pair noise needs at least three nodules with 4 readers")
        v_shr = [np.mean([(x[i] - x[j]) ** 2 / 2 for i, j in _shared(k)]) for x, k in zip(t, ks) if k >= 3]
        v = float(np.mean(v_disj))
        c = float(np.clip(v - np.mean(v_shr), 0.0, v / 2.0))
    base = VarianceComponents(scale, {}, v, c)
    floor = 1e-6 * max(v, 1e-12)
    tbar = np.array([x.mean() for x in t])
    means, total, between = {}, {}, {}
    for k in np.unique(ks):
        g = tbar[ks == k]
        means[int(k)] = float(g.mean())
        if len(g) > 1:
            total[int(k)] = (float(g.var(ddof=1)), len(g))
            between[int(k)] = max(total[int(k)][0] - float(base.noise(k)), floor)
    pair_by_k = {}
    if two_readers == "noise" and 2 in total:
        others = [(between[k], total[k][1] - 1) for k in between if k > 2]
        if others:
            pooled = float(sum(b * w for b, w in others) / max(sum(w for _, w in others), 1))
            between[2] = pooled
            pair_by_k[2] = max(total[2][0] - pooled, v)
    return VarianceComponents(scale, between, v, c, means, pair_by_k)


def implied_ceiling(split_spearman: float, share: float, ks, reps: int = 100) -> dict[str, float]:
    """The full-panel ceiling a one-pair split-half Spearman implies (bivariate normal on the
    model's scale, one ``B`` and ``V`` for all nodules): one-pair reliability
    ``rho1 = B / (B + V)`` from the split-half, a ``k``-panel's noise ``V f_k`` with
    ``f_k = 4 c / k + 2 (1 - 2 c) / (k (k - 1))`` (``c = share``), averaged over the nodules'
    ``ks``; the simulator's side averages ``reps`` panels. Returns the Spearman of one real panel
    with the averaged simulator (``sim``) and with a second real panel (``retest``)."""
    rho1 = float(np.clip(spearman_to_pearson(split_spearman), 1e-9, 1.0))
    ks = np.asarray(ks, float)
    f = float(np.mean(4.0 * share / ks + 2.0 * (1.0 - 2.0 * share) / (ks * (ks - 1.0))))
    n_over_b = f * (1.0 - rho1) / rho1
    r_sim = 1.0 / np.sqrt((1.0 + n_over_b) * (1.0 + n_over_b / reps))
    r_retest = 1.0 / (1.0 + n_over_b)
    return {
        "rho1_pearson": rho1,
        "sim": float(pearson_to_spearman(r_sim)),
        "retest": float(pearson_to_spearman(r_retest)),
    }


def posterior_tau(pairs: Sequence[Sequence[float]], vc: VarianceComponents, rng: np.random.Generator) -> np.ndarray:
    """One draw per nodule of ``tau`` given its pairs (normal prior ``N(means[k], B)``, the panel
    mean's noise ``vc.noise(k)``): the draws have the nodules' variance ``B`` and keep their order."""
    rows, ks = _as_rows(pairs)
    tbar = np.array([_to_scale(r, vc.scale).mean() for r in rows])
    m = np.array([vc.means.get(int(k), float(np.mean(list(vc.means.values())))) for k in ks])
    b = vc.between_of(ks)
    lam = b / (b + vc.noise(ks))
    return m + lam * (tbar - m) + np.sqrt((1.0 - lam) * b) * rng.standard_normal(len(ks))


def simulate_panels(tau, ks, vc: VarianceComponents, reps: int, rng: np.random.Generator) -> np.ndarray:
    """``(n, reps)`` panel mean pairwise Dice (raw scale, the report's figure): per nodule ``reps``
    independent panels of its ``ks[i]`` readers drawn from the model around ``tau[i]``."""
    tau, ks = np.asarray(tau, float), np.asarray(ks, int)
    out = np.empty((len(tau), int(reps)))
    for k in np.unique(ks):
        idx = np.flatnonzero(ks == k)
        v, c = vc.pair_noise(k)
        sd_u, sd_w = np.sqrt(max(c, 0.0)), np.sqrt(max(v - 2.0 * c, 0.0))
        a, b = np.array(_pairs_of(k)).T
        u = sd_u * rng.standard_normal((len(idx), int(reps), int(k)))
        w = sd_w * rng.standard_normal((len(idx), int(reps), len(a)))
        t = tau[idx, None, None] + u[..., a] + u[..., b] + w
        out[idx] = _from_scale(t, vc.scale).mean(axis=2)
    return out


def _spearman(x, y) -> float:
    return float(stats.spearmanr(x, y).statistic)


def ceiling(
    pairs: Sequence[Sequence[float]],
    reps: int = 100,
    n_rep: int = 200,
    scale: str = "logit",
    seed: int = 0,
    vc: VarianceComponents | None = None,
    two_readers: str = "between",
) -> dict[str, Any]:
    """The parametric-bootstrap ceiling of ``spearman_per_nodule`` on these nodules (module
    docstring): ``sim`` is the mean over ``n_rep`` replicates of the Spearman between one real-sized
    panel and the mean of ``reps`` simulated panels (a perfect simulator), with its ``sim_q05``,
    ``sim_q025`` and ``sim_q975``; ``retest`` the mean Spearman between two real-sized panels;
    ``split_half`` the model's mean split-half Spearman on its 4-reader nodules (to hold against
    :func:`split_half` on the data). ``vc``: the model (default fitted here, with ``two_readers``)."""
    rows, ks = _as_rows(pairs)
    vc = fit_variance_components(rows, scale, two_readers=two_readers) if vc is None else vc
    one_pair = replace(vc, pair_by_k={})  # a pair of a 4-reader nodule has that group's noise
    rng = np.random.default_rng(seed)
    four = np.flatnonzero(ks == 4)
    sim, retest, half = [], [], []
    for _ in range(int(n_rep)):
        tau = posterior_tau(rows, vc, rng)
        real = simulate_panels(tau, ks, vc, 2, rng)
        avg = simulate_panels(tau, ks, vc, reps, rng).mean(axis=1)
        sim.append(_spearman(real[:, 0], avg))
        retest.append(_spearman(real[:, 0], real[:, 1]))
        if len(four) > 2:  # two disjoint pairs of a 4-reader nodule are two 2-reader panels
            p = simulate_panels(tau[four], np.full(len(four), 2), one_pair, 2, rng)
            half.append(_spearman(p[:, 0], p[:, 1]))
    sim_a = np.array(sim)
    return {
        "sim": float(sim_a.mean()),
        "sim_q025": float(np.quantile(sim_a, 0.025)),
        "sim_q05": float(np.quantile(sim_a, 0.05)),
        "sim_q975": float(np.quantile(sim_a, 0.975)),
        "retest": float(np.mean(retest)),
        "split_half": float(np.mean(half)) if half else float("nan"),
        "between": vc.between,
        "pair": vc.pair,
        "shared": vc.shared,
        "n": len(rows),
    }


def ceiling_interval(
    pairs: Sequence[Sequence[float]],
    reps: int = 100,
    n_boot: int = 200,
    n_rep: int = 20,
    scale: str = "logit",
    seed: int = 0,
    two_readers: str = "between",
) -> dict[str, list[float]]:
    """95 % percentile intervals over nodules resampled with replacement (each resample refitted)
    of :func:`ceiling`'s ``sim`` and ``retest`` and of the split-half Spearman of :func:`split_half`
    on the resample's 4-reader nodules."""
    rows, ks = _as_rows(pairs)
    rng = np.random.default_rng(seed)
    sims, rets, halves = [], [], []
    for b in range(int(n_boot)):
        idx = rng.integers(0, len(rows), len(rows))
        sub = [rows[i] for i in idx]
        c = ceiling(sub, reps=reps, n_rep=n_rep, scale=scale, seed=seed + 1 + b, two_readers=two_readers)
        sims.append(c["sim"])
        rets.append(c["retest"])
        four = [rows[i] for i in idx if ks[i] == 4]
        if len(four) > 2:
            halves.append(split_half(np.array(four))["spearman_mean"])

    def ci(v):
        return [float(np.quantile(v, 0.025)), float(np.quantile(v, 0.975))]

    return {"sim": ci(sims), "retest": ci(rets), "split_half": ci(halves) if halves else []}


def bootstrap_spearman(x, y, n_boot: int = 4000, seed: int = 0) -> dict[str, float | list[float]]:
    """Spearman of ``x`` with ``y`` and its 95 % percentile interval over items resampled with
    replacement (the nodules: how far the figure moves with another draw of nodules)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), (int(n_boot), len(x)))
    rx = stats.rankdata(x[idx], axis=1)
    ry = stats.rankdata(y[idx], axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    boots = (rx * ry).sum(1) / np.sqrt((rx**2).sum(1) * (ry**2).sum(1))
    return {"spearman": _spearman(x, y), "ci95": [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]}


def _ks_summary(v: np.ndarray, target: float) -> dict[str, float]:
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "q95": float(np.quantile(v, 0.95)),
        "p_at_most_target": float((v <= target).mean()),
    }


def ks_null_iid(n: int, m: int, n_rep: int = 2000, seed: int = 0, target: float = 0.12) -> dict[str, float]:
    """The KS of ``n`` values against ``m`` from the same continuous law (any: drawn uniform):
    its mean, median, 95th percentile and the share of draws at most ``target``."""
    rng = np.random.default_rng(seed)
    v = np.array([stats.ks_2samp(rng.random(int(n)), rng.random(int(m))).statistic for _ in range(int(n_rep))])
    return _ks_summary(v, target)


def ks_null(
    pairs: Sequence[Sequence[float]],
    members,
    reps: int = 100,
    n_rep: int = 500,
    scale: str = "logit",
    seed: int = 0,
    target: float = 0.12,
    vc: VarianceComponents | None = None,
    two_readers: str = "between",
) -> dict[str, float]:
    """The KS of a band (``members``: a boolean mask or indices into ``pairs``) when the simulator
    is perfect: per replicate, each nodule's ``tau`` from its posterior (model fitted on all of
    ``pairs`` unless ``vc`` is given), one real-sized panel as the real value and ``reps`` panels
    as the simulated ones; :func:`ks_null_iid`'s summary of the ``n_rep`` KS values."""
    rows, ks = _as_rows(pairs)
    vc = fit_variance_components(rows, scale, two_readers=two_readers) if vc is None else vc
    sel = np.zeros(len(rows), bool)
    sel[np.asarray(members)] = True
    rng = np.random.default_rng(seed)
    v = np.empty(int(n_rep))
    for r in range(int(n_rep)):
        tau = posterior_tau(rows, vc, rng)[sel]
        real = simulate_panels(tau, ks[sel], vc, 1, rng)[:, 0]
        sim = simulate_panels(tau, ks[sel], vc, reps, rng).ravel()
        v[r] = stats.ks_2samp(real, sim).statistic
    return _ks_summary(v, target)


def ks_subsample_null(
    real, sim_panels, n: int, n_rep: int = 4000, seed: int = 0, target: float = 0.12
) -> dict[str, float]:
    """The KS of ``n`` nodules drawn without replacement from a band (``real[i]``: nodule ``i``'s
    real mean pairwise Dice; ``sim_panels[i]``: its simulated panels' Dice, the same number per
    nodule) against the simulated panels of the same ``n`` nodules, as the spread report pairs
    them; :func:`ks_null_iid`'s summary of the ``n_rep`` values. Drawing without replacement from
    a finite band makes the spread a little narrower than fresh samples would (by about
    ``sqrt(1 - n / len(real))``), so its 95th percentile errs low."""
    real = np.asarray(real, float)
    sims = np.asarray(sim_panels, float)
    if sims.ndim != 2 or sims.shape[0] != len(real):
        raise ValueError(f"sim_panels must be (nodules, panels) with {len(real)} rows; got shape {sims.shape}")
    if not 1 <= int(n) < len(real):
        raise ValueError(f"n must be between 1 and {len(real) - 1} (the band has {len(real)} nodules); got {n}")
    rng = np.random.default_rng(seed)
    v = np.empty(int(n_rep))
    for r in range(int(n_rep)):
        i = rng.choice(len(real), int(n), replace=False)
        v[r] = stats.ks_2samp(real[i], sims[i].ravel()).statistic
    return _ks_summary(v, target)
