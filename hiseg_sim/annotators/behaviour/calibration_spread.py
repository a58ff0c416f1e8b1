"""The whole spread of simulated expert panels against the real LIDC readers, not only its mean.

:mod:`~hiseg_sim.annotators.behaviour.calibration` fits and reports the mean pairwise Dice per
size band. This module reports, on one split (the holdout: report only), everything a panel of
readers shows about its disagreement:

- ``pairwise_dice_mean``: mean over nodules of the per-nodule mean pairwise Dice;
- ``per_nodule_dice_sd``: SD (ddof 1) of the per-nodule mean pairwise Dice (real: one value per
  nodule; simulated: one per nodule and panel, the same population a new real panel would come from);
- ``frac_pairs_below_0_5``: share of reader pairs (pooled over nodules) with Dice < 0.5;
- ``volume_cv_median`` and ``frac_volume_cv_above_0_4``: per panel, SD (ddof 1) over mean of the
  readers' volumes; its median over nodules and the share above 0.4;
- ``spearman_per_nodule``: rank correlation over nodules of the real mean pairwise Dice with
  the simulated one (averaged over panels): is the simulation contentious where the readers are;
- ``ged``: the generalised energy distance with ``d = 1 - IoU`` between the real panel and a
  simulated one, ``2 E d(R, S) - E d(R, R') - E d(S, S')`` (distinct pairs within each panel),
  averaged over panels and nodules. Its null comes from resampled panels: per nodule, the real
  panel and one simulated panel are pooled and split at random into two panels of ``k`` (what
  the statistic looks like when real and simulated readers are exchangeable); ``p`` two-sided;
- ``bands``: mean, KS and ``n`` per LIDC size band (:attr:`CalibrationNodule.lidc_band`: the
  mean of the readers' own diameters, pylidc's convention), and ``bands_consensus_diameter`` the
  same by the consensus diameter (the earlier banding).

Every figure is ``{"real": x, "sim": y}`` except ``spearman_per_nodule`` (a number), ``ged`` and
``bands``. :func:`evaluate_spread` is what ``hiseg-sim calibrate --split holdout --json`` prints;
it also carries :func:`~hiseg_sim.annotators.behaviour.calibration.evaluate`'s keys
(``real_pairwise_dice``, ``sim_pairwise_dice``, ``ks``, ``by_size``), by the LIDC bands.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from hiseg_sim.annotators.behaviour.calibration import (
    CalibrationNodule,
    _rounded,
    band_table,
    load_calibration_set,
    simulate_set,
    subsample,
)
from hiseg_sim.annotators.behaviour.perception import PerceptionParams

__all__ = ["EnergyDistance", "spread_metrics", "band_table", "evaluate_spread", "SPREAD_KEYS"]

#: The ``{"real", "sim"}`` figures of :func:`spread_metrics`, in order.
SPREAD_KEYS = (
    "pairwise_dice_mean",
    "per_nodule_dice_sd",
    "frac_pairs_below_0_5",
    "volume_cv_median",
    "frac_volume_cv_above_0_4",
)


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - IoU`` between the rows of two ``(n, V)`` float32 0/1 matrices: ``(n_a, n_b)``."""
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    return np.where(union > 0, 1.0 - inter / np.maximum(union, 1.0), 0.0)


def _ged(d: np.ndarray, k: int, idx_a: np.ndarray, idx_b: np.ndarray) -> float:
    """Energy distance between the panels ``idx_a`` and ``idx_b`` (``k`` each) of the distance
    matrix ``d``: twice the mean cross distance minus the mean distinct-pair distance in each."""
    off = ~np.eye(k, dtype=bool)
    cross = d[np.ix_(idx_a, idx_b)].mean()
    return float(2.0 * cross - d[np.ix_(idx_a, idx_a)][off].mean() - d[np.ix_(idx_b, idx_b)][off].mean())


