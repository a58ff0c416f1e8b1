"""The information bound: how well a nodule's recorded properties rank its readers' agreement.

Synthetic nodules whose readers' agreement follows one property (or none), so the bound's answer
is known: high when a property carries the agreement, near zero when nothing does.
"""

from __future__ import annotations

from itertools import combinations
from types import SimpleNamespace

import numpy as np
import pytest

from hiseg_sim.annotators.behaviour import property_bound as PB
from hiseg_sim.annotators.behaviour.perception import ReferenceGeometry


def _sphere(radius_mm: float, spacing=(2.0, 0.7, 0.7)) -> ReferenceGeometry:
    dz, py, px = spacing
    n = 48
    z, y, x = np.mgrid[:16, :n, :n]
    inside = ((z - 8) * dz) ** 2 + ((y - n / 2) * py) ** 2 + ((x - n / 2) * px) ** 2 <= radius_mm**2
    return ReferenceGeometry.from_mask(inside, spacing, margin_mm=2.0)


_GEOMS = [_sphere(r) for r in (3.0, 5.0, 8.0)]


def _nodules(n: int, seed: int, carried_by_margin: bool):
    """``n`` nodules, 4 readers each, in patients of two nodules; their pair Dice ride on the
    margin rating (``carried_by_margin``) or on nothing, plus each pair's own noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        margin = float(rng.integers(1, 6))
        tau = 0.55 + 0.07 * margin if carried_by_margin else 0.75
        pairs = [float(np.clip(tau + 0.03 * rng.standard_normal(), 0.05, 0.98)) for _ in combinations(range(4), 2)]
        ratings = {
            "subtlety": 4.0,
            "internalStructure": 1.0,
            "calcification": 6.0,
            "sphericity": 4.0,
            "margin": margin,
            "lobulation": 2.0,
            "spiculation": float(rng.integers(1, 4)),
            "texture": 5.0,
        }
        g = _GEOMS[i % 3]
        out.append(
            SimpleNamespace(
                nodule_id=f"LIDC-IDRI-{i // 2:04d}/n{i % 2}",
                ratings=ratings,
                texture=5.0,
                lidc_diameter_mm=g.diameter_mm,
                diameter_mm=g.diameter_mm,
                n_readers=4,
                geometry=g,
                real={"dice": float(np.mean(pairs)), "pairs": pairs},
            )
        )
    return out


def test_shape_features_measure_the_outline():
    small, big = (PB.shape_features(g, g.diameter_mm) for g in (_GEOMS[0], _GEOMS[2]))
    assert list(small) == list(PB.SHAPE_FEATURES)
    assert big["log_volume"] > small["log_volume"] and big["n_slices"] > small["n_slices"]
    assert small["edge_share"] > big["edge_share"]  # a small outline is mostly edge
    assert small["slice_mm"] == 2.0 and small["pixel_mm"] == pytest.approx(0.7)
    assert 0.9 < big["key_solidity"] <= 1.0  # a disc is its own convex hull
    assert 0.4 < big["box_fill"] < 0.6  # a ball fills pi / 6 of its box
    empty = SimpleNamespace(phi=np.full((2, 3, 3), -1.0), spacing=(1, 1, 1), diameter_mm=1.0)
    with pytest.raises(ValueError, match="no voxel inside"):
        PB.shape_features(empty, 5.0)


def test_rating_spread_is_the_readers_sd():
    readers = [SimpleNamespace(ratings={k: v for k, v in zip(_names(), row)}) for row in ([1] * 9, [3] * 9)]
    assert PB.rating_spread(readers) == pytest.approx(np.ones(9))
    with pytest.raises(ValueError, match="at least one reader"):
        PB.rating_spread([])


def _names():
    from hiseg_sim.data.lidc import RATING_NAMES

    return RATING_NAMES


def test_bound_finds_a_property_that_carries_the_agreement_and_none_when_none_does():
    carried = PB.property_bound(_nodules(120, 0, True), _nodules(60, 1, True), groups=("ratings", "shape"), n_boot=200)
    assert carried["cv_spearman"] > 0.85 and carried["holdout_spearman"] > 0.85
    assert carried["cv_ci95"][0] < carried["cv_spearman"] < carried["cv_ci95"][1] + 1e-9
    assert carried["n"] == {"calibration": 120, "holdout": 60}
    assert "margin" in carried["features"] and "edge_share" in carried["features"]
    nothing = PB.property_bound(
        _nodules(120, 2, False), _nodules(60, 3, False), groups=("ratings", "shape"), n_boot=200
    )
    # no signal: out of fold it leans negative (each fold's intercept is the others' mean), never up
    assert nothing["cv_spearman"] < 0.2 and abs(nothing["holdout_spearman"]) < 0.35


def test_bound_takes_extra_columns_and_says_what_is_wrong():
    cal, hold = _nodules(60, 4, False), _nodules(20, 5, False)
    signal = np.array([n.real["dice"] for n in cal])  # a column that is the answer ranks perfectly
    out = PB.property_bound(
        cal,
        hold,
        groups=("ratings",),
        calibration_extra=signal,
        holdout_extra=np.array([n.real["dice"] for n in hold]),
        n_boot=50,
    )
    assert out["cv_spearman"] > 0.95 and out["features"][-1] == "extra_0"
    with pytest.raises(ValueError, match="together"):
        PB.property_bound(cal, hold, groups=("ratings",), calibration_extra=signal)
    with pytest.raises(ValueError, match="unknown property groups"):
        PB.property_bound(cal, groups=("colour",))
    with pytest.raises(ValueError, match="too few"):
        PB.property_bound(cal[:20], groups=("ratings",))


def test_patient_folds_keep_a_patient_together():
    ids = [f"LIDC-IDRI-{p:04d}/n{j}" for p in range(12) for j in range(3)]
    f = PB.patient_folds(ids, 4)
    for p in range(12):
        assert len(set(f[3 * p : 3 * p + 3])) == 1
    assert set(f) == {0, 1, 2, 3}
    with pytest.raises(ValueError, match="cannot fill"):
        PB.patient_folds(ids[:6], 4)


def test_linearised_difficulty_recovers_the_offset_a_simulator_is_missing():
    """A simulator whose logit mean is the truth's without the margin effect, and falls with slope
    -1.5 in L: the fitted L puts the margin effect back, centred, and ranks above the simulator."""
    cal = _nodules(150, 7, True)
    real = np.array([n.real["dice"] for n in cal])
    margin = np.array([n.ratings["margin"] for n in cal])
    base = 0.3 + 0.01 * np.random.default_rng(8).standard_normal(len(cal))  # no margin effect

    def at(L):
        return 1 / (1 + np.exp(-(base - 1.5 * L)))

    fit = PB.linearised_difficulty(cal, {-0.5: at(-0.5), 0.0: at(0.0), 0.5: at(0.5)})
    assert fit["slope_median"] == pytest.approx(-1.5, abs=1e-6)
    assert np.corrcoef(fit["L"], margin)[0, 1] < -0.9  # a sharper margin: easier, lower L
    assert np.mean(fit["L"]) == pytest.approx(0.0, abs=1e-9)  # equal weights here: centred
    assert fit["cv_spearman"] > 0.8 and abs(fit["sim_spearman"]) < 0.3  # the simulator alone: noise
    assert fit["predict"](cal[:5]) == pytest.approx(fit["L"][:5])
    assert np.corrcoef(real, -fit["L"])[0, 1] > 0.8
    with pytest.raises(ValueError, match="keys"):
        PB.linearised_difficulty(cal, {0.0: at(0.0), 0.5: at(0.5)})
