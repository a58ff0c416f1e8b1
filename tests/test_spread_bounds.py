"""The spread bounds on synthetic panels whose true ceiling is known in closed form.

Synthetic model (raw scale, bivariate normal, all values far from 0 and 1): nodule agreement
``tau ~ N(0.7, B)``; pair ``(a, b)`` Dice ``tau + u_a + u_b + w_ab``. With ``B = V = 0.01`` and
``C = 0.003`` one pair's reliability is 0.5, a 4-reader panel's noise ``C + (V - 2C) / 6``.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from scipy import stats

from hiseg_sim.annotators.behaviour import spread_bounds as SB

B, V, C = 0.01, 0.01, 0.003


def _panels(ks, seed=0, b=B, v=V, c=C):
    """Pair Dice per nodule (combinations order), drawn reader by reader."""
    rng = np.random.default_rng(seed)
    out = []
    for k in ks:
        tau = 0.7 + np.sqrt(b) * rng.standard_normal()
        u = np.sqrt(c) * rng.standard_normal(k)
        out.append(
            [tau + u[i] + u[j] + np.sqrt(v - 2 * c) * rng.standard_normal() for i, j in combinations(range(k), 2)]
        )
    return out


def _truth(k=4, reps=100):
    n = C + (V - 2 * C) / 6 if k == 4 else None
    r_sim = B / np.sqrt((B + n) * (B + n / reps))
    return {
        "split_half": float(SB.pearson_to_spearman(B / (B + V))),
        "sim": float(SB.pearson_to_spearman(r_sim)),
        "retest": float(SB.pearson_to_spearman(B / (B + n))),
    }


def test_pair_splits_are_the_disjoint_pairs_of_four_readers():
    assert SB.pair_splits(4) == [(0, 5), (1, 4), (2, 3)]
    assert SB.pair_splits(3) == []
    assert SB.pearson_to_spearman(SB.spearman_to_pearson(0.4)) == pytest.approx(0.4)


def test_variance_components_are_recovered_with_mixed_reader_counts():
    ks = [2] * 1000 + [3] * 1000 + [4] * 2000
    vc = SB.fit_variance_components(_panels(ks, seed=1), scale="raw")
    assert vc.between == {2: pytest.approx(B, rel=0.2), 3: pytest.approx(B, rel=0.15), 4: pytest.approx(B, rel=0.1)}
    assert vc.pair == pytest.approx(V, rel=0.06)
    assert vc.shared == pytest.approx(C, rel=0.2)
    assert set(vc.means) == {2, 3, 4} and vc.means[4] == pytest.approx(0.7, abs=0.01)
    assert vc.noise(2) == pytest.approx(vc.pair)  # one pair: its own noise
    assert float(vc.noise(4)) == pytest.approx(vc.shared + (vc.pair - 2 * vc.shared) / 6)


def test_two_reader_excess_goes_to_the_nodules_or_to_the_pair():
    """Two-reader nodules with twice the pair noise: ``"noise"`` finds it, ``"between"`` puts the
    same excess between the nodules; the total variance of the group is the same either way."""
    pairs = _panels([3] * 800 + [4] * 1200, seed=7) + _panels([2] * 1500, seed=8, v=2 * V, c=2 * C)
    noisy = SB.fit_variance_components(pairs, scale="raw", two_readers="noise")
    wide = SB.fit_variance_components(pairs, scale="raw", two_readers="between")
    assert noisy.pair_by_k[2] == pytest.approx(2 * V, rel=0.15) and noisy.between[2] == pytest.approx(B, rel=0.15)
    assert wide.pair_by_k == {} and wide.between[2] == pytest.approx(B + V, rel=0.15)
    assert float(noisy.noise(2)) + noisy.between[2] == pytest.approx(float(wide.noise(2)) + wide.between[2])
    lo = SB.ceiling(pairs[-300:], n_rep=20, reps=20, scale="raw", vc=noisy)["sim"]
    hi = SB.ceiling(pairs[-300:], n_rep=20, reps=20, scale="raw", vc=wide)["sim"]
    assert lo < hi


def test_split_half_and_its_step_up_match_the_closed_form():
    truth = _truth()
    pairs = np.array(_panels([4] * 3000, seed=2))
    sh = SB.split_half(pairs)
    assert len(sh["spearman"]) == 3
    assert sh["spearman_mean"] == pytest.approx(truth["split_half"], abs=0.03)
    # the step-up is exact given the true split-half and share
    up = SB.implied_ceiling(truth["split_half"], C / V, [4] * 10, reps=100)
    assert up["rho1_pearson"] == pytest.approx(0.5)
    assert up["sim"] == pytest.approx(truth["sim"], abs=1e-9)
    assert up["retest"] == pytest.approx(truth["retest"], abs=1e-9)
    # pairs sharing a reader are not independent measures: 6 pairs are worth far less than 6
    naive = SB.implied_ceiling(truth["split_half"], 0.0, [4], reps=100)
    assert naive["sim"] > up["sim"] + 0.03


def test_parametric_ceiling_finds_the_true_one():
    truth = _truth(reps=50)
    pairs = _panels([4] * 600, seed=3)
    c = SB.ceiling(pairs, reps=50, n_rep=30, scale="raw", seed=0)
    assert c["sim"] == pytest.approx(truth["sim"], abs=0.025)
    assert c["retest"] == pytest.approx(truth["retest"], abs=0.035)
    assert c["split_half"] == pytest.approx(truth["split_half"], abs=0.04)
    assert c["sim_q025"] <= c["sim_q05"] <= c["sim"] <= c["sim_q975"]
    assert c["retest"] < c["sim"]  # the averaged simulator is the less noisy side


def test_ceiling_interval_covers_the_truth_and_is_finite():
    truth = _truth()
    ci = SB.ceiling_interval(_panels([4] * 300, seed=4), n_boot=15, n_rep=4, reps=20, scale="raw", seed=0)
    lo, hi = ci["sim"]
    assert lo < hi and lo - 0.05 < truth["sim"] < hi + 0.05
    assert len(ci["split_half"]) == 2


def test_bootstrap_spearman():
    x = np.arange(30.0)
    assert SB.bootstrap_spearman(x, x**2, n_boot=200) == {"spearman": pytest.approx(1.0), "ci95": [1.0, 1.0]}
    rng = np.random.default_rng(0)
    a = rng.standard_normal(400)
    r = SB.bootstrap_spearman(a, a + rng.standard_normal(400), n_boot=500)
    assert r["ci95"][0] < r["spearman"] < r["ci95"][1]
    assert r["spearman"] == pytest.approx(float(SB.pearson_to_spearman(np.sqrt(0.5))), abs=0.06)


def test_ks_null_iid_matches_the_one_sample_law():
    n = 40
    got = SB.ks_null_iid(n, 5000, n_rep=250, seed=0)
    law = stats.kstwo(n)  # the simulated side is nearly the law itself
    assert got["mean"] == pytest.approx(law.mean(), abs=0.008)
    assert got["q95"] == pytest.approx(law.ppf(0.95), abs=0.02)


def test_stratified_ks_null_is_below_the_iid_one_when_nodules_differ():
    """One value per nodule against the mixture of the nodules: when nodules differ much more than
    panels of one nodule do, the real sample is nearly a stratified one and its KS small."""
    ks = [4] * 40
    iid = SB.ks_null_iid(40, 40 * 50, n_rep=150, seed=0)
    spread = SB.ks_null(_panels(ks, seed=5, b=0.02, v=0.002, c=0.0005), np.arange(40), reps=50, n_rep=100, scale="raw")
    alike = SB.ks_null(_panels(ks, seed=6, b=1e-6, v=0.01, c=0.003), np.arange(40), reps=50, n_rep=100, scale="raw")
    assert spread["mean"] < 0.8 * iid["mean"]
    assert alike["mean"] == pytest.approx(iid["mean"], abs=0.015)
    assert 0.0 <= spread["p_at_most_target"] <= 1.0


def test_subsample_ks_null_of_a_right_simulator_is_the_iid_one_and_a_shifted_one_fails():
    rng = np.random.default_rng(3)
    real = rng.normal(0.75, 0.1, 400)
    right = rng.normal(0.75, 0.1, (400, 40))  # panels from the law the real values come from
    got = SB.ks_subsample_null(real, right, 40, n_rep=400, seed=1)
    iid = SB.ks_null_iid(40, 40 * 40, n_rep=400, seed=1)
    assert got["mean"] == pytest.approx(iid["mean"], abs=0.012)
    assert got["q95"] <= iid["q95"] + 0.02  # without replacement it errs narrow, never wide
    shifted = SB.ks_subsample_null(real, right + 0.05, 40, n_rep=200, seed=1)
    assert shifted["mean"] > got["mean"] + 0.1
    with pytest.raises(ValueError, match="rows"):
        SB.ks_subsample_null(real, right[:10], 40)
    with pytest.raises(ValueError, match="between 1 and"):
        SB.ks_subsample_null(real, right, 400)