class EnergyDistance:
    """The ``on_panel`` hook of :func:`~hiseg_sim.annotators.behaviour.calibration.simulate_set`
    that keeps, per nodule and panel, the ``2k x 2k`` distance matrix of the real panel (rows
    ``0..k-1``) and the simulated one (rows ``k..2k-1``); nothing else of the masks is kept."""

    def __init__(self, nodules: Sequence[CalibrationNodule]):
        self.nodules = list(nodules)
        self.mats: list[list[np.ndarray]] = [[] for _ in self.nodules]
        self._real: dict[int, tuple[tuple, np.ndarray]] = {}

    def _real_rows(self, i: int, geom) -> np.ndarray:
        key = geom.box
        if i not in self._real or self._real[i][0] != key:
            n = self.nodules[i]
            masks = n.real_masks()
            if key != n.geometry.box:  # a widened box: place the readers' masks on it
                masks = [geom.to_full(np.zeros(geom.phi.shape, bool)) | n.geometry.to_full(m) for m in masks]
                masks = [m[geom.box_slices] for m in masks]
            self._real[i] = (key, np.stack([m.ravel() for m in masks]).astype(np.float32))
        return self._real[i][1]

    def __call__(self, i: int, r: int, masks, geom) -> None:
        if r < 0:  # the panels so far are void
            self.mats[i] = []
            self._real.pop(i, None)
            return
        real = self._real_rows(i, geom)
        both = np.vstack([real, np.stack([m.ravel() for m in masks]).astype(np.float32)])
        self.mats[i].append(_distances(both, both).astype(np.float32))

    def result(self, n_perm: int = 200, seed: int = 0) -> dict[str, Any]:
        """``{"sim": observed mean energy distance, "null_mean", "null_q025", "null_q975", "p", "n_perm"}``;
        ``p`` is two-sided: the share of null means at least as far from their centre as the
        observed one. A negative distance means the simulated panel sits closer to the real
        readers than they sit to each other (it is drawn around their own consensus)."""
        rng = np.random.default_rng(seed)
        obs, null = [], np.zeros(int(n_perm))
        used = [i for i, m in enumerate(self.mats) if m]
        for i in used:
            k = self.nodules[i].n_readers
            a, b = np.arange(k), np.arange(k, 2 * k)
            obs.append(np.mean([_ged(d, k, a, b) for d in self.mats[i]]))
            for p in range(int(n_perm)):
                d = self.mats[i][p % len(self.mats[i])]
                perm = rng.permutation(2 * k)
                null[p] += _ged(d, k, perm[:k], perm[k:])
        if not used:
            return {
                "sim": None,
                "null_mean": None,
                "null_q025": None,
                "null_q975": None,
                "p": None,
                "n_perm": int(n_perm),
            }
        null /= len(used)
        observed, centre = float(np.mean(obs)), float(null.mean())
        return {
            "sim": observed,
            "null_mean": centre,
            "null_q025": float(np.quantile(null, 0.025)),
            "null_q975": float(np.quantile(null, 0.975)),
            "p": float((np.abs(null - centre) >= abs(observed - centre)).mean()),
            "n_perm": int(n_perm),
        }


def _ks(a, b) -> float | None:
    return float(stats.ks_2samp(a, b).statistic) if len(a) and len(b) else None


