"""The person matters: what a simulated person intends carries through LiteMedSAM into the final mask.

On default-cohort phantoms whose nodule has a vessel attached (the phantom labels it ``3`` in
``meta["anatomy"]``), a person whose perception takes the attached vessel in
(``perception.p_include_vessel`` 1) ends with vessel in the accepted mask far more often than the
same person, on the same seeds, whose perception leaves it out (0). Real LiteMedSAM, 2-D env. And
the groups report's section on it: the correlation of final Dice with intent Dice per group.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

import hiseg_sim  # noqa: F401
from hiseg_sim.annotators.behaviour.perception import expert_params
from hiseg_sim.annotators.harness import make_env, run_episode
from hiseg_sim.annotators.registry import build_annotator
from hiseg_sim.data.nodule_features import ATTACHED_VESSEL
from hiseg_sim.env.viewport import crop2d
from hiseg_sim.studies.groups import _intent_section, _pearson_boot

SEEDS = (0, 1)
#: cases used: on the key slice (the 2-D view), the attached vessel's pixels beyond the nodule and
#: within reach of it (``vessel_reach_mm``: how far from the nodule a person takes a vessel in)
#: cover at least this share of the nodule's area, and MIN_VESSEL_PX: a vessel that changes the
#: outline, not a voxel grazing it
MIN_VESSEL_SHARE = 0.25
MIN_VESSEL_PX = 20
#: at most this many such cases (the first of the default cohort), to keep the test short
MAX_CASES = 8
#: the accepted mask "has the vessel" when it covers at least this many of its pixels beyond
#: the nodule (grown by one pixel, so a boundary that wanders a pixel out does not count)
HIT_PX = 5


def _vessel_beyond_nodule(case, z: int) -> np.ndarray:
    anat = case.meta["anatomy"][z]
    grown = ndimage.binary_dilation(case.gt[z], np.ones((3, 3), bool))
    return (anat == ATTACHED_VESSEL) & ~grown


def _vessel_shows(case) -> bool:
    z = case.key_slice
    reach = expert_params().vessel_reach_mm
    near = ndimage.distance_transform_edt(~case.gt[z], sampling=case.spacing_zyx[1:]) <= reach
    px = int((_vessel_beyond_nodule(case, z) & near).sum())
    return px >= max(MIN_VESSEL_PX, MIN_VESSEL_SHARE * int(case.gt[z].sum()))


@pytest.fixture(scope="module")
def vessel_env(litemedsam):
    from hiseg_sim.data.cohort import load_cohort

    cases = [c for c in load_cohort("default") if c.meta.get("vessel_attached") and _vessel_shows(c)][:MAX_CASES]
    env = make_env("hiseg_sim/NoduleSeg2D-v0", cases=cases, segmenter=litemedsam, max_episode_steps=21)
    yield env, cases
    env.close()


def _vessel_px_in_final(env, case) -> int:
    u = env.unwrapped
    vp = u.viewport
    vessel = crop2d(_vessel_beyond_nodule(case, vp.z0), vp.y0, vp.x0, vp.size, fill=False)
    return int((u.current_mask() & vessel).sum())


def _run(env, cases, p: float) -> list[int]:
    out = []
    for case in cases:
        for seed in SEEDS:
            person = build_annotator("expert_radiologist", **{"perception.p_include_vessel": p})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                run_episode(env, person, case_id=case.case_id, seed=seed)
            out.append(_vessel_px_in_final(env, case))
    return out


@pytest.mark.integration
@pytest.mark.slow
def test_a_person_who_takes_the_vessel_in_ends_with_it(vessel_env):
    env, cases = vessel_env
    assert len(cases) >= 3, "the default cohort should hold several nodules with a visible attached vessel"
    include = _run(env, cases, 1.0)
    exclude = _run(env, cases, 0.0)
    rate_in = float(np.mean([v >= HIT_PX for v in include]))
    rate_out = float(np.mean([v >= HIT_PX for v in exclude]))
    print(
        f"\nvessel in the final mask (>= {HIT_PX} px beyond the nodule), {len(include)} episodes each on "
        f"{len(cases)} cases: intent includes it {rate_in:.2f} (median {np.median(include):.0f} px), "
        f"intent excludes it {rate_out:.2f} (median {np.median(exclude):.0f} px)"
    )
    assert rate_in >= rate_out + 0.4
    assert rate_in >= 2.0 * rate_out


def _episodes(rng, n_cases=30, reps=2):
    """People episodes: in ``expert_radiologist`` the final Dice follows the intent's, in
    ``non_medical`` it does not (the image decides)."""
    rows = []
    for g, follows in (("expert_radiologist", True), ("non_medical", False)):
        for c in range(n_cases):
            for r in range(reps):
                intent = float(rng.uniform(0.5, 0.95))
                final = intent + rng.normal(0, 0.03) if follows else float(rng.uniform(0.5, 0.95))
                rows.append(
                    {"group": g, "case_id": f"c{c}", "replicate": r, "intent_dice": intent, "final_dice": final}
                )
    rows.append({"group": "robot_ritm", "case_id": "c0", "replicate": 0, "intent_dice": None, "final_dice": 0.9})
    return pd.DataFrame(rows)


def test_the_report_tells_a_person_who_carries_through_from_one_who_does_not():
    e = _episodes(np.random.default_rng(0))
    sec, out = _intent_section(e, n_boot=500, seed=0)
    follows, ignores = out["groups"]["expert_radiologist"], out["groups"]["non_medical"]
    assert follows["lo"] > 0.8 and ignores["lo"] < 0 < ignores["hi"]
    assert follows["lo"] <= follows["r"] <= follows["hi"] and follows["n"] == 60 and follows["cases"] == 30
    assert "robot_ritm" not in out["groups"] and out["pooled"]["n"] == 120
    assert ignores["r"] < out["pooled"]["r"] < follows["r"]
    table = sec.tables[0][1]
    assert list(table["group"])[-1] == "all people groups (pooled)"


def test_pearson_interval_resamples_cases_whole():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    y = 0.5 * x + rng.normal(size=200)
    r, lo, hi = _pearson_boot(x, y, np.arange(200) // 2, 1000, 0)
    assert r == pytest.approx(np.corrcoef(x, y)[0, 1]) and lo < r < hi
    shared = np.repeat(rng.normal(size=10), 20)  # ten cases, each episode a copy: ten points, not 200
    _, lo10, hi10 = _pearson_boot(shared, shared + rng.normal(0, 0.5, 200), np.arange(200) // 20, 1000, 0)
    _, lo200, hi200 = _pearson_boot(shared, shared + rng.normal(0, 0.5, 200), np.arange(200), 1000, 0)
    assert hi10 - lo10 > hi200 - lo200
    assert np.isnan(_pearson_boot([0.5, 0.6], [0.5, 0.7], ["a", "b"], 100, 0)[0])
