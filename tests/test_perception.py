"""Perception: the intended mask from a reference, its boundary model and its semantic errors."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from hiseg_sim.annotators.behaviour import perception_errors as E
from hiseg_sim.annotators.behaviour.perception import (
    PerceptionParams,
    ReferenceGeometry,
    case_difficulty,
    estimate_texture,
    intended_mask,
    sample_intents,
    shift_scale,
)
from hiseg_sim.metrics import dice

SP = (1.5, 0.7, 0.7)
QUIET = PerceptionParams(bias_sd_mm=0.0, shift_sd_mm=0.0, z_sd_mm=0.0)  # no boundary noise at all


def ball(shape, centre, radius_mm, spacing=SP):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, spacing)) <= radius_mm**2


@pytest.fixture(scope="module")
def scene():
    """A hand-built (9, 72, 72) chest crop at (1.5, 0.7, 0.7) mm: lung with noise, and the pieces
    each semantic error needs (a 4-mm solid nodule, a vessel leaving it, a chest wall, a GGO
    nodule with a solid core, a separate blob)."""
    rng = np.random.default_rng(0)
    shape = (9, 72, 72)
    zz, yy, xx = np.mgrid[:9, :72, :72]
    lung = np.full(shape, -870.0, np.float32) + rng.normal(0, 20, shape).astype(np.float32)
    nod = ball(shape, (4, 36, 36), 4.0)
    vessel = (((zz - 4) * 1.5) ** 2 + ((yy - 36) * 0.7) ** 2 <= 1.0) & (xx > 36)
    wall = xx * 0.7 >= 36 * 0.7 + 4.0  # touches the nodule on its +x side
    core = ball(shape, (4, 36, 36), 2.0)
    blob = ball(shape, (4, 15, 55), 2.5)
    with_vessel = lung.copy()
    with_vessel[vessel] = 40.0
    with_vessel[nod] = 30.0
    at_wall = lung.copy()
    at_wall[wall] = 40.0
    at_wall[nod] = 30.0
    part_solid = lung.copy()
    part_solid[nod] = -600.0
    part_solid[core] = 20.0
    two_blobs = lung.copy()
    two_blobs[nod] = 30.0
    two_blobs[blob] = 40.0
    plain = lung.copy()
    plain[nod] = 30.0
    return dict(
        nod=nod,
        vessel=vessel,
        wall=wall,
        core=core,
        blob=blob,
        with_vessel=with_vessel,
        at_wall=at_wall,
        part_solid=part_solid,
        two_blobs=two_blobs,
        plain=plain,
    )


# ----------------------------------------------------------------------------------- interface


def test_signature_takes_no_ground_truth():
    params = list(inspect.signature(intended_mask).parameters)
    assert params == ["reference", "spacing", "params", "rng", "image_hu", "texture", "difficulty_z", "difficulty_log"]
    banned = {"gt", "ground_truth", "case", "reader_masks", "readers", "truth"}
    assert not banned & set(params)


def test_rng_is_required(scene):
    with pytest.raises(ValueError, match="Generator"):
        intended_mask(scene["nod"], SP, PerceptionParams(), None)


def test_params_roundtrip_and_validation():
    p = PerceptionParams(shift_sd_mm=0.3, p_include_vessel=0.2)
    assert PerceptionParams.from_dict(p.to_dict()) == p
    assert PerceptionParams.from_dict({"bias_mm": 0.5}).bias_mm == 0.5
    with pytest.raises(KeyError, match="unknown"):
        PerceptionParams.from_dict({"shift_sd": 1.0})
    with pytest.raises(ValueError):
        PerceptionParams(p_wrong_spot=1.5)
    with pytest.raises(ValueError):
        PerceptionParams(shift_sd_mm=-0.1)


def test_image_shape_must_match(scene):
    with pytest.raises(ValueError, match="one grid"):
        intended_mask(scene["nod"], SP, PerceptionParams(), np.random.default_rng(0), image_hu=np.zeros((9, 70, 72)))


# ------------------------------------------------------------------------------ boundary model


def test_deterministic_given_seed(scene):
    p = PerceptionParams(shift_sd_mm=0.5, bias_sd_mm=0.3, z_sd_mm=0.8, difficulty_sd=0.3)
    a = intended_mask(scene["nod"], SP, p, np.random.default_rng(7), image_hu=scene["plain"])
    b = intended_mask(scene["nod"], SP, p, np.random.default_rng(7), image_hu=scene["plain"])
    c = intended_mask(scene["nod"], SP, p, np.random.default_rng(8), image_hu=scene["plain"])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("kind", ["ball", "two_parts", "irregular", "2d"])
def test_no_noise_returns_the_reference(kind):
    shape = (7, 40, 40)
    if kind == "ball":
        ref, sp = ball(shape, (3, 20, 20), 5.0), SP
    elif kind == "two_parts":
        ref, sp = ball(shape, (3, 12, 12), 3.0) | ball(shape, (3, 28, 28), 3.0), SP
    elif kind == "irregular":
        ref, sp = np.random.default_rng(1).random(shape) < 0.3, (2.5, 0.6, 0.6)
    else:
        ref, sp = ball(shape, (3, 20, 20), 5.0)[3], SP[1:]
    p = PerceptionParams(bias_mm=0.0, bias_sd_mm=0.0, shift_sd_mm=0.0, z_sd_mm=0.0, difficulty_sd=0.5)
    for seed in range(3):
        assert np.array_equal(intended_mask(ref, sp, p, np.random.default_rng(seed)), ref)


def test_bias_grows_or_shrinks(scene):
    ref = scene["nod"]
    rng = np.random.default_rng(0)
    out = intended_mask(ref, SP, QUIET.replace(bias_mm=0.8), rng)
    inn = intended_mask(ref, SP, QUIET.replace(bias_mm=-0.8), rng)
    assert (out & ref).sum() == ref.sum() and out.sum() > ref.sum()
    assert (inn & ~ref).sum() == 0 and inn.sum() < ref.sum()
    # with noise too, on average
    noisy = PerceptionParams(shift_sd_mm=0.3, bias_sd_mm=0.1)
    vol = {
        b: np.mean(
            [intended_mask(ref, SP, noisy.replace(bias_mm=b), np.random.default_rng(s)).sum() for s in range(10)]
        )
        for b in (-0.5, 0.0, 0.5)
    }
    assert vol[-0.5] < vol[0.0] < vol[0.5]


def test_more_shift_less_agreement(scene):
    ref = scene["nod"]

    def mean_dice(sd):
        p = PerceptionParams(shift_sd_mm=sd, bias_sd_mm=0.0, z_sd_mm=0.0)
        return np.mean([dice(intended_mask(ref, SP, p, np.random.default_rng(s)), ref) for s in range(15)])

    d_low, d_high = mean_dice(0.15), mean_dice(0.6)
    assert 0.6 < d_high < d_low < 1.0


def test_ground_glass_and_difficulty_widen_the_shift(scene):
    ref = scene["nod"]
    p = PerceptionParams(shift_sd_mm=0.4, ggo_gain=1.0, difficulty_sd=0.6)

    def mean_dice(**kw):
        return np.mean([dice(intended_mask(ref, SP, p, np.random.default_rng(s), **kw), ref) for s in range(15)])

    assert mean_dice(texture=1) < mean_dice(texture=5)
    assert mean_dice(texture=5, difficulty_z=1.5) < mean_dice(texture=5, difficulty_z=-1.5)


def test_ggo_size_exp_makes_the_ground_glass_extra_grow_with_size():
    flat = PerceptionParams(ggo_gain=0.5, ggo_size_exp=0.0)
    grows = flat.replace(ggo_size_exp=1.0)

    def ggo_over_solid(p, d):
        return shift_scale(d, 1.0, p) / shift_scale(d, 5.0, p)

    # without the exponent ground glass is 1.5x a solid edge at every size
    assert ggo_over_solid(flat, 5.0) == pytest.approx(1.5) and ggo_over_solid(flat, 30.0) == pytest.approx(1.5)
    # with it the extra scales as D / 10 mm: 1.25x at 5 mm, 1.5x at 10 mm, 2.5x at 30 mm
    assert [ggo_over_solid(grows, d) for d in (5.0, 10.0, 30.0)] == pytest.approx([1.25, 1.5, 2.5])
    # a solid nodule (texture 5) is not touched by it
    assert shift_scale(30.0, 5.0, grows) == pytest.approx(shift_scale(30.0, 5.0, flat))


def test_z_extent_moves_by_whole_slices_and_keeps_the_key_slice():
    shape = (12, 40, 40)
    ref = ball(shape, (6, 20, 20), 4.0, (1.0, 0.7, 0.7))  # slices 2..10
    p = PerceptionParams(shift_sd_mm=0.0, bias_sd_mm=0.0, z_sd_mm=2.0)
    zs_ref = np.flatnonzero(ref.any(axis=(1, 2)))
    lo, hi = set(), set()
    for s in range(30):
        m = intended_mask(ref, (1.0, 0.7, 0.7), p, np.random.default_rng(s))
        zs = np.flatnonzero(m.any(axis=(1, 2)))
        assert m[6].any()  # the largest slice stays
        assert np.array_equal(zs, np.arange(zs[0], zs[-1] + 1))  # no gaps
        lo.add(int(zs[0] - zs_ref[0]))
        hi.add(int(zs[-1] - zs_ref[-1]))
        kept = m[zs_ref[0] : zs_ref[-1] + 1] & ~ref[zs_ref[0] : zs_ref[-1] + 1]
        assert not kept.any()  # in plane nothing changes without a shift
    assert min(lo) < 0 < max(lo) and min(hi) < 0 < max(hi)


def test_one_connected_intent_per_reference_part(scene):
    from scipy import ndimage

    p = PerceptionParams(shift_sd_mm=0.6, corr_len_mm=0.7)
    struct = np.zeros((3, 3, 3), bool)
    struct[1] = True
    struct[0, 1, 1] = struct[2, 1, 1] = True
    for s in range(10):
        m = intended_mask(scene["nod"], SP, p, np.random.default_rng(s))
        assert ndimage.label(m, struct)[1] == 1


def test_sample_intents_and_case_difficulty(scene):
    masks = sample_intents(scene["nod"], SP, PerceptionParams(), np.random.default_rng(0), 4)
    assert len(masks) == 4 and all(m.shape == scene["nod"].shape and m.any() for m in masks)
    assert case_difficulty(key="LIDC-IDRI-0001/n1") == case_difficulty(key="LIDC-IDRI-0001/n1")
    with pytest.raises(ValueError):
        case_difficulty()


def test_geometry_box_holds_the_reference(scene):
    g = ReferenceGeometry.from_mask(scene["nod"], SP, margin_mm=3.0)
    assert np.array_equal(g.to_full(g.phi > 0), scene["nod"])


def test_texture_estimate(scene):
    assert estimate_texture(scene["plain"], scene["nod"], SP) == pytest.approx(5.0)
    ggo = scene["plain"].copy()
    ggo[scene["nod"]] = -620.0
    assert estimate_texture(ggo, scene["nod"], SP) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- semantic errors


def test_no_semantic_error_without_an_image(scene):
    everything = PerceptionParams(p_wrong_spot=1, p_include_vessel=1, p_miss_ggo_rim=1, p_pleura_error=1)
    a = intended_mask(scene["nod"], SP, everything, np.random.default_rng(3), texture=5)
    b = intended_mask(scene["nod"], SP, PerceptionParams(), np.random.default_rng(3), texture=5)
    assert np.array_equal(a, b)


def test_include_vessel_takes_in_the_attached_vessel(scene):
    nod, ves = scene["nod"], scene["vessel"] & ~scene["nod"]
    m = E.include_vessel(nod, scene["with_vessel"], SP, QUIET)
    added = m & ~nod
    assert added.sum() >= 20 and (added & ~ves).sum() == 0  # only vessel voxels come in
    # through intended_mask, with the probability at 1 and at 0
    p1 = intended_mask(
        nod, SP, QUIET.replace(p_include_vessel=1.0), np.random.default_rng(0), image_hu=scene["with_vessel"]
    )
    p0 = intended_mask(nod, SP, QUIET, np.random.default_rng(0), image_hu=scene["with_vessel"])
    assert (p1 & ves).sum() >= 20 and not (p0 & ves).any()
    # nothing to take in without a vessel
    assert np.array_equal(E.include_vessel(nod, scene["plain"], SP, QUIET), nod)


def test_miss_ggo_rim_keeps_the_solid_core(scene):
    m = E.miss_ggo_rim(scene["nod"], scene["part_solid"], SP, QUIET)
    assert dice(m, scene["core"]) > 0.9 and m.sum() < 0.3 * scene["nod"].sum()
    # a solid nodule loses at most its partial-volume edge
    solid = E.miss_ggo_rim(scene["nod"], scene["plain"], SP, QUIET)
    assert solid.sum() > 0.9 * scene["nod"].sum()


def test_pleura_error_leaks_into_or_stops_short_of_the_wall(scene):
    nod, wall = scene["nod"], scene["wall"]
    leak = E.pleura_error(nod, scene["at_wall"], SP, QUIET.replace(p_pleura_leak=1.0), np.random.default_rng(0))
    short = E.pleura_error(nod, scene["at_wall"], SP, QUIET.replace(p_pleura_leak=0.0), np.random.default_rng(0))
    assert (leak & ~nod).sum() > 20 and ((leak & ~nod) & ~wall).sum() == 0 and (nod & ~leak).sum() == 0
    assert (short & ~nod).sum() == 0 and (nod & ~short).sum() > 20
    removed = np.argwhere(nod & ~short)
    assert removed[:, 2].min() > 36  # removed on the wall's side only
    # away from the wall nothing happens
    assert np.array_equal(E.pleura_error(nod, scene["plain"], SP, QUIET, np.random.default_rng(0)), nod)


def test_wrong_spot_intends_another_blob(scene):
    nod, blob = scene["nod"], scene["blob"]
    alt = E.wrong_spot(nod, scene["two_blobs"], SP, QUIET, np.random.default_rng(0))
    assert alt is not None and np.array_equal(alt, blob)
    m = intended_mask(
        nod, SP, PerceptionParams(p_wrong_spot=1.0), np.random.default_rng(0), image_hu=scene["two_blobs"]
    )
    assert not (m & nod).any() and dice(m, blob) > 0.6
    assert E.wrong_spot(nod, scene["plain"], SP, QUIET, np.random.default_rng(0)) is None  # nothing else to take


def test_two_d_with_image(scene):
    m = intended_mask(
        scene["nod"][4],
        SP[1:],
        QUIET.replace(p_include_vessel=1.0),
        np.random.default_rng(0),
        image_hu=scene["with_vessel"][4],
    )
    assert m.shape == (72, 72) and (m & scene["vessel"][4] & ~scene["nod"][4]).sum() >= 5


# ------------------------------------------------------------------------------ on the phantoms


@pytest.fixture(scope="module")
def phantoms():
    """Phantoms of the first calibration nodules of 8 mm or more, until one has a sizeable attached
    vessel and one touches the chest wall (at most 8)."""
    from hiseg_sim.data.lidc import LidcDatabase
    from hiseg_sim.data.phantom import make_phantom

    try:
        db = LidcDatabase()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    out, vessel, wall = [], False, False
    for nod in db.iter_nodules("calibration", min_readers=3, limit=20):
        if nod.diameter_mm < 8:
            continue
        case = make_phantom(nod, seed=0)
        out.append(case)
        vessel |= bool(case.meta["vessel_attached"]) and int((case.meta["anatomy"] == 3).sum()) >= 50
        wall |= bool(case.meta["juxtapleural"])
        if (vessel and wall) or len(out) >= 8:
            break
    return out


def test_phantom_vessel_and_pleura_errors(phantoms):
    codes = {"attached_vessel": 3, "chest_wall": 4}
    vessel_seen = wall_seen = False
    for case in phantoms:
        a, gt, img, sp = case.meta["anatomy"], case.gt, case.volume_hu, case.spacing_zyx
        if case.meta["vessel_attached"]:
            added = E.include_vessel(gt, img, sp, QUIET) & ~gt
            if (a == codes["attached_vessel"]).sum() >= 50:
                vessel_seen = True
                assert (added & (a == codes["attached_vessel"])).sum() >= 10
            assert (added & (a >= codes["chest_wall"])).sum() <= 0.1 * max(1, added.sum())
        if case.meta["juxtapleural"]:
            wall_seen = True
            leak = E.pleura_error(gt, img, sp, QUIET.replace(p_pleura_leak=1.0), np.random.default_rng(0))
            short = E.pleura_error(gt, img, sp, QUIET.replace(p_pleura_leak=0.0), np.random.default_rng(0))
            assert ((leak & ~gt) & (a >= codes["chest_wall"])).sum() > 10
            assert short.sum() < gt.sum() and not (short & ~gt).any()
    if not (vessel_seen and wall_seen):
        pytest.skip("no phantom among the first nodules has a sizeable attached vessel and a chest wall")


def test_a_nodule_predicted_harder_is_drawn_further_apart():
    """``difficulty_log`` (the log difficulty a nodule's features predict) widens the edge
    disagreement like a harder case: panels drawn with +1 agree less than with -0.5."""
    from hiseg_sim.annotators.behaviour.calibration import agreement_stats

    g = np.ogrid[:9, :40, :40]
    ball = ((g[0] - 4) * 1.5) ** 2 + ((g[1] - 20) * 0.7) ** 2 + ((g[2] - 20) * 0.7) ** 2 <= 5.0**2

    def panel_dice(offset):
        rng = np.random.default_rng(3)
        masks = [
            intended_mask(ball, (1.5, 0.7, 0.7), PerceptionParams(), rng, difficulty_z=0.0, difficulty_log=offset)
            for _ in range(6)
        ]
        return agreement_stats(masks, ball, 1.5)["dice"]

    assert panel_dice(1.0) < panel_dice(-0.5) - 0.03
