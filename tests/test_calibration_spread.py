"""The spread report: its figures on hand-made panels, the energy distance and its null."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from hiseg_sim.annotators.behaviour import calibration_spread as S
from hiseg_sim.annotators.behaviour.calibration import agreement_stats


def _nod(dice, pairs, cv, band="6-10", lidc_band="10-20"):
    return SimpleNamespace(
        real={"dice": dice, "pairs": tuple(pairs), "volume_cv": cv}, band=band, lidc_band=lidc_band, n_readers=2
    )


def _panel(dice, cv):
    return {"dice": dice, "pairs": (dice,), "volume_cv": cv}


def test_spread_metrics_on_hand_made_values():
    nods = [_nod(0.9, [0.9], 0.1), _nod(0.4, [0.4], 0.5), _nod(0.7, [0.7], 0.3)]
    sims = [
        [_panel(0.85, 0.1), _panel(0.95, 0.2)],
        [_panel(0.6, 0.3), _panel(0.45, 0.5)],
        [_panel(0.7, 0.2), _panel(0.7, 0.2)],
    ]
    m = S.spread_metrics(nods, sims)
    assert m["pairwise_dice_mean"] == pytest.approx({"real": 2.0 / 3.0, "sim": 0.7083333})
    assert m["per_nodule_dice_sd"]["real"] == pytest.approx(np.std([0.9, 0.4, 0.7], ddof=1))
    assert m["frac_pairs_below_0_5"] == pytest.approx({"real": 1 / 3, "sim": 1 / 6})
    assert m["volume_cv_median"] == pytest.approx({"real": 0.3, "sim": 0.2})
    assert m["frac_volume_cv_above_0_4"] == pytest.approx({"real": 1 / 3, "sim": 1 / 6})
    assert m["spearman_per_nodule"] == pytest.approx(1.0)  # same order of contention
    flipped = S.spread_metrics(nods, [sims[1], sims[0], sims[2]])
    assert flipped["spearman_per_nodule"] < 0


def test_band_table_bands_by_the_attribute_asked():
    nods = [_nod(0.9, [0.9], 0.1, band="6-10", lidc_band="10-20")]
    sims = [[_panel(0.8, 0.1)]]
    lidc = S.band_table(nods, sims, "lidc_band")
    cons = S.band_table(nods, sims, "band")
    assert lidc["10-20"]["n"] == 1 and lidc["6-10"]["n"] == 0 and cons["6-10"]["n"] == 1
    assert lidc["10-20"]["real"] == pytest.approx(0.9) and lidc["10-20"]["sim"] == pytest.approx(0.8)
    json.dumps(lidc)


def _ball(shape, c, r):
    g = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((a - b) ** 2 for a, b in zip(g, c)) <= r * r


def _geom(shape):
    return SimpleNamespace(box=(0, shape[0], 0, shape[1], 0, shape[2]), phi=np.zeros(shape, np.float32))


def test_energy_distance_is_near_its_null_for_exchangeable_panels_and_far_for_a_wrong_one():
    rng = np.random.default_rng(0)
    shape = (9, 30, 30)

    def reader():
        return _ball(shape, (4, 15 + rng.integers(-2, 3), 15 + rng.integers(-2, 3)), 6 + rng.integers(-1, 2))

    nodules = []
    for _ in range(30):
        real = [reader() for _ in range(3)]
        nodules.append(SimpleNamespace(n_readers=3, real_masks=lambda real=real: real, geometry=_geom(shape)))
    same, wrong = S.EnergyDistance(nodules), S.EnergyDistance(nodules)
    for i in range(len(nodules)):
        for r in range(4):
            same(i, r, [reader() for _ in range(3)], _geom(shape))
            wrong(i, r, [_ball(shape, (4, 8, 8), 3) for _ in range(3)], _geom(shape))
    a, b = same.result(n_perm=100), wrong.result(n_perm=100)
    assert a["null_q025"] <= a["sim"] <= a["null_q975"] and a["p"] > 0.05
    assert b["sim"] > b["null_q975"] and b["p"] < 0.05 and b["sim"] > 0.5


def test_a_void_signal_forgets_the_nodules_panels():
    shape = (5, 10, 10)
    m = _ball(shape, (2, 5, 5), 3)
    nod = SimpleNamespace(n_readers=2, real_masks=lambda: [m, m], geometry=_geom(shape))
    e = S.EnergyDistance([nod])
    e(0, 0, [m, m], _geom(shape))
    e(0, -1, None, None)
    assert e.mats[0] == []
    assert e.result(n_perm=5)["sim"] is None


def test_agreement_stats_feed_the_pair_and_volume_figures():
    a = _ball((5, 20, 20), (2, 10, 10), 4)
    b = _ball((5, 20, 20), (2, 10, 10), 2)
    s = agreement_stats([a, b, a], a, 1.0)
    assert len(s["pairs"]) == 3 and min(s["pairs"]) < 0.5 and s["volume_cv"] > 0.4
