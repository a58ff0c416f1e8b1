"""Cohort manifests: the shipped manifest, stratified drawing, rebuilding cases, clear errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from hiseg_sim.data import cohort as C
from hiseg_sim.data.case import Case
from tests.test_phantom import fake_nodule

TEXTURES = {1: "ground-glass", 2: "ground-glass", 3: "part-solid", 4: "solid", 5: "solid"}


class FakeDb:
    """What the cohort code uses of LidcDatabase: iter_nodules(split, min_readers) and get_nodule(id)."""

    def __init__(self, n_per_split=60, seed=0):
        rng = np.random.default_rng(seed)
        self.nodules = {}
        for split, base in (("calibration", 1), ("holdout", 801)):
            for i in range(n_per_split):
                pid = f"LIDC-IDRI-{base + i // 2:04d}"
                nid = f"{pid}/n{i % 2 + 1}"
                nod = fake_nodule(
                    nid,
                    radius_mm=float(rng.uniform(1.2, 14)),
                    texture=int(rng.integers(1, 6)),
                    n_readers=int(rng.integers(1, 5)),
                )
                nod.split = split
                nod.scan = SimpleNamespace(**{**nod.scan.__dict__, "patient_id": pid})
                self.nodules[nid] = nod

    def iter_nodules(self, split=None, min_readers=1, **_):
        for nod in self.nodules.values():
            if nod.split == split and nod.n_readers >= min_readers:
                yield nod

    def get_nodule(self, nodule_id):
        if nodule_id not in self.nodules:
            raise KeyError(f"no nodule {nodule_id!r}")
        return self.nodules[nodule_id]


@pytest.fixture(scope="module")
def fake_db():
    return FakeDb()


@pytest.fixture(scope="module")
def shipped():
    return C.read_manifest()


# ---------------------------------------------------------------------- the shipped manifest


def test_shipped_manifest_shape(shipped):
    assert shipped["version"] == 1 and shipped["generator"] == "hiseg_sim.data.phantom"
    assert set(shipped["cohorts"]) >= {"default", "holdout"}
    assert shipped["cohorts"]["default"]["split"] == "calibration"
    assert shipped["cohorts"]["holdout"]["split"] == "holdout"
    assert C.manifest_path().name == C.MANIFEST_NAME


@pytest.mark.parametrize("name", ["default", "holdout"])
def test_shipped_cohort_matches_its_stratification(shipped, name):
    from hiseg_sim.data.lidc import split_of

    coh = shipped["cohorts"][name]
    cases = coh["cases"]
    assert len(cases) == coh["n"] == sum(coh["strata"].values())
    ids = [c["nodule_id"] for c in cases]
    assert len(set(ids)) == len(ids)
    counts = {}
    for c in cases:
        assert split_of(c["nodule_id"].split("/")[0]) == coh["split"]
        assert c["n_readers"] >= C.MIN_READERS and c["diameter_mm"] >= C.MIN_DIAMETER_MM
        assert c["size_band"] == C.size_band(c["diameter_mm"]) and c["texture_group"] == TEXTURES[c["texture"]]
        key = f"{c['size_band']}|{c['texture_group']}"
        counts[key] = counts.get(key, 0) + 1
    assert counts == {k: v for k, v in coh["strata"].items() if v}
    assert len(counts) == 12  # every size band x texture group is represented
    assert max(counts.values()) - min(counts.values()) <= 1  # balanced


def test_default_cohort_loads_from_the_lidc_database(shipped):
    pytest.importorskip("hiseg_sim.data.lidc")
    cases = C.load_cohort("default", limit=2)
    entries = shipped["cohorts"]["default"]["cases"][:2]
    assert [c.case_id for c in cases] == [e["nodule_id"] for e in entries]
    for c, e in zip(cases, entries):
        assert isinstance(c, Case) and c.meta["seed"] == e["phantom_seed"] and c.meta["cohort"] == "default"
        assert c.meta["split"] == "calibration" and abs(c.meta["diameter_mm"] - e["diameter_mm"]) < 0.01


@pytest.mark.slow
def test_shipped_manifest_is_what_build_manifest_makes(shipped):
    assert C.build_manifest() == json.loads(json.dumps(shipped))


# ------------------------------------------------------------------------ building, loading


def test_build_manifest_is_deterministic_and_stratified(fake_db):
    a = C.build_manifest(n_default=12, n_holdout=6, seed=0, db=fake_db)
    b = C.build_manifest(n_default=12, n_holdout=6, seed=0, db=fake_db)
    assert a == b
    c = C.build_manifest(n_default=12, n_holdout=6, seed=1, db=fake_db)
    assert [x["nodule_id"] for x in c["cohorts"]["default"]["cases"]] != [
        x["nodule_id"] for x in a["cohorts"]["default"]["cases"]
    ] or c != a
    for name, split in (("default", "calibration"), ("holdout", "holdout")):
        for case in a["cohorts"][name]["cases"]:
            nod = fake_db.get_nodule(case["nodule_id"])
            assert nod.split == split and nod.n_readers >= 2 and case["diameter_mm"] >= 3.0
    assert len(a["cohorts"]["default"]["cases"]) == 12


def test_allocate_fills_evenly_and_respects_availability():
    assert C._allocate(7, {"a": 10, "b": 1, "c": 10}) == {"a": 3, "b": 1, "c": 3}
    assert sum(C._allocate(40, {str(i): 100 for i in range(12)}).values()) == 40
    assert C._allocate(5, {"a": 2, "b": 1}) == {"a": 2, "b": 1}


def test_write_read_roundtrip_and_load(fake_db, tmp_path):
    man = C.build_manifest(n_default=4, n_holdout=2, seed=0, db=fake_db)
    path = C.write_manifest(man, tmp_path / "m.json")
    assert C.read_manifest(path) == json.loads(json.dumps(man))
    it = C.iter_cohort("holdout", path, db=fake_db)
    assert not isinstance(it, list)
    first = next(it)
    assert first.case_id == man["cohorts"]["holdout"]["cases"][0]["nodule_id"]
    cases = C.load_cohort("default", man, limit=3, db=fake_db)
    assert len(cases) == 3 and all(isinstance(c, Case) for c in cases)
    seeds = [c["phantom_seed"] for c in man["cohorts"]["default"]["cases"][:3]]
    assert [c.meta["seed"] for c in cases] == seeds


# --------------------------------------------------------------------------------- errors


def _minimal(**cohort):
    return {
        "version": 1,
        "cohorts": {"default": {"cases": [{"nodule_id": "LIDC-IDRI-0001/n1", "phantom_seed": 0}], **cohort}},
    }


def test_errors_name_the_problem(fake_db, tmp_path):
    with pytest.raises(C.ManifestError, match="missing top-level key 'cohorts'"):
        C.read_manifest({"version": 1})
    with pytest.raises(C.ManifestError, match="version"):
        C.read_manifest({**_minimal(), "version": 2})
    bad = _minimal()
    del bad["cohorts"]["default"]["cases"][0]["phantom_seed"]
    with pytest.raises(C.ManifestError, match="case 0 is missing 'phantom_seed'"):
        C.read_manifest(bad)
    bad = _minimal()
    bad["cohorts"]["default"]["cases"][0]["phantom_seed"] = -1
    with pytest.raises(C.ManifestError, match="phantom_seed"):
        C.read_manifest(bad)
    with pytest.raises(C.ManifestError, match="unknown cohort 'nope'.*default"):
        C.load_cohort("nope", _minimal(), db=fake_db)
    unknown = _minimal()
    unknown["cohorts"]["default"]["cases"][0]["nodule_id"] = "LIDC-IDRI-0999/n7"
    with pytest.raises(C.ManifestError, match="unknown nodule id 'LIDC-IDRI-0999/n7'"):
        C.load_cohort("default", unknown, db=fake_db)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(C.ManifestError, match="not valid JSON"):
        C.read_manifest(broken)
    with pytest.raises(C.ManifestError, match="no cohort manifest"):
        C.read_manifest(tmp_path / "missing.json")


# ---------------------------------------------------------------------- the real model


@pytest.mark.integration
@pytest.mark.slow
def test_litemedsam_tight_box_on_default_cohort(shipped):
    """A tight box (gt bbox on the key slice + 2 px) gives LiteMedSAM a median Dice >= 0.80."""
    from hiseg_sim import segmenters as S

    entries = shipped["cohorts"]["default"]["cases"]
    # one nodule from each texture group and the size extremes: five encodes, about 10 s
    picks, seen = [], set()
    for e in sorted(entries, key=lambda e: e["nodule_id"]):
        key = (e["texture_group"], e["size_band"] in ("<6", ">=20"))
        if key not in seen and len(picks) < 5:
            seen.add(key)
            picks.append(e)
    man = {"version": 1, "cohorts": {"pick": {"cases": picks}}}
    seg = S.build("litemedsam")
    dice = []
    for case in C.iter_cohort("pick", man):
        k = case.key_slice
        g = case.gt[k]
        ys, xs = np.nonzero(g)
        box = [xs.min() - 2, ys.min() - 2, xs.max() + 2, ys.max() + 2]
        pred = seg.decode(seg.encode(case.volume_hu[k]), S.Prompt(box=box)).mask
        dice.append(2 * (pred & g).sum() / (pred.sum() + g.sum()))
    assert np.median(dice) >= 0.80, dice


def test_sample_manifest_draws_each_lidc_band_from_its_split_with_three_readers():
    from hiseg_sim.data.cohort import SAMPLE_COHORT, read_manifest, sample_manifest
    from hiseg_sim.data.lidc import LidcDatabase, patient_number

    db = LidcDatabase()
    some = [f"LIDC-IDRI-{i:04d}" for i in range(1, 101)]  # a part of the split, to keep it quick
    man = sample_manifest(3, seed=1, db=db, patients=some)
    read_manifest(man)  # a valid manifest
    cases = man["cohorts"][SAMPLE_COHORT]["cases"]
    assert len(cases) == 12 and man["cohorts"][SAMPLE_COHORT]["split"] == "calibration"
    bands = [C.size_band(db.get_nodule(c["nodule_id"]).lidc_diameter_mm) for c in cases]
    assert sorted(bands) == sorted(["<6", "6-10", "10-20", ">=20"] * 3)
    assert all(c["n_readers"] >= 3 and patient_number(c["nodule_id"].split("/")[0]) <= 800 for c in cases)
    assert sample_manifest(3, seed=1, db=db, patients=some) == man
    assert sample_manifest(3, seed=2, db=db, patients=some) != man
    with pytest.raises(ValueError, match="per_band"):
        sample_manifest(0, db=db)
