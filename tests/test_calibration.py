"""Calibration of the expert's perception against LIDC readers: schema, and that the readers'
masks enter only the objective, never the generation."""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np
import pytest

from hiseg_sim.annotators.behaviour import calibration as C
from hiseg_sim.annotators.behaviour.perception import EXPERT_PARAMS_PATH, PerceptionParams, expert_params

BANDS = ["<6", "6-10", "10-20", ">=20"]


def ball(shape, centre, r_vox):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= r_vox**2


class _Annotation:
    def __init__(self, texture):
        self.ratings = {"texture": texture}


class FakeNodule:
    """Nodule-like: records every read of ``reader_masks``."""

    def __init__(self, nodule_id, consensus, readers, spacing=(1.5, 0.7, 0.7), diameter_mm=8.0):
        self.nodule_id, self.consensus, self._readers = nodule_id, consensus, readers
        self.spacing_zyx, self.diameter_mm = spacing, diameter_mm
        self.n_readers = len(readers)
        self.ratings = {"texture": 5.0}
        self.annotations = tuple(_Annotation(5) for _ in readers)
        self.reads = 0

    @property
    def reader_masks(self):
        self.reads += 1
        return self._readers


class FakeDb:
    def __init__(self, nodules):
        self.nodules = nodules

    def iter_nodules(self, split, min_readers=1, progress=False, limit=None, patients=None):
        yield from self.nodules[:limit]


def _fake_pair():
    shape = (9, 40, 40)
    cons = ball(shape, (4, 20, 20), 6)
    readers_a = (ball(shape, (4, 20, 20), 6), ball(shape, (4, 20, 21), 6), ball(shape, (4, 21, 20), 5))
    readers_b = (ball(shape, (4, 20, 20), 7), ball(shape, (4, 16, 20), 4), ball(shape, (3, 20, 24), 6))
    return FakeNodule("LIDC-IDRI-9998/n1", cons, readers_a), FakeNodule("LIDC-IDRI-9999/n1", cons, readers_b)


def test_agreement_stats():
    a = ball((5, 20, 20), (2, 10, 10), 4)
    s = C.agreement_stats([a, a, a], a, 1.5)
    assert s == {"dice": 1.0, "z_end_mm": 0.0, "log_volume": 0.0, "pairs": (1.0, 1.0, 1.0), "volume_cv": 0.0}
    b = np.zeros_like(a)
    b[1:3] = a[1:3]  # drops the top slices
    s = C.agreement_stats([a, b], a, 2.0)
    assert 0 < s["dice"] < 1 and s["z_end_mm"] > 0 and s["log_volume"] < 0
    assert s["pairs"] == (s["dice"],)
    va, vb = float(a.sum()), float(b.sum())
    assert s["volume_cv"] == pytest.approx(np.std([va, vb], ddof=1) / np.mean([va, vb]))


def test_generation_never_reads_reader_masks():
    """The real readers' masks are read once, at load time, for the objective's statistics; the
    simulated panels depend on the reference only: two nodules with the same consensus and
    different readers get identical simulations (and different real statistics)."""
    na, nb = _fake_pair()
    nodules = C.load_calibration_set("calibration", db=FakeDb([na, nb]))
    reads = (na.reads, nb.reads)
    assert all(r >= 1 for r in reads)
    fields = {f.name for f in dataclasses.fields(C.CalibrationNodule)}
    assert not {"reader_masks", "readers", "nodule"} & fields
    params = C.START
    # same id for the draws: rename b's record as a's so the common random numbers coincide
    nb_as_a = dataclasses.replace(nodules[1], nodule_id=nodules[0].nodule_id)
    sims = C.simulate_set([nodules[0], nb_as_a], params, reps=3, seed=0)
    assert (na.reads, nb.reads) == reads  # simulation read no reader mask
    assert sims[0] == sims[1]
    assert nodules[0].real != nodules[1].real
    # the generation function is handed the reference geometry, texture, k and the log difficulty
    # the nodule's ratings predict (a number): nothing else
    sig = list(inspect.signature(C.simulate_panel).parameters)
    assert sig == ["geometry", "texture", "k", "params", "rng", "draws", "difficulty_z", "difficulty_log"]


def test_reader_reference_uses_one_reader():
    na, _ = _fake_pair()
    (rec,) = C.load_calibration_set("calibration", reference="reader", db=FakeDb([na]))
    ref = rec.geometry.to_full(rec.geometry.phi > 0)
    assert any(np.array_equal(ref, m) for m in na._readers)


def test_simulate_panel_with_rng_is_deterministic():
    na, _ = _fake_pair()
    (rec,) = C.load_calibration_set("calibration", db=FakeDb([na]))
    a = C.simulate_panel(rec.geometry, 5, 3, C.START, rng=np.random.default_rng(1))
    b = C.simulate_panel(rec.geometry, 5, 3, C.START, rng=np.random.default_rng(1))
    assert len(a) == 3 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_a_one_pass_simulation_keeps_no_draws_and_a_shared_bank_reuses_them(monkeypatch):
    na, nb = _fake_pair()
    recs = C.load_calibration_set("calibration", db=FakeDb([na, nb]))
    bank = C._DrawBank(recs, reps=3, seed=4)
    shared = C.simulate_set(recs, C.START, reps=3, seed=4, bank=bank)
    kept = [bank._draws[i] for i in range(len(recs))]
    assert all(d is not None for d in kept)  # a bank handed in keeps its draws for the next call
    assert C.simulate_set(recs, C.START, reps=3, seed=4, bank=bank) == shared
    assert all(bank._draws[i] is kept[i] for i in range(len(recs)))  # not redrawn
    # a bank made inside is used once: same numbers, draws dropped per nodule (memory stays flat)
    made = []

    class Recorded(C._DrawBank):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(C, "_DrawBank", Recorded)
    assert C.simulate_set(recs, C.START, reps=3, seed=4) == shared
    assert len(made) == 1 and all(d is None for d in made[0]._draws)
    bank.release(0)
    assert bank._draws[0] is None
    assert C.simulate_set(recs, C.START, reps=3, seed=4, bank=bank) == shared  # rebuilt identically


