"""How hard a nodule's edge is to place, from the nodule itself: its size, texture and ratings.

The perception model scales every edge shift by the case's difficulty (``shift_scale`` in
:mod:`~hiseg_sim.annotators.behaviour.perception`): ``exp(L + difficulty_sd * r ** e * z)``.
This module gives ``L``, the part the nodule's own features predict, so that the nodules LIDC
readers disagree on are the ones simulated readers disagree on; ``z`` (a draw keyed by the case)
is what the features leave unexplained.

Features (:data:`FEATURES`), from the readers' median LIDC ratings and the panel: log2 of the
LIDC diameter over 10 mm, subtlety (1 extremely subtle ... 5 obvious), internal structure other
than soft tissue, calcification present (rating < 6), sphericity, margin (1 poorly defined ... 5
sharp), lobulation, spiculation (1 none ... 5 marked), texture (1 ground glass ... 5 solid), and
whether only two or three of the four LIDC readers marked it (a nodule the others passed over).

The fit (:func:`fit_difficulty`, calibration split only):

1. For each nodule, its *implied* log difficulty ``h``: the ``L`` at which simulated panels
   (random part off, common random numbers) reach the real readers' mean pairwise Dice, found
   on a grid (:func:`hiseg_sim.annotators.behaviour.difficulty_fit.implied_log_difficulty`;
   clipped to the grid's ends).
2. ``h`` regressed on the standardised features (ridge, :data:`RIDGE`), centred so that the
   calibration nodules' mean ``L`` is 0: the overall level stays with the boundary parameters.

The saved model is ``agents/calibration/difficulty.json`` (:func:`saved_model`).

Semantic errors from the nodule
-------------------------------
A group's profile gives each semantic error one probability per case
(:class:`~hiseg_sim.annotators.behaviour.perception.PerceptionParams` ``p_*``). Which nodule it
happens on is not a coin keyed by the case: :func:`case_error_params` multiplies each by a factor
of the nodule's own features (:func:`error_factors`), capped at :data:`MAX_FACTOR` and at 1:

======================  ========================================================================
error                   factor
======================  ========================================================================
``p_wrong_spot``        by the LIDC subtlety rating: how often LIDC readers passed over nodules of
                        that subtlety (share of the four readers who did not mark it, logistic in
                        the rating), over its mean on the calibration nodules (mean factor 1: the
                        group's rate is kept).
``p_miss_ggo_rim``      by the LIDC texture rating: how often one reader's outline lies inside
                        another's and holds at most :data:`NESTED_VOLUME` of its volume (a core
                        drawn without its periphery; logistic in the rating), over its mean on the
                        non-solid nodules (texture <= 3, the ground glass the profiles speak of).
``p_include_vessel``    0 when no vessel touches the nodule, else the share of the nodule's outline
                        it touches over the median share of the default cohort's attached vessels.
``p_pleura_error``      0 when the nodule does not touch the chest wall, else its share of the
                        outline over the median of the default cohort's juxtapleural nodules.
======================  ========================================================================

The first two are fitted on the LIDC calibration split
(:func:`~hiseg_sim.annotators.behaviour.difficulty_fit.fit_error_scales`); LIDC records neither
vessels nor the pleura, so the last two are proportional to contact by assumption, scaled to the
phantoms' own median contact. A factor whose feature is unknown (a user's scan: no ratings, no
anatomy map) is 1. The saved scales are ``agents/calibration/error_scales.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hiseg_sim.resources import shipped_path

__all__ = [
    "FEATURES",
    "DIFFICULTY_PATH",
    "DifficultyModel",
    "features_of",
    "feature_vector",
    "fit_difficulty",
    "save_model",
    "saved_model",
    "case_log_difficulty",
    "ERROR_SCALES_PATH",
    "ErrorScales",
    "error_factors",
    "case_error_params",
    "saved_error_scales",
    "MAX_FACTOR",
    "NESTED_VOLUME",
]

FEATURES = (
    "log2_diameter",
    "subtlety",
    "internal_structure_other",
    "calcified",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "two_readers",
    "three_readers",
)
DIFFICULTY_PATH = shipped_path("agents", "calibration", "difficulty.json")
#: ridge penalty on the standardised coefficients (assumption: a light shrinkage, 1 % of the
#: ~1,500 calibration nodules' sum of squares per feature, against ratings that correlate)
RIDGE = 15.0
#: the log-difficulty grid of step 1 (the multiplier 0.37 ... 12)
GRID = tuple(np.round(np.arange(-1.0, 2.51, 0.25), 2))
ERROR_SCALES_PATH = shipped_path("agents", "calibration", "error_scales.json")
#: a nodule's features at most multiply a group's error probability by this (assumption: the
#: profiles' figures are rates for a typical nodule with the feature; a feature twice as marked
#: as the typical one is not taken to make an error more than twice as likely)
MAX_FACTOR = 2.0
#: a reader's outline inside another's (at least 90 % of its voxels) with at most this share of
#: its volume counts as a core drawn without its periphery (assumption: 0.6 of the volume is 16 %
#: less in diameter; on a 6-10 mm nodule that is one or two pixels, so there the count also holds
#: plain edge disagreement: only how it changes with texture is used, not its level)
NESTED_VOLUME = 0.6


def features_of(obj: Any) -> dict[str, float]:
    """The raw features of a nodule: a :class:`~hiseg_sim.annotators.behaviour.calibration.
    CalibrationNodule`, a :class:`~hiseg_sim.data.lidc.Nodule`, or a case's ``meta`` mapping
    (``ratings``, ``n_readers``, ``lidc_diameter_mm`` or ``diameter_mm``)."""
    if isinstance(obj, Mapping):
        ratings = dict(obj.get("ratings") or {})
        diam = obj.get("lidc_diameter_mm", obj.get("diameter_mm"))
        k = obj.get("n_readers", 4)
        if "texture" not in ratings and obj.get("texture") is not None:
            ratings["texture"] = obj["texture"]
    else:
        ratings = dict(getattr(obj, "ratings", {}) or {})
        diam = getattr(obj, "lidc_diameter_mm", None)
        if diam is None or not math.isfinite(float(diam)):
            diam = getattr(obj, "diameter_mm", 10.0)
        k = getattr(obj, "n_readers", 4)
        if "texture" not in ratings and getattr(obj, "texture", None) is not None:
            ratings["texture"] = obj.texture
    r = lambda name, default: float(ratings.get(name, default))  # noqa: E731
    return {
        "log2_diameter": math.log2(max(float(diam if diam is not None else 10.0), 1.0) / 10.0),
        "subtlety": r("subtlety", 4),
        "internal_structure_other": float(r("internalStructure", 1) > 1.5),
        "calcified": float(r("calcification", 6) < 5.5),
        "sphericity": r("sphericity", 4),
        "margin": r("margin", 4),
        "lobulation": r("lobulation", 2),
        "spiculation": r("spiculation", 1),
        "texture": r("texture", 5),
        "two_readers": float(int(k) == 2),
        "three_readers": float(int(k) == 3),
    }


def feature_vector(feats: Mapping[str, float]) -> np.ndarray:
    return np.array([float(feats[f]) for f in FEATURES])


@dataclass(frozen=True)
class DifficultyModel:
    """``L = sum_j coef_j * (x_j - mean_j) / scale_j`` over :data:`FEATURES` (zero mean on the
    calibration nodules), clipped to ``[lo, hi]``; ``residual_sd``: SD of ``h - L`` there."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    residual_sd: float
    lo: float = GRID[0]
    hi: float = GRID[-1]

    def log_difficulty(self, feats: Mapping[str, float]) -> float:
        z = (feature_vector(feats) - np.asarray(self.mean)) / np.asarray(self.scale)
        return float(np.clip(z @ np.asarray(self.coef), self.lo, self.hi))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(FEATURES), **asdict(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DifficultyModel:
        if list(d["features"]) != list(FEATURES):
            raise ValueError(f"difficulty model features {d['features']} differ from {list(FEATURES)}")
        return cls(
            tuple(d["mean"]),
            tuple(d["scale"]),
            tuple(d["coef"]),
            float(d["residual_sd"]),
            float(d.get("lo", GRID[0])),
            float(d.get("hi", GRID[-1])),
        )


def fit_difficulty(nodules: Sequence[Any], implied: np.ndarray, ridge: float = RIDGE) -> tuple[DifficultyModel, dict]:
    """Ridge regression of the implied log difficulty on the standardised features; returns the
    model and a report (coefficients by name, R^2, n)."""
    X = np.stack([feature_vector(features_of(n)) for n in nodules])
    y = np.asarray(implied, float)
    mean, scale = X.mean(0), X.std(0)
    scale[scale == 0] = 1.0
    Z = (X - mean) / scale
    yc = y - y.mean()
    coef = np.linalg.solve(Z.T @ Z + ridge * np.eye(Z.shape[1]), Z.T @ yc)
    pred = Z @ coef
    resid = yc - pred
    model = DifficultyModel(
        tuple(map(float, mean)),
        tuple(map(float, scale)),
        tuple(map(float, coef)),
        float(resid.std(ddof=Z.shape[1] + 1)),
    )
    r2 = 1.0 - float((resid**2).sum() / (yc**2).sum())
    report = {
        "n": len(y),
        "r2": round(r2, 4),
        "implied_mean": round(float(y.mean()), 4),
        "implied_sd": round(float(y.std()), 4),
        "ridge": ridge,
        "coef_per_sd": {f: round(float(c), 4) for f, c in zip(FEATURES, coef)},
        "clipped_low": int((y <= GRID[0]).sum()),
        "clipped_high": int((y >= GRID[-1]).sum()),
    }
    return model, report


def save_model(model: DifficultyModel, report: Mapping[str, Any], path: str | Path | None = None) -> Path:
    p = Path(path) if path is not None else DIFFICULTY_PATH
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({"model": model.to_dict(), "report": dict(report)}, indent=2) + "\n")
    _SAVED.pop(str(p), None)
    return p


