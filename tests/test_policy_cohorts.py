"""Training renderings of the default cohort (hiseg_sim.policies.cohorts)."""

import numpy as np
import pytest

from hiseg_sim.data.cohort import read_manifest
from hiseg_sim.policies.cohorts import default_renderings, nodule_of, rendering_manifest


def test_manifest_keeps_the_shipped_phantom_and_adds_distinct_seeds():
    shipped = read_manifest()["cohorts"]["default"]["cases"]
    man = rendering_manifest(4)
    cases = man["cohorts"]["renderings"]["cases"]
    assert len(cases) == 4 * len(shipped)
    for i, entry in enumerate(shipped):
        mine = cases[4 * i : 4 * i + 4]
        assert {c["nodule_id"] for c in mine} == {entry["nodule_id"]}
        assert mine[0]["phantom_seed"] == entry["phantom_seed"] and mine[0]["rendering"] == 0
        assert len({c["phantom_seed"] for c in mine}) == 4
    assert rendering_manifest(4) == man  # deterministic
    assert rendering_manifest(6)["cohorts"]["renderings"]["cases"][:4] == cases[:4]  # more renderings extend


def test_no_holdout_and_no_empty_rendering_sets():
    with pytest.raises(ValueError, match="holdout"):
        rendering_manifest(2, cohort="holdout")
    with pytest.raises(ValueError, match="n_renderings"):
        rendering_manifest(0)


def test_renderings_share_the_nodule_but_not_the_chest():
    cases = default_renderings(2, nodules=2)
    assert [c.case_id for c in cases][:2] == [f"{nodule_of(c.case_id)}@r0" for c in cases[:2]]
    assert [nodule_of(c.case_id) for c in cases[:2]] == [nodule_of(c.case_id) for c in cases[2:]]
    a, b = cases[0], cases[2]
    assert a.gt.sum() == b.gt.sum()  # the same real contour, rasterised alike
    assert not np.array_equal(a.volume_hu, b.volume_hu)  # in another synthetic chest
    assert nodule_of("LIDC-IDRI-0078/n1") == "LIDC-IDRI-0078/n1"


def test_extra_holdout_nodules_are_holdout_and_new():
    from hiseg_sim.policies.cohorts import holdout_extra_cases

    cases = holdout_extra_cases(4)
    shipped = {c["nodule_id"] for coh in read_manifest()["cohorts"].values() for c in coh["cases"]}
    ids = [c.case_id for c in cases]
    assert len(set(ids)) == 4 and not set(ids) & shipped
    assert all(801 <= int(i.split("-")[2][:4]) <= 1012 for i in ids)  # LIDC-IDRI-0801..1012 only
    assert [c.case_id for c in holdout_extra_cases(4)] == ids  # deterministic
