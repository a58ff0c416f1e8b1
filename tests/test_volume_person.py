"""A simulated person working through a whole nodule in 3-D: the extent they judge from the image,
the volume workflow in the env (stub segmenter), and the LIDC extent statistics."""

from __future__ import annotations

import numpy as np
import pytest

import hiseg_sim  # noqa: F401
from hiseg_sim.annotators.base import Knowledge
from hiseg_sim.annotators.behaviour.extent import ExtentParams, judge_extent, key_slice, slice_visibility
from hiseg_sim.annotators.behaviour.volume import VolumeParams, plan_volume, slice_looks_right
from hiseg_sim.annotators.harness import make_env, run_episode
from hiseg_sim.annotators.registry import build_annotator
from hiseg_sim.data.lidc_extent import extent_delta_vs_readers, mask_extent, pairwise_extent_delta
from tests.env_support import EnvStubSegmenter, synthetic_cases

pytestmark = pytest.mark.filterwarnings("ignore:agents/calibration/expert_perception.json is missing")

SP = (0.7, 0.7)


def _volume(faint_hu: float = -500.0, n: int = 9, seed: int = 0):
    """Lung (-850 HU, noise SD 25) with a disc nodule (+30 HU) on slices 2..5 and, on slice 6, the
    same disc at ``faint_hu`` (the partial-volume pole); the intent covers slices 2..6 in every case."""
    rng = np.random.default_rng(seed)
    img = np.full((n, 64, 64), -850.0, np.float32) + rng.normal(0, 25, (n, 64, 64)).astype(np.float32)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 <= 49
    intent = np.zeros((n, 64, 64), bool)
    for z in range(2, 6):
        img[z][disc] = 30.0
        intent[z] = disc
    img[6][disc] = faint_hu
    intent[6] = disc
    return img, intent


def _last_slices(img, intent, sd: float, n: int = 200) -> np.ndarray:
    rng = np.random.default_rng(1)
    p = ExtentParams(threshold=0.45, sd=sd)
    return np.array([judge_extent(img, intent, SP, 2, p, rng).last for _ in range(n)])


def test_the_key_slice_is_where_the_intent_is_largest_nearest_the_start():
    _, intent = _volume()
    assert key_slice(intent, 0) == 2 and key_slice(intent, 5) == 5
    assert key_slice(np.zeros_like(intent), 4) == 4


def test_visibility_is_read_from_the_image():
    img, intent = _volume(faint_hu=-500.0)
    vis, lung, core = slice_visibility(img, intent, SP, 3)
    assert vis[3] > 0.9 and lung < -800 and core > -200
    assert 0.2 < vis[6] < 0.8  # the partial-volume slice is faint
    assert vis[0] < 0.15 and vis[8] < 0.15  # lung


def test_a_faint_last_slice_is_missed_more_often_by_a_noisier_perceiver():
    img, intent = _volume(faint_hu=-430.0)  # just above the threshold
    sharp = _last_slices(img, intent, sd=0.02)
    noisy = _last_slices(img, intent, sd=0.3)
    assert (sharp == 6).mean() > 0.9
    assert (noisy < 6).mean() > (sharp < 6).mean() + 0.1


def test_the_extent_follows_the_image_not_the_intent():
    """The same intent (slices 2..6) on three images: the person's last slice moves with what
    slice 6 shows, never read from the slices the intent covers."""
    lasts = {hu: np.median(_last_slices(*_volume(faint_hu=hu), sd=0.05, n=50)) for hu in (-850.0, -430.0, 30.0)}
    assert lasts[-850.0] == 5  # nothing on slice 6: the nodule ends at 5 although the intent goes on
    assert lasts[30.0] == 6
    # an intent that stops at slice 4 does not stop the person where the image still shows nodule
    img, intent = _volume(faint_hu=30.0)
    short = intent.copy()
    short[5:] = False
    ext = judge_extent(img, short, SP, 2, ExtentParams(0.45, 0.02), np.random.default_rng(0))
    assert ext.last >= 5