_SAVED: dict[str, DifficultyModel | None] = {}


def saved_model(path: str | Path | None = None) -> DifficultyModel | None:
    """The saved model (``agents/calibration/difficulty.json``), or ``None`` if there is none."""
    p = Path(path) if path is not None else DIFFICULTY_PATH
    key = str(p)
    if key not in _SAVED:
        _SAVED[key] = DifficultyModel.from_dict(json.loads(p.read_text())["model"]) if p.is_file() else None
    return _SAVED[key]


def case_log_difficulty(meta: Mapping[str, Any], model: DifficultyModel | None = None) -> float:
    """``L`` for a case from its ``meta`` (a phantom's ``ratings``, ``n_readers`` and diameter):
    what a caller passes as ``intended_mask(..., difficulty_log=...)``. 0.0 when the case carries
    no ratings (a user's scan) or there is no saved model."""
    model = saved_model() if model is None else model
    if model is None or not meta.get("ratings"):
        return 0.0
    return model.log_difficulty(features_of(meta))


# ------------------------------------------------------------------------- semantic-error factors


@dataclass(frozen=True)
class ErrorScales:
    """How a nodule's features scale a group's semantic-error probabilities (module docstring).

    ``wrong_spot_by_subtlety`` and ``miss_rim_by_texture``: the factor at rating 1 ... 5 (linear
    between levels, so a median of 3.5 falls half way); ``vessel_contact_ref`` and
    ``wall_contact_ref``: the contact share (of the nodule's outline) at which the factor is 1."""

    wrong_spot_by_subtlety: tuple[float, ...]
    miss_rim_by_texture: tuple[float, ...]
    vessel_contact_ref: float
    wall_contact_ref: float
    max_factor: float = MAX_FACTOR

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ErrorScales:
        return cls(
            tuple(float(v) for v in d["wrong_spot_by_subtlety"]),
            tuple(float(v) for v in d["miss_rim_by_texture"]),
            float(d["vessel_contact_ref"]),
            float(d["wall_contact_ref"]),
            float(d.get("max_factor", MAX_FACTOR)),
        )


