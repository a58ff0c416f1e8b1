"""How well a nodule's recorded properties rank its readers' agreement: the information bound.

:mod:`~hiseg_sim.annotators.behaviour.spread_bounds` bounds ``spearman_per_nodule`` for a
*perfect* simulator, one that knows each nodule's true agreement. A simulator built on the LIDC
data knows less: the scoring reference (the consensus outline and its grid), the readers' ratings,
and how many readers marked the nodule. The CT images are not available here, and the readers'
own outlines are the answer being scored. This module measures how far those recorded properties
can rank the nodules' agreement by fitting a predictor to it and scoring its ranks.

Whatever a simulator does with these properties, its per-nodule means are a function of them, so
a regression that predicts the readers' agreement from them as well as it can (out of sample)
shows roughly where such simulators stop. It is an estimate, not a proof: a cleverer predictor
could do better. Two model families (ridge here, gradient boosting in the docs' cross-check)
agree within 0.01 out of fold on the calibration split (0.49-0.50).

Properties (:func:`property_matrix`), three groups:

- ``"ratings"``: :data:`~hiseg_sim.annotators.behaviour.difficulty.FEATURES` (LIDC diameter,
  the readers' median ratings, reader count);
- ``"rating_spread"``: the SD across the nodule's readers of each of the nine LIDC ratings (the
  readers disagreed on the margin, say);
- ``"shape"``: the reference outline's geometry (:func:`shape_features`).

Fit (:func:`property_bound`): ridge regression of the logit of each nodule's mean pairwise Dice on
the standardised properties, each nodule weighted by ``1 / (B_k + noise_k)`` from
:func:`~hiseg_sim.annotators.behaviour.spread_bounds.fit_variance_components` (a 2-reader
nodule's one pair is a far noisier figure than a 4-reader panel). Scored by the Spearman of its
out-of-fold predictions with the real Dice on the calibration split (folds by patient, so one
patient's nodules never sit on both sides), with a bootstrap interval over nodules, and, when
given, by the Spearman of the full-calibration fit on the holdout. Out of fold, a property with
no signal leans negative (each fold's intercept is the other folds' mean), so a weak bound errs
low there; the holdout figure has no such lean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage, stats

from hiseg_sim.annotators.behaviour import spread_bounds as SB
from hiseg_sim.annotators.behaviour.difficulty import FEATURES, feature_vector, features_of

__all__ = [
    "GROUPS",
    "SHAPE_FEATURES",
    "ALPHA",
    "shape_features",
    "rating_spread",
    "property_matrix",
    "ridge_predictor",
    "patient_folds",
    "property_bound",
    "linearised_difficulty",
]

GROUPS = ("ratings", "rating_spread", "shape")
SHAPE_FEATURES = (
    "log_volume",  # log of the reference's volume, mm^3
    "n_slices",  # slices the reference spans
    "slice_mm",  # slice spacing
    "pixel_mm",  # in-plane pixel size
    "edge_share",  # share of the reference's voxels on its in-plane outline
    "z_extent_over_diameter",  # the reference's extent along z over the LIDC diameter
    "key_solidity",  # the largest slice's area over its convex hull's
    "box_fill",  # the reference's voxels over its bounding box's
    "log_key_area",  # log of the largest slice's area, mm^2
    "diameter_over_equivalent",  # LIDC diameter over the volume-equivalent sphere's diameter
)
#: ridge penalty on the standardised coefficients; the calibration split's out-of-fold Spearman
#: moves by under 0.01 between 5 and 150 (measured), so the value is not tuned
ALPHA = 50.0


def shape_features(geometry: Any, lidc_diameter_mm: float) -> dict[str, float]:
    """:data:`SHAPE_FEATURES` of a reference, from its
    :class:`~hiseg_sim.annotators.behaviour.perception.ReferenceGeometry` (``phi > 0`` inside)."""
    from skimage.morphology import convex_hull_image

    ref = np.asarray(geometry.phi) > 0
    if not ref.any():
        raise ValueError("the reference geometry holds no voxel inside")
    dz, py, px = (float(v) for v in geometry.spacing)
    vox = int(ref.sum())
    vol = vox * dz * py * px
    areas = ref.sum(axis=(1, 2)) * py * px
    key = ref[int(np.argmax(areas))]
    outline = ref & ~ndimage.binary_erosion(ref, np.ones((1, 3, 3), bool))
    extent = [np.flatnonzero(ref.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1))]
    box = int(np.prod([e[-1] - e[0] + 1 for e in extent]))
    n_slices = int(ref.any(axis=(1, 2)).sum())
    diam = float(lidc_diameter_mm) if np.isfinite(lidc_diameter_mm) else float(geometry.diameter_mm)
    equivalent = (6.0 * vol / np.pi) ** (1.0 / 3.0)
    return {
        "log_volume": float(np.log(vol)),
        "n_slices": float(n_slices),
        "slice_mm": dz,
        "pixel_mm": px,
        "edge_share": float(outline.sum() / vox),
        "z_extent_over_diameter": float(n_slices * dz / max(diam, 1.0)),
        "key_solidity": float(key.sum() / max(int(convex_hull_image(key).sum()), 1)),
        "box_fill": float(vox / max(box, 1)),
        "log_key_area": float(np.log(areas.max())),
        "diameter_over_equivalent": float(diam / max(equivalent, 0.1)),
    }


def rating_spread(annotations: Sequence[Any]) -> np.ndarray:
    """SD (ddof 0) across readers of each of the nine LIDC ratings
    (:data:`~hiseg_sim.data.lidc.RATING_NAMES` order); ``annotations``: the nodule's
    :class:`~hiseg_sim.data.lidc.ReaderAnnotation` s."""
    from hiseg_sim.data.lidc import RATING_NAMES

    if not annotations:
        raise ValueError("a rating spread needs at least one reader's annotation")
    r = np.array([[float(a.ratings[k]) for k in RATING_NAMES] for a in annotations])
    return r.std(axis=0)


def property_matrix(nodules: Sequence[Any], groups: Sequence[str] = GROUPS, db=None) -> tuple[np.ndarray, list[str]]:
    """The properties of :class:`~hiseg_sim.annotators.behaviour.calibration.CalibrationNodule` s,
    one row each, and the column names. ``"rating_spread"`` reads each nodule's readers from the
    LIDC database (``db``, default the shipped one)."""
    from hiseg_sim.data.lidc import RATING_NAMES

    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown property groups {sorted(unknown)}; choose from {list(GROUPS)}")
    if "rating_spread" in groups and db is None:
        from hiseg_sim.data.lidc import LidcDatabase

        db = LidcDatabase()
    cols: list[np.ndarray] = []
    names: list[str] = []
    if "ratings" in groups:
        cols.append(np.stack([feature_vector(features_of(n)) for n in nodules]))
        names += list(FEATURES)
    if "rating_spread" in groups:
        cols.append(np.stack([rating_spread(db.get_nodule(n.nodule_id).annotations) for n in nodules]))
        names += [f"sd_{k}" for k in RATING_NAMES]
    if "shape" in groups:
        rows = [shape_features(n.geometry, n.lidc_diameter_mm) for n in nodules]
        cols.append(np.array([[r[k] for k in SHAPE_FEATURES] for r in rows]))
        names += list(SHAPE_FEATURES)
    return np.hstack(cols), names


def ridge_predictor(X: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float = ALPHA):
    """Weighted ridge on standardised columns (a column with no spread is dropped); returns
    ``predict(X_new)``."""
    X, y, w = np.asarray(X, float), np.asarray(y, float), np.asarray(w, float)
    mu, sd = X.mean(0), X.std(0)
    keep = sd > 1e-12
    Z = (X[:, keep] - mu[keep]) / sd[keep]
    ym = float(np.average(y, weights=w))
    coef = np.linalg.solve(Z.T @ (w[:, None] * Z) + alpha * np.eye(Z.shape[1]), Z.T @ (w * (y - ym)))

    def predict(X_new: np.ndarray) -> np.ndarray:
        return ym + ((np.asarray(X_new, float)[:, keep] - mu[keep]) / sd[keep]) @ coef

    return predict


def patient_folds(nodule_ids: Sequence[str], folds: int, seed: int = 0) -> np.ndarray:
    """A fold number per nodule, the same for every nodule of one patient (``"<patient>/..."``)."""
    patients = np.array([str(i).split("/")[0] for i in nodule_ids])
    uniq = np.unique(patients)
    if len(uniq) < folds:
        raise ValueError(f"{len(uniq)} patients cannot fill {folds} folds")
    perm = np.random.default_rng(seed).permutation(len(uniq)) % folds
    of = dict(zip(uniq, perm))
    return np.array([of[p] for p in patients])


def _real_dice(nodules: Sequence[Any]) -> np.ndarray:
    return np.array([float(n.real["dice"]) for n in nodules])


def _logit(dice) -> np.ndarray:
    """The logit of Dice values clipped to ``[EPS, 1 - EPS]`` (the spread bounds' scale)."""
    d = np.clip(np.asarray(dice, float), SB.EPS, 1 - SB.EPS)
    return np.log(d / (1 - d))


def property_bound(
    calibration: Sequence[Any],
    holdout: Sequence[Any] | None = None,
    *,
    groups: Sequence[str] = GROUPS,
    calibration_extra: np.ndarray | None = None,
    holdout_extra: np.ndarray | None = None,
    alpha: float = ALPHA,
    folds: int = 5,
    seed: int = 0,
    n_boot: int = 2000,
    db=None,
) -> dict[str, Any]:
    """The module docstring's bound. ``calibration``/``holdout``: calibration nodules of each split
    (:func:`~hiseg_sim.annotators.behaviour.calibration.load_calibration_set`); ``*_extra``:
    further per-nodule columns (a simulator's own per-nodule means, say), both or neither.

    Returns ``cv_spearman`` with ``cv_ci95`` and ``cv_by_readers`` (calibration, out of fold),
    ``holdout_spearman`` with ``holdout_ci95`` and ``holdout_by_readers`` when ``holdout`` is
    given, ``n`` and ``features`` (the column names)."""
    if len(calibration) < 10 * folds:
        raise ValueError(f"{len(calibration)} calibration nodules are too few for {folds} folds")
    if holdout is not None and (calibration_extra is None) != (holdout_extra is None):
        raise ValueError("give calibration_extra and holdout_extra together, or neither")
    X, names = property_matrix(calibration, groups, db=db)
    if calibration_extra is not None:
        extra = np.asarray(calibration_extra, float).reshape(len(calibration), -1)
        X = np.hstack([X, extra])
        names += [f"extra_{j}" for j in range(extra.shape[1])]
    real = _real_dice(calibration)
    y = _logit(real)
    vc = SB.fit_variance_components([n.real["pairs"] for n in calibration], "logit")
    ks = np.array([int(n.n_readers) for n in calibration])
    w = 1.0 / (vc.between_of(ks) + vc.noise(ks))
    fold = patient_folds([n.nodule_id for n in calibration], folds, seed)
    oof = np.empty(len(y))
    for f in range(folds):
        te = fold == f
        oof[te] = ridge_predictor(X[~te], y[~te], w[~te], alpha)(X[te])
    cv = SB.bootstrap_spearman(real, oof, n_boot=n_boot, seed=seed)
    out: dict[str, Any] = {
        "n": {"calibration": len(calibration)},
        "features": names,
        "cv_spearman": cv["spearman"],
        "cv_ci95": cv["ci95"],
        "cv_by_readers": _by_readers(real, oof, ks),
    }
    full = ridge_predictor(X, y, w, alpha)
    if holdout is not None:
        Xh, _ = property_matrix(holdout, groups, db=db)
        if holdout_extra is not None:
            Xh = np.hstack([Xh, np.asarray(holdout_extra, float).reshape(len(holdout), -1)])
        pred = full(Xh)
        real_h = _real_dice(holdout)
        hb = SB.bootstrap_spearman(real_h, pred, n_boot=n_boot, seed=seed)
        out["n"]["holdout"] = len(holdout)
        out["holdout_spearman"] = hb["spearman"]
        out["holdout_ci95"] = hb["ci95"]
        out["holdout_by_readers"] = _by_readers(real_h, pred, np.array([int(n.n_readers) for n in holdout]))
    return out


def _by_readers(real: np.ndarray, pred: np.ndarray, ks: np.ndarray) -> dict[int, float | None]:
    return {
        int(k): (float(stats.spearmanr(real[ks == k], pred[ks == k]).statistic) if (ks == k).sum() > 2 else None)
        for k in np.unique(ks)
    }


def linearised_difficulty(
    calibration: Sequence[Any],
    sim_means: dict[float, np.ndarray],
    *,
    groups: Sequence[str] = ("ratings", "shape"),
    alpha: float = ALPHA,
    folds: int = 5,
    seed: int = 0,
    db=None,
) -> dict[str, Any]:
    """A per-nodule log difficulty ``L`` from the properties, fitted on ``calibration``.

    ``sim_means``: the simulator's per-nodule mean Dice at ``L = -h, 0, +h`` (keys ``-h``, ``0.0``
    and ``h``). Each nodule's implied ``L``, linearised, is its real logit Dice less the
    simulator's, over the simulator's slope in ``L``. That is regressed (ridge, weighted by
    ``slope^2 / (B_k + noise_k)``) on the properties and centred so the weighted mean ``L`` is 0.

    Returns ``predict(nodules) -> L`` (``predict``), the calibration nodules' ``L`` (``L``), the
    slope's median (``slope_median``), and ``cv_spearman``: the out-of-fold Spearman of the real
    Dice with the simulator's logit moved by ``slope * L`` (the linear approximation of
    simulating with the offsets), beside ``sim_spearman`` (the simulator alone)."""
    hs = sorted(float(k) for k in sim_means)
    if len(hs) != 3 or hs[1] != 0.0 or hs[0] != -hs[2]:
        raise ValueError(f"sim_means needs the keys -h, 0.0 and +h; got {sorted(sim_means)}")
    h = hs[2]
    s0 = _logit(sim_means[0.0])
    slope = (_logit(sim_means[h]) - _logit(sim_means[-h])) / (2 * h)
    if len(s0) != len(calibration) or np.any(slope >= 0):
        raise ValueError("sim_means must hold one mean per calibration nodule, falling as L grows")
    real = _real_dice(calibration)
    target = (_logit(real) - s0) / slope
    vc = SB.fit_variance_components([n.real["pairs"] for n in calibration], "logit")
    ks = np.array([int(n.n_readers) for n in calibration])
    w = slope**2 / (vc.between_of(ks) + vc.noise(ks))
    X, _ = property_matrix(calibration, groups, db=db)
    fold = patient_folds([n.nodule_id for n in calibration], folds, seed)
    oof = np.empty(len(target))
    for f in range(folds):
        te = fold == f
        oof[te] = ridge_predictor(X[~te], target[~te], w[~te], alpha)(X[te])
    full = ridge_predictor(X, target, w, alpha)
    fitted = full(X)
    centre = float(np.average(fitted, weights=w))

    def predict(nodules: Sequence[Any]) -> np.ndarray:
        return full(property_matrix(nodules, groups, db=db)[0]) - centre

    return {
        "predict": predict,
        "L": fitted - centre,
        "slope_median": float(np.median(slope)),
        "cv_spearman": float(stats.spearmanr(real, s0 + slope * (oof - centre)).statistic),
        "sim_spearman": float(stats.spearmanr(real, s0).statistic),
    }
