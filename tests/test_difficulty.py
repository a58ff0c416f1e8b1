"""Difficulty from the nodule's own features: what goes in, and that the regression finds it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from hiseg_sim.annotators.behaviour import difficulty as D
from hiseg_sim.annotators.behaviour.difficulty_fit import fit_error_scales, implied_log_difficulty
from hiseg_sim.annotators.behaviour.perception import PerceptionParams
from hiseg_sim.data.nodule_features import contact_features


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


# ------------------------------------------------------------------ semantic errors from the nodule

_SCALES = D.ErrorScales((1.6, 1.3, 1.0, 0.8, 0.5), (1.2, 1.0, 0.8, 0.5, 0.3), 0.1, 0.2)
_GROUP = PerceptionParams(p_wrong_spot=0.1, p_include_vessel=0.25, p_miss_ggo_rim=0.25, p_pleura_error=0.2)


def _case(case_id, *, vessel_px=0, wall_px=0, subtlety=3.0, texture=5.0):
    """A 9x24x24 case: a 6x6-px square nodule on slices 3-5, an attached vessel of ``vessel_px``
    pixels running right from its edge and a wall ``wall_px`` pixels long along its left edge."""
    gt = np.zeros((9, 24, 24), bool)
    gt[3:6, 9:15, 9:15] = True
    anat = np.where(gt, 1, 0).astype(np.uint8)
    anat[4, 11, 15 : 15 + vessel_px] = 3
    anat[3:6, 9 : 9 + wall_px, 8] = 4
    meta = {"ratings": {"subtlety": subtlety, "texture": texture}, "texture": int(texture), "anatomy": anat}
    return SimpleNamespace(case_id=case_id, gt=gt, meta=meta)


def test_contact_features_measure_what_touches_the_outline():
    c0, c1, c2 = _case("a"), _case("a", vessel_px=2), _case("a", vessel_px=2, wall_px=6)
    f0, f1, f2 = (contact_features(c.gt, c.meta["anatomy"]) for c in (c0, c1, c2))
    assert f0 == {"vessel_contact": 0.0, "wall_contact": 0.0}
    assert f1["vessel_contact"] > 0 and f1["wall_contact"] == 0
    assert f2["wall_contact"] > 0 and f2["vessel_contact"] == f1["vessel_contact"]
    far = _case("a")
    far.meta["anatomy"][4, 11, 18:22] = 3  # a vessel 3 px away touches nothing
    assert contact_features(far.gt, far.meta["anatomy"])["vessel_contact"] == 0.0


def test_error_probabilities_follow_the_nodule_not_its_id():
    same = [D.case_error_params(_GROUP, _case(cid, vessel_px=3), _SCALES) for cid in ("x/n1", "y/n7", "z/s2/n3")]
    assert same[0] == same[1] == same[2]  # one nodule under three ids: one set of probabilities
    p = lambda **kw: D.case_error_params(_GROUP, _case("x/n1", **kw), _SCALES)  # noqa: E731
    assert p(vessel_px=0).p_include_vessel == 0.0  # nothing to take in
    assert 0 < p(vessel_px=3).p_include_vessel
    wide = _case("x/n1", vessel_px=3)
    wide.meta["anatomy"][3:6, 9:15, 15] = 3  # the vessel now runs along the whole right side
    assert D.case_error_params(_GROUP, wide, _SCALES).p_include_vessel > p(vessel_px=3).p_include_vessel
    assert p(wall_px=0).p_pleura_error == 0.0 and p(wall_px=6).p_pleura_error > p(wall_px=2).p_pleura_error > 0
    assert p(texture=1).p_miss_ggo_rim > p(texture=3).p_miss_ggo_rim > p(texture=5).p_miss_ggo_rim
    assert p(subtlety=1).p_wrong_spot > p(subtlety=3).p_wrong_spot > p(subtlety=5).p_wrong_spot
    assert p(subtlety=3.5).p_wrong_spot == pytest.approx((p(subtlety=3).p_wrong_spot + p(subtlety=4).p_wrong_spot) / 2)
    capped = D.case_error_params(_GROUP.replace(p_include_vessel=0.9), wide, _SCALES)
    assert capped.p_include_vessel == 1.0  # a probability, however wide the contact
    boundary = ("bias_mm", "shift_sd_mm", "difficulty_sd", "vessel_reach_mm")
    assert all(getattr(p(vessel_px=3), k) == getattr(_GROUP, k) for k in boundary)


def test_a_case_without_features_keeps_the_group_probabilities():
    bare = SimpleNamespace(case_id="scan", gt=np.ones((2, 4, 4), bool), meta={})
    assert D.case_error_params(_GROUP, bare, _SCALES) == _GROUP


def test_error_scales_fit_follows_planted_evidence():
    from scipy.special import expit

    x = np.arange(1, 6)

    def table(slope, trials):  # events exactly as a logistic model with this slope makes them
        return {str(k): {"events": float(expit(-1.0 + slope * (k - 3)) * t), "trials": t} for k, t in zip(x, trials)}

    ev = {
        "split": "calibration",
        "n_nodules": 1000,
        "missed_by_subtlety": table(-0.5, [100, 200, 400, 600, 700]),
        "nested_by_texture": table(-0.2, [200, 100, 100, 300, 3000]),
    }
    cases = [_case("a", vessel_px=3, wall_px=4), _case("b", vessel_px=1, wall_px=6), _case("c")]
    scales, rep = fit_error_scales(ev, cases)
    assert rep["missed_logistic"]["slope"] == pytest.approx(-0.5, abs=1e-3)
    assert rep["nested_logistic"]["slope"] == pytest.approx(-0.2, abs=1e-3)
    ws = np.array(scales.wrong_spot_by_subtlety)
    nodules = np.array([100, 200, 400, 600, 700])
    assert np.all(np.diff(ws) < 0) and (ws * nodules).sum() / nodules.sum() == pytest.approx(1.0, abs=1e-3)
    rim = np.array(scales.miss_rim_by_texture)
    assert np.all(np.diff(rim) < 0) and (rim[:3] * [200, 100, 100]).sum() / 400 == pytest.approx(1.0, abs=1e-3)
    feats = [contact_features(c.gt, c.meta["anatomy"]) for c in cases[:2]]
    assert scales.vessel_contact_ref == pytest.approx(np.median([f["vessel_contact"] for f in feats]), abs=1e-4)
    with pytest.raises(ValueError):
        fit_error_scales({**ev, "split": "holdout"}, cases)


def test_saved_error_scales_make_subtle_and_ground_glass_nodules_likelier_to_go_wrong():
    s = D.saved_error_scales()
    if s is None:
        pytest.skip("no agents/calibration/error_scales.json")
    assert s.wrong_spot_by_subtlety[0] > s.wrong_spot_by_subtlety[-1]
    assert s.miss_rim_by_texture[4] < min(s.miss_rim_by_texture[:3])
    assert s.vessel_contact_ref > 0 and s.wall_contact_ref > 0