@pytest.fixture(scope="module")
def lidc_db():
    from hiseg_sim.data.lidc import LidcDatabase

    try:
        return LidcDatabase()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def test_fit_on_a_small_subset_returns_the_schema(lidc_db, tmp_path):
    out = tmp_path / "fit.json"
    params, report = C.fit_expert(limit=16, reps=1, maxfev=8, corr_grid=(1.0,), save=out, db=lidc_db)
    assert isinstance(params, PerceptionParams)
    saved = json.loads(out.read_text())
    assert PerceptionParams.from_dict(saved["params"]) == PerceptionParams.from_dict(report["params"])
    prov = saved["provenance"]
    for key in ("split", "n_nodules", "objective", "date", "code_version", "runtime_s", "reference"):
        assert key in prov
    assert prov["split"] == "calibration" and prov["n_nodules"] == 16
    assert set(saved["calibration_fit"]["by_size"]) == set(BANDS)
    with pytest.raises(ValueError, match="holdout"):
        C.fit_expert(split="holdout", save=False)


def test_evaluate_schema(lidc_db):
    res = C.evaluate("holdout", C.START, reps=2, limit=12, db=lidc_db)
    assert list(res) == ["real_pairwise_dice", "sim_pairwise_dice", "ks", "by_size"]
    assert list(res["by_size"]) == BANDS
    for band in res["by_size"].values():
        assert set(band) == {"real", "sim", "ks", "n", "gap_ci95"}
        if band["n"] >= 2:  # the interval holds the point estimate of sim - real
            lo, hi = band["gap_ci95"]
            assert lo <= band["sim"] - band["real"] + 1e-3 and band["sim"] - band["real"] - 1e-3 <= hi
    assert sum(b["n"] for b in res["by_size"].values()) == 12
    assert 0 < res["real_pairwise_dice"] <= 1 and 0 < res["sim_pairwise_dice"] <= 1
    json.dumps(res)


def test_saved_expert_fit_has_provenance():
    if not EXPERT_PARAMS_PATH.is_file():
        pytest.skip("no saved expert fit yet")
    saved = json.loads(EXPERT_PARAMS_PATH.read_text())
    assert saved["provenance"]["split"] == "calibration"
    assert expert_params() == PerceptionParams.from_dict(saved["params"])


@pytest.mark.slow
def test_saved_fit_on_the_holdout(lidc_db):
    """The issue's target on the holdout (about 2 min): mean pairwise Dice within 0.03 of the real
    readers' and KS <= 0.15 in every size band, with the report's defaults (100 panels per
    nodule, seed 0)."""
    if not EXPERT_PARAMS_PATH.is_file():
        pytest.skip("no saved expert fit yet")
    res = C.evaluate("holdout", db=lidc_db)
    assert abs(res["sim_pairwise_dice"] - res["real_pairwise_dice"]) <= 0.03
    assert set(res["by_size"]) == set(BANDS)
    for name, band in res["by_size"].items():
        assert abs(band["sim"] - band["real"]) <= 0.03, name
        assert band["ks"] <= 0.15, name


def test_gap_interval_is_a_bootstrap_over_nodules():
    from types import SimpleNamespace

    real = [0.8, 0.7, 0.9, 0.75]
    nods = [SimpleNamespace(real={"dice": r}) for r in real]
    shifted = [[{"dice": r + 0.05}, {"dice": r + 0.15}] for r in real]  # replicates average to +0.1
    lo, hi = C.gap_interval(nods, shifted)
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)
    outlier = nods + [SimpleNamespace(real={"dice": 0.1})]
    lo2, hi2 = C.gap_interval(outlier, shifted + [[{"dice": 0.8}]])
    assert lo2 == pytest.approx(0.1) and hi2 > 0.3  # one reader pair far off the model widens the band
    assert C.gap_interval(nods[:1], shifted[:1]) is None


def _fake(nid, diameter, texture, real):
    return C.CalibrationNodule(
        nid,
        C.size_band(diameter),
        diameter,
        2,
        texture,
        "consensus",
        None,
        {"dice": real, "z_end_mm": 0.0, "log_volume": 0.0},
    )


def test_texture_gap_is_taken_below_and_above_10_mm():
    # small: solid 0.8 vs ground glass 0.7 (real gap 0.1); large: solid 0.9 vs ground glass 0.5 (0.4)
    nods = [_fake("s1", 5, 5, 0.8), _fake("g1", 5, 1, 0.7), _fake("s2", 25, 5, 0.9), _fake("g2", 25, 2, 0.5)]
    sims = [[{"dice": d, "z_end_mm": 0.0, "log_volume": 0.0}] for d in (0.8, 0.6, 0.9, 0.8)]
    e = C.compare(nods, sims)["extra"]
    assert e["texture_gap_by_size"]["<10"] == pytest.approx({"real": 0.1, "sim": 0.2, "n_ggo": 1})
    assert e["texture_gap_by_size"][">=10"] == pytest.approx({"real": 0.4, "sim": 0.1, "n_ggo": 1})
    terms = C._objective_terms(C.compare(nods, sims))
    assert terms["texture_gap[<10]"] == pytest.approx((0.1 / 0.02) ** 2)
    assert terms["texture_gap[>=10]"] == pytest.approx((0.3 / 0.02) ** 2)