_SAVED_SCALES: dict[str, ErrorScales | None] = {}


def saved_error_scales(path: str | Path | None = None) -> ErrorScales | None:
    """The saved scales (``agents/calibration/error_scales.json``), or ``None`` if there are none."""
    p = Path(path) if path is not None else ERROR_SCALES_PATH
    key = str(p)
    if key not in _SAVED_SCALES:
        _SAVED_SCALES[key] = ErrorScales.from_dict(json.loads(p.read_text())["scales"]) if p.is_file() else None
    return _SAVED_SCALES[key]


def _level(table: Sequence[float], rating: Any) -> float:
    return float(np.interp(float(np.clip(float(rating), 1.0, 5.0)), np.arange(1.0, 6.0), np.asarray(table, float)))


def error_factors(case: Any, scales: ErrorScales | None = None) -> dict[str, float]:
    """The factors on ``p_wrong_spot``, ``p_include_vessel``, ``p_miss_ggo_rim`` and
    ``p_pleura_error`` for a case (anything with ``meta`` and ``gt``; a phantom has ratings and an
    anatomy map). Only the nodule's features enter: never its id. With no saved scales, or for a
    feature the case does not carry, the factor is 1."""
    from hiseg_sim.data.nodule_features import case_contact_features

    out = {"p_wrong_spot": 1.0, "p_include_vessel": 1.0, "p_miss_ggo_rim": 1.0, "p_pleura_error": 1.0}
    scales = saved_error_scales() if scales is None else scales
    if scales is None:
        return out
    meta = getattr(case, "meta", None) or {}
    ratings = dict(meta.get("ratings") or {})
    cap = scales.max_factor
    if ratings.get("subtlety") is not None:
        out["p_wrong_spot"] = min(cap, _level(scales.wrong_spot_by_subtlety, ratings["subtlety"]))
    texture = ratings.get("texture", meta.get("texture"))
    if texture is not None:
        out["p_miss_ggo_rim"] = min(cap, _level(scales.miss_rim_by_texture, texture))
    contact = case_contact_features(case)
    if contact is not None:
        out["p_include_vessel"] = min(cap, contact["vessel_contact"] / scales.vessel_contact_ref)
        out["p_pleura_error"] = min(cap, contact["wall_contact"] / scales.wall_contact_ref)
    return out


def case_error_params(params, case: Any, scales: ErrorScales | None = None):
    """``params`` (:class:`~hiseg_sim.annotators.behaviour.perception.PerceptionParams`) with each
    semantic-error probability multiplied by its :func:`error_factors` factor (at most 1): what a
    caller passes to ``intended_mask`` for this case. Unchanged when every factor is 1."""
    f = error_factors(case, scales)
    changes = {k: min(1.0, float(getattr(params, k)) * v) for k, v in f.items() if v != 1.0}
    return params.replace(**changes) if changes else params
