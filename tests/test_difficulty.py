"""Difficulty from the nodule's own features: what goes in, and that the regression finds it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from hiseg_sim.annotators.behaviour import difficulty as D
from hiseg_sim.annotators.behaviour.difficulty_fit import implied_log_difficulty


def _nod(i, rng):
    ratings = {
        "subtlety": float(rng.integers(1, 6)),
        "internalStructure": 1.0,
        "calcification": 6.0,
        "sphericity": float(rng.integers(2, 6)),
        "margin": float(rng.integers(1, 6)),
        "lobulation": float(rng.integers(1, 6)),
        "spiculation": float(rng.integers(1, 6)),
        "texture": float(rng.integers(1, 6)),
    }
    return SimpleNamespace(
        nodule_id=f"n{i}",
        ratings=ratings,
        lidc_diameter_mm=float(rng.uniform(3, 30)),
        diameter_mm=0.0,
        n_readers=int(rng.integers(2, 5)),
        texture=ratings["texture"],
    )


def test_features_from_a_nodule_and_from_a_case_meta_agree():
    rng = np.random.default_rng(0)
    n = _nod(0, rng)
    meta = {"ratings": n.ratings, "lidc_diameter_mm": n.lidc_diameter_mm, "diameter_mm": 99.0, "n_readers": n.n_readers}
    assert D.features_of(n) == D.features_of(meta)
    f = D.features_of({"ratings": {"margin": 1, "calcification": 3}, "diameter_mm": 20.0, "n_readers": 2})
    assert f["log2_diameter"] == pytest.approx(1.0) and f["calcified"] == 1.0 and f["two_readers"] == 1.0
    assert set(f) == set(D.FEATURES)


def test_regression_recovers_a_planted_margin_effect_and_is_centred():
    rng = np.random.default_rng(1)
    nods = [_nod(i, rng) for i in range(400)]
    margin = np.array([n.ratings["margin"] for n in nods])
    h = 0.3 - 0.25 * (margin - 3) + rng.normal(0, 0.1, len(nods))  # poorly defined margins are harder
    model, rep = D.fit_difficulty(nods, h, ridge=1.0)
    coef = dict(zip(D.FEATURES, model.coef))
    assert coef["margin"] < -0.25 * 0.9 * np.std(margin)
    assert max(abs(v) for k, v in coef.items() if k != "margin") < 0.05
    preds = np.array([model.log_difficulty(D.features_of(n)) for n in nods])
    assert abs(preds.mean()) < 1e-6  # the level stays with the boundary parameters
    assert rep["r2"] > 0.8 and model.residual_sd == pytest.approx(0.1, abs=0.02)
    again = D.DifficultyModel.from_dict(model.to_dict())
    assert again.log_difficulty(D.features_of(nods[0])) == pytest.approx(preds[0])


def test_a_case_without_ratings_gets_no_offset():
    model = D.DifficultyModel(
        tuple([0.0] * len(D.FEATURES)), tuple([1.0] * len(D.FEATURES)), tuple([0.5] * len(D.FEATURES)), 0.1
    )
    assert D.case_log_difficulty({}, model) == 0.0
    assert D.case_log_difficulty({"ratings": {"margin": 1}, "diameter_mm": 10.0}, model) != 0.0


def test_implied_difficulty_is_higher_where_readers_agree_less():
    from hiseg_sim.annotators.behaviour import calibration as C
    from hiseg_sim.annotators.behaviour.perception import PerceptionParams, ReferenceGeometry

    g = np.ogrid[:9, :40, :40]
    ball = ((g[0] - 4) * 1.5) ** 2 + ((g[1] - 20) * 0.7) ** 2 + ((g[2] - 20) * 0.7) ** 2 <= 5.0**2
    geom = ReferenceGeometry.from_mask(ball, (1.5, 0.7, 0.7), margin_mm=8.0)

    def nod(nid, dice):
        return C.CalibrationNodule(nid, "10-20", 10.0, 3, 5.0, "consensus", geom, {"dice": dice})

    h = implied_log_difficulty([nod("a", 0.9), nod("a", 0.6)], PerceptionParams(), reps=2)
    assert h[1] > h[0]