@pytest.mark.parametrize(
    "what, extends",
    [("cap", True), ("vessel", False), ("wall", False)],
)
def test_past_the_intent_only_a_blob_of_its_own_extends_the_nodule(what, extends):
    """Slice 6, past the intent (2..5), carries a small solid cap inside the outline above it, a
    vessel (3 mm wide) crossing that outline, or the chest wall reaching into it. All three fill
    the brightest half of the footprint; only the cap reads as the nodule going on."""
    img, intent = _volume(faint_hu=-850.0)
    intent[6] = False
    yy, xx = np.mgrid[:64, :64]
    if what == "cap":
        img[6][(yy - 32) ** 2 + (xx - 32) ** 2 <= 16] = 30.0
    elif what == "vessel":
        img[6][np.abs(yy - 32) <= 2] = 30.0
    else:
        img[6][yy >= 31] = 30.0
    vis, _, _ = slice_visibility(img, intent, SP, 3)
    assert (vis[6] > 0.6) == extends, vis[6]
    ext = judge_extent(img, intent, SP, 2, ExtentParams(0.6, 0.02), np.random.default_rng(0))
    assert ext.last == (6 if extends else 5)


def test_the_plan_outlines_what_is_seen_on_slices_beyond_the_intent():
    img, intent = _volume(faint_hu=30.0)
    short = intent.copy()
    short[5:] = False
    plan = plan_volume(img, short, SP, 2, VolumeParams(extent_sd=0.02), np.random.default_rng(0))
    assert plan.last >= 5 and plan.target[5].any()  # the blob seen there
    assert not plan.target[: plan.first].any() and not plan.target[plan.last + 1 :].any()
    assert (plan.target[5] & (img[5] > -300)).sum() >= 0.8 * plan.target[5].sum()


def test_a_slice_a_pixel_off_looks_right_and_one_that_leaks_does_not():
    yy, xx = np.mgrid[:64, :64]
    target = (yy - 32) ** 2 + (xx - 32) ** 2 <= 36
    off = (yy - 32) ** 2 + (xx - 33) ** 2 <= 36
    leak = target | ((np.abs(yy - 32) <= 3) & (xx > 32) & (xx < 50))
    p = VolumeParams(slice_tolerance_mm=1.0)
    assert slice_looks_right(off, target, 0.5, SP, p, 0.9)
    assert not slice_looks_right(leak, target, 0.5, SP, p, 0.9)
    assert slice_looks_right(leak, target, 0.95, SP, p, 0.9)  # it looks good enough


def test_volume_params_are_checked():
    with pytest.raises(ValueError, match="extent_sd"):
        VolumeParams(extent_sd=-1)
    with pytest.raises(ValueError, match="review"):
        VolumeParams(review=2)
    assert build_annotator("expert_radiologist").profile.volume.review == 1


def _slices_shown(trace) -> list[int]:
    """The slab slice in view after each step, followed from the moves."""
    z = trace[0]["start_slice"] - trace[0]["viewport"]["z0"]
    out = []
    for t in trace:
        a = t["action"]
        if not t["invalid_action"]:
            z += {"next": 1, "prev": -1}.get(a["kind"], 0) + (a.get("direction", 0) if a["kind"] == "propagate" else 0)
        out.append(z)
    return out


@pytest.fixture(scope="module")
def env3d():
    e = make_env("hiseg_sim/NoduleSeg3D-v0", cases=synthetic_cases(), segmenter=EnvStubSegmenter(), max_slices=16)
    yield e
    e.close()


def test_a_person_propagates_checks_both_ends_reviews_and_accepts(env3d):
    a = build_annotator("expert_radiologist")
    r = run_episode(env3d, a, case_id=synthetic_cases()[0].case_id, seed=0)
    s = r.summary
    kinds = [t["action"]["kind"] for t in r.trace]
    assert s["accepted"] and not s["gave_up"] and kinds[-1] == "accept"
    first, last = s["extent_first"], s["extent_last"]
    n = last - first + 1
    assert n >= 3
    assert kinds.count("propagate") >= n - 2  # propagated, not prompted slice by slice
    prompted = {t["prompt"]["slice"] for t in r.trace if t["prompt"] and t["action"]["kind"] in ("point", "box")}
    assert len(prompted) < n  # only some slices needed a prompt of their own
    seen = _slices_shown(r.trace)
    assert max(seen) == last + 1 and min(seen) == first - 1  # scrolled one past each end
    assert seen[-2] == last  # the review ends at the top, then accept
    assert s["final_dice"] > 0.8