def spread_metrics(nodules: Sequence[CalibrationNodule], sims: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """The ``{"real", "sim"}`` figures of :data:`SPREAD_KEYS` and ``spearman_per_nodule``
    (see the module docstring); ``sims[i][r]`` are :func:`agreement_stats` of panel ``r`` of nodule ``i``."""
    real_d = np.array([n.real["dice"] for n in nodules])
    sim_d = np.array([p["dice"] for row in sims for p in row])
    real_pairs = np.concatenate([n.real["pairs"] for n in nodules])
    sim_pairs = np.concatenate([p["pairs"] for row in sims for p in row])
    real_cv = np.array([n.real["volume_cv"] for n in nodules])
    sim_cv = np.array([p["volume_cv"] for row in sims for p in row])
    sim_mean = np.array([np.mean([p["dice"] for p in row]) for row in sims])

    def rs(f) -> dict[str, float]:
        return {"real": float(f(real_d, real_pairs, real_cv)), "sim": float(f(sim_d, sim_pairs, sim_cv))}

    return {
        "n_nodules": len(nodules),
        "pairwise_dice_mean": rs(lambda d, p, c: d.mean()),
        "per_nodule_dice_sd": rs(lambda d, p, c: d.std(ddof=1)),
        "frac_pairs_below_0_5": rs(lambda d, p, c: (p < 0.5).mean()),
        "volume_cv_median": rs(lambda d, p, c: np.median(c)),
        "frac_volume_cv_above_0_4": rs(lambda d, p, c: (c > 0.4).mean()),
        "spearman_per_nodule": float(stats.spearmanr(real_d, sim_mean).statistic) if len(nodules) > 2 else None,
    }


def evaluate_spread(
    split: str = "holdout",
    params: PerceptionParams | None = None,
    *,
    reps: int = 100,
    seed: int = 0,
    min_readers: int = 2,
    n_nodules: int | None = None,
    n_perm: int = 200,
    progress: bool = False,
    db=None,
    limit: int | None = None,
    difficulty=None,
) -> dict[str, Any]:
    """Simulated expert panels against the real readers of ``split``: the JSON object of
    ``hiseg-sim calibrate --split holdout --json`` (module docstring), floats rounded to 4.

    ``params``: default the saved expert fit; ``difficulty``: the nodule-feature difficulty model
    (:class:`~hiseg_sim.annotators.behaviour.difficulty.DifficultyModel`), default the saved one
    when it exists (``False``: none, the case difficulty is a random draw only). ``reps``
    panels per nodule, the consensus as the one reference, the same random numbers as
    :func:`~hiseg_sim.annotators.behaviour.calibration.evaluate` (``seed + 7``).
    """
    if params is None:
        from hiseg_sim.annotators.behaviour.perception import expert_params

        params = expert_params()
    nodules = load_calibration_set(split, min_readers, "consensus", seed, db=db, progress=progress, limit=limit)
    if n_nodules is not None:
        nodules = subsample(nodules, n_total=int(n_nodules), seed=seed)
    offsets = _difficulty_offsets(nodules, difficulty)
    ged = EnergyDistance(nodules)
    sims = simulate_set(nodules, params, reps=reps, seed=seed + 7, on_panel=ged, difficulty_log=offsets)
    out: dict[str, Any] = {"split": split, **spread_metrics(nodules, sims)}
    out["ged"] = ged.result(n_perm=n_perm, seed=seed)
    out["bands"] = band_table(nodules, sims, "lidc_band")
    out["bands_consensus_diameter"] = band_table(nodules, sims, "band")
    real = np.array([n.real["dice"] for n in nodules])
    sim = np.concatenate([[p["dice"] for p in row] for row in sims])
    out.update(
        real_pairwise_dice=float(real.mean()),
        sim_pairwise_dice=float(sim.mean()),
        ks=_ks(real, sim),
        by_size=band_table(nodules, sims, "lidc_band", with_ci=True, seed=seed),
    )
    out["difficulty_model"] = None if offsets is None else "nodule features (agents/calibration/difficulty.json)"
    return _rounded(out)


def _difficulty_offsets(nodules: Sequence[CalibrationNodule], difficulty) -> list[float] | None:
    """Per nodule, the log difficulty its features predict, or ``None`` without a model."""
    if difficulty is False:
        return None
    from hiseg_sim.annotators.behaviour import difficulty as D

    model = D.saved_model() if difficulty is None else difficulty
    if model is None:
        return None
    return [model.log_difficulty(D.features_of(n)) for n in nodules]