def test_inspection_and_review_cost_time(env3d):
    case = synthetic_cases()[0].case_id
    fast = build_annotator("expert_radiologist", **{"volume.inspect_slice_s": 0.0, "volume.review": 0})
    slow = build_annotator("expert_radiologist", **{"volume.inspect_slice_s": 1.0})
    r_fast = run_episode(env3d, fast, case_id=case, seed=0)
    r_slow = run_episode(env3d, slow, case_id=case, seed=0)
    assert r_slow.summary["seconds_total"] > r_fast.summary["seconds_total"] + 5
    assert r_slow.summary["n_actions"] > r_fast.summary["n_actions"]  # the review scroll


def test_the_person_never_reads_the_ground_truth_in_3d():
    """A Knowledge without ground truth is all the 3-D person needs; the plan depends on the image."""
    img, intent = _volume(faint_hu=30.0)
    a = build_annotator("expert_radiologist")
    k = Knowledge("t", img, (1.25, *SP), intent=intent, three_d=True, start_slice=0)
    a.begin_case(k, np.random.default_rng(0))
    assert a._plan.last == 6 and a._plan.key == 2
    k2 = Knowledge("t", _volume(faint_hu=-850.0)[0], (1.25, *SP), intent=intent, three_d=True, start_slice=0)
    a.begin_case(k2, np.random.default_rng(0))
    assert a._plan.last == 5


def test_lidc_extent_statistics():
    m = np.zeros((6, 3, 3), bool)
    m[2:5, 1, 1] = True
    assert mask_extent(m) == (2, 4) and mask_extent(np.zeros_like(m)) is None
    readers = [(2, 5), (2, 5), (3, 6)]
    real = pairwise_extent_delta(readers)["both"]
    typical = extent_delta_vs_readers(2, 5, readers)["both"]
    outlier = extent_delta_vs_readers(0, 9, readers)["both"]
    assert typical < real < outlier
    with pytest.raises(ValueError):
        pairwise_extent_delta([(1, 2)])


def test_the_box_bound_drops_with_a_reader_who_saw_the_nodule_elsewhere():
    """``volume_box_bound`` on the stub segmenter (TEST STUB: it marks bright pixels inside the
    box): the reference's own boxes find the sphere; a 'reader' whose mask is the reference
    scores the same; one whose mask sits 6 mm off along x boxes mostly lung and scores lower;
    one who outlined only the middle slices misses the poles."""
    import dataclasses

    from hiseg_sim.demo import volume_box_bound

    case = synthetic_cases()[0]
    shifted = np.roll(case.gt, int(round(6.0 / 0.7)), axis=2)
    middle = case.gt.copy()
    zs = np.flatnonzero(case.gt.reshape(len(case.gt), -1).any(axis=1))
    middle[: zs[0] + 3] = False
    middle[zs[-1] - 2 :] = False
    cases = [dataclasses.replace(case, reader_masks=(case.gt,)), dataclasses.replace(case, case_id="shifted", reader_masks=(shifted,)),
             dataclasses.replace(case, case_id="middle", reader_masks=(middle,))]  # fmt: skip
    env = make_env("hiseg_sim/NoduleSeg3D-v0", cases=cases, segmenter=EnvStubSegmenter(), max_slices=16)
    try:
        ref = volume_box_bound(env, cases[0])
        same = volume_box_bound(env, cases[0], source="readers")
        off = volume_box_bound(env, cases[1], source="readers")
        short = volume_box_bound(env, cases[2], source="readers")
        with pytest.raises(ValueError, match="source must be"):
            volume_box_bound(env, cases[0], source="oracle")
        with pytest.raises(ValueError, match="no readers' masks"):
            volume_box_bound(env, case, source="readers")
    finally:
        env.close()
    assert ref > 0.8 and same == pytest.approx(ref)
    assert off < ref - 0.2 and short < ref - 0.05, (ref, off, short)
