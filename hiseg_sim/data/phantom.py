"""LIDC-shaped synthetic chest-CT phantoms: the default cohort's volumes.

A phantom is a peripheral lung crop (64–100 mm in plane, at the scan's pixel spacing and slice
spacing) drawn around one LIDC nodule's reader masks: aerated parenchyma with texture, a
branching vessel tree, often a vessel running into the nodule, in a quarter of the cases the
chest wall the nodule sits on (pleura, intercostal muscle, fat, oblique ribs), the nodule painted
from a latent object built from the readers' masks (:mod:`hiseg_sim.data.phantom_latent`: one
more plausible reading of it, its edge as soft as the readers' spread and the LIDC margin rating
say, spicules as the spiculation rating says) with a density set by its texture rating, then
slice-profile partial volume, in-plane blur and correlated CT noise. The ground truth is exactly
the readers' consensus mask placed on the phantom grid (so it is not the visible edge: where
the readers disagree the image does too), and each reader's mask is carried too.

>>> import numpy as np
>>> zz, yy, xx = np.mgrid[:7, :30, :30]
>>> ball = ((zz - 3) / 2.2) ** 2 + ((yy - 15) / 6.0) ** 2 + ((xx - 15) / 6.0) ** 2 <= 1
>>> vol, gt, readers, meta = render_phantom([ball, ball], (1.25, 0.7, 0.7), texture=5, slice_thickness=1.25)
>>> vol.dtype, gt.shape == vol.shape, int(gt.sum()) == int(ball.sum()), meta["source"]
(dtype('float32'), True, True, 'phantom-lidc')

Everything random comes from ``stable_rng(nodule_id, seed)`` (or the ``rng`` given): the same
nodule and seed give the same random draws everywhere, hence the same anatomy, and a bit-identical
volume with the same NumPy/BLAS build (another BLAS may differ in the last float bits).
Generation takes 0.1–0.6 s (about 1 s for a 35 mm nodule on 0.625 mm slices) on two CPU cores.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage

from hiseg_sim.data.case import Case
from hiseg_sim.data.phantom_anatomy import (
    ct_noise,
    lung_parenchyma,
    make_grid,
    paint_wall,
    parenchyma_speckle,
    place_wall,
    psf_blur,
    sample_wall,
    slice_weights,
    stable_rng,
)
from hiseg_sim.data.phantom_latent import latent_nodule
from hiseg_sim.data.phantom_nodule import nodule_hu_map, paint_nodule
from hiseg_sim.data.phantom_vessels import (
    Segments,
    bronchi_along,
    feeder_vessel,
    grow_tree,
    paint_segments,
    vessel_forest,
)

__all__ = [
    "render_phantom",
    "make_phantom",
    "anatomy_labels",
    "ANATOMY_CODES",
    "JUXTAPLEURAL_RATE",
    "ATTACHED_VESSEL_RATE",
]

#: Labels of ``meta["anatomy"]``, a ``uint8`` ``(Z, Y, X)`` map of what each voxel mostly holds.
ANATOMY_CODES = {0: "lung", 1: "nodule", 2: "vessel", 3: "attached_vessel", 4: "chest_wall", 5: "bone"}
#: Share of phantoms whose nodule touches the chest wall (design choice; LIDC does not record it).
JUXTAPLEURAL_RATE = 0.25
#: Share of phantoms given a vessel running into the nodule (design choice, not a measured figure).
ATTACHED_VESSEL_RATE = 0.6
#: Share of the other phantoms that still show a stretch of chest wall at a distance.
DISTANT_WALL_RATE = 0.35
#: In-plane room (pixels) around the readers' masks for the latent nodule's soft edge and
#: spicules; the nodule crop sits at least 6 pixels inside the field of view.
_PAD_PX = 6


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    return tuple(slice(int(a), int(b) + 1) for a, b in zip(idx.min(0), idx.max(0)))


def _integrate(w: np.ndarray, fine: np.ndarray) -> np.ndarray:
    """Slice-profile integration: ``(Z, F) @ (F, Y, X) -> (Z, Y, X)``."""
    f, ny, nx = fine.shape
    return (w @ fine.reshape(f, ny * nx)).reshape(w.shape[0], ny, nx)


def render_phantom(
    reader_masks,
    spacing_zyx,
    texture: float,
    slice_thickness: float,
    seed: int = 0,
    *,
    nodule_id: str = "",
    consensus: np.ndarray | None = None,
    ratings: dict | None = None,
    fov_mm: float | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...], dict[str, Any]]:
    """Draw one phantom around a nodule given as reader masks.

    Args:
        reader_masks: 1+ ``bool`` ``(Z, Y, X)`` masks on one grid (any crop of the scan).
        spacing_zyx: that grid's voxel size, mm ``(slice spacing, px, px)``; the phantom keeps it.
        texture: LIDC texture rating 1 (ground glass) … 5 (solid); medians such as 4.5 are rounded.
        slice_thickness: reconstructed thickness (mm): the FWHM of the slice profile.
        seed: phantom variant; mixed with ``nodule_id`` into the generator.
        nodule_id: stable key for the generator (and nothing else).
        consensus: ``bool`` mask on the same grid; default: voxels of at least half the readers.
        ratings: the other median ratings; ``calcification`` < 6 adds calcium.
        fov_mm: in-plane field of view; default ``2.4 x extent + 30`` clipped to 64–100 mm
            (96–192 px, always at least the nodule + 12 px a side).
        rng: use this generator instead of ``stable_rng(nodule_id, seed)``.

    Returns:
        ``(volume_hu, gt, reader_masks_on_grid, meta)``: ``float32`` HU ``(Z, N, N)``; the
        consensus on that grid; each reader's mask on it; facts about the draw (see
        :func:`make_phantom`). A mask voxel ``[z, y, x]`` is phantom voxel
        ``[z, y, x] + meta["mask_offset_zyx"]``.
    """
    masks = [np.asarray(m, dtype=bool) for m in reader_masks]
    if not masks:
        raise ValueError("render_phantom needs at least one reader mask")
    if any(m.shape != masks[0].shape or m.ndim != 3 for m in masks):
        raise ValueError(f"reader masks must be 3-D and share one shape; got {[m.shape for m in masks]}")
    dz, py, pxx = (float(s) for s in spacing_zyx)
    if abs(py - pxx) > 1e-3 * py:
        raise ValueError(f"phantoms need square pixels; got spacing_zyx {tuple(spacing_zyx)}")
    px = py
    count = np.sum(masks, axis=0)
    cons = (2 * count >= len(masks)) if consensus is None else np.asarray(consensus, dtype=bool)
    if cons.shape != masks[0].shape:
        raise ValueError(f"consensus has shape {cons.shape}, the reader masks {masks[0].shape}")
    if not cons.any():
        raise ValueError(f"{nodule_id or 'nodule'}: the consensus mask is empty (the readers do not overlap)")
    union = (count > 0) | cons
    bb = _bbox(union)
    cons_c = cons[bb]
    masks_c = [m[bb] for m in masks]
    cz, cy, cx = cons_c.shape
    rng = stable_rng(nodule_id, seed) if rng is None else rng
    ratings = dict(ratings or {})
    tex = int(np.clip(math.floor(float(texture) + 0.5), 1, 5))

    # ---- scenario: which neighbours this nodule gets (drawn first, in a fixed order)
    u = rng.random(3)
    juxta = bool(u[0] < JUXTAPLEURAL_RATE)
    wall_on = juxta or bool(u[1] < DISTANT_WALL_RATE)
    attach = bool(u[2] < ATTACHED_VESSEL_RATE)
    ang = rng.uniform(0, 2 * math.pi)
    nrm = np.array([math.sin(ang), math.cos(ang)])  # in-plane (y, x) lung -> wall, also toward periphery

    # ---- grid and nodule placement
    extent_mm = max(cy, cx) * px
    fov = float(fov_mm) if fov_mm is not None else float(np.clip(2.4 * extent_mm + 30.0, 64.0, 100.0))
    n = int(np.clip(round(fov / px), 96, 192))
    n = max(n, max(cy, cx) + 24)
    mz = max(3, math.ceil(4.0 / dz))
    shape = (cz + 2 * mz, n, n)
    shift = (rng.uniform(0.04, 0.16) if juxta else 0.0) * n
    centre = n / 2 + nrm * shift + rng.uniform(-0.08, 0.08, 2) * n
    oy = int(np.clip(round(centre[0] - cy / 2), 6, n - cy - 6))
    ox = int(np.clip(round(centre[1] - cx / 2), 6, n - cx - 6))
    off = np.array([mz, oy, ox])
    grid = make_grid(shape, (dz, px, px), slice_thickness)
    zf = grid.z_fine
    step = np.array([dz, px, px])
    surf = np.argwhere(cons_c & ~ndimage.binary_erosion(cons_c))
    surf_mm = (surf + off) * step
    cen_mm = (np.argwhere(cons_c).mean(0) + off) * step

    # ---- chest wall
    spec = None
    if wall_on:
        spec = sample_wall(rng, ang, float(cen_mm[0]))
        depth = float(np.clip(0.12 * extent_mm, 0.6, 1.5)) if juxta else -rng.uniform(4.0, 16.0)
        spec = place_wall(spec, surf_mm, depth, cen_mm[1:] + nrm * extent_mm / 2)

    def in_lung(q: np.ndarray) -> bool:
        return spec is None or spec.depth_at(float(q[0]), float(q[1]), float(q[2])) < -1.0

    # ---- chest wall (fine grid), parenchyma and vessels
    wall = bone = None
    if spec is not None:
        wall, wall_hu, bone = paint_wall(spec, grid)
    lung_hu = rng.uniform(-890, -860)
    vol = lung_parenchyma(rng, grid, lung_hu)
    fov_real = n * px
    lo = np.array([zf[0] - 15.0, -15.0, -15.0])
    hi = np.array([zf[-1] + 15.0, fov_real + 15.0, fov_real + 15.0])
    periph = np.array([rng.uniform(-0.3, 0.3), nrm[0], nrm[1]])
    periph /= np.linalg.norm(periph)
    tree, ves = vessel_forest(
        rng,
        grid,
        periph,
        lo,
        hi,
        in_lung,
        None if wall is None else wall < 0.5,
        target_fraction=rng.uniform(0.02, 0.035),
    )
    if attach:
        feed = _feeder(rng, cons_c, off, step, periph, nrm, extent_mm, lo, hi, in_lung)
        paint_segments(feed, grid, ves)
    vessel_hu = rng.uniform(35, 60)
    vol += (vessel_hu - vol) * ves
    outer, lumen = bronchi_along(rng, tree)
    if len(outer):
        air = paint_segments(outer, grid, np.zeros(grid.fine_shape, np.float32))
        vol += (rng.uniform(-40, 20) - vol) * air * (1.0 - ves)  # bronchial wall
        air = paint_segments(lumen, grid, np.zeros_like(air))
        vol += (rng.uniform(-990, -960) - vol) * air * (1.0 - ves)

    # ---- nodule: the latent object on the crop grown by a few voxels (room for its soft edge
    # and spicules), painted on the fine grid by maximum density
    pad = np.array([min(mz, max(1, math.ceil(2.0 / dz))), _PAD_PX, _PAD_PX])
    masks_p = [np.pad(m, [(int(q), int(q)) for q in pad]) for m in masks_c]
    occ_c, latent_c, lat_info = latent_nodule(
        masks_p, (dz, px, px), rng, margin=ratings.get("margin", 3), spiculation=ratings.get("spiculation", 1)
    )
    hu_c, nod_info = nodule_hu_map(rng, latent_c, (dz, px, px), tex, ratings.get("calcification", 6))
    paint_nodule(vol, zf, occ_c, hu_c, off - pad, dz)

    # ---- wall, then slice profile, blur and noise
    if wall is not None:
        vol += (wall_hu - vol) * wall
        ves *= 1.0 - wall
    w = slice_weights(grid.z, zf, grid.thickness)
    out = _integrate(w, vol)
    ves_c = _integrate(w, ves)
    wall_c = _integrate(w, wall) if wall is not None else np.zeros(shape, np.float32)
    bone_c = _integrate(w, bone) if bone is not None else np.zeros(shape, np.float32)
    out += parenchyma_speckle(rng, shape, px) * (1.0 - wall_c)
    psf = rng.uniform(0.28, 0.38)
    out = psf_blur(out, px, psf)
    noise_sd = rng.uniform(15.0, 40.0)
    cutoff = min(rng.uniform(0.45, 0.7), 0.9 / px)
    out += ct_noise(rng, shape, px, noise_sd, cutoff, 0.5 * max(0.0, grid.thickness - dz) / dz)
    out = np.clip(out, -1024.0, 3071.0).astype(np.float32)

    # ---- masks, labels, facts
    sl = tuple(slice(o, o + s) for o, s in zip(off, cons_c.shape))
    gt = np.zeros(shape, bool)
    gt[sl] = cons_c
    readers = []
    for mk in masks_c:
        r = np.zeros(shape, bool)
        r[sl] = mk
        readers.append(r)
    anatomy, near = anatomy_labels(gt, ves_c, wall_c, bone_c)
    wall_m = np.isin(anatomy, (4, 5))
    meta = {
        "source": "phantom-lidc",
        "nodule_id": nodule_id,
        "seed": int(seed),
        "texture": tex,
        "ratings": ratings,
        "n_readers": len(masks),
        "juxtapleural": bool((near & wall_m).any()),
        "vessel_attached": bool((anatomy == 3).any()),
        "feeder_vessel": attach,
        "wall_visible": bool(wall_m.any()),
        "calcified": bool(nod_info["calcified"]),
        "fov_mm": round(n * px, 2),
        "slice_thickness": float(slice_thickness),
        "lung_hu": round(float(lung_hu), 1),
        "vessel_hu": round(float(vessel_hu), 1),
        "nodule_hu": round(float(nod_info["mean_hu"]), 1),
        "noise_sd_hu": round(float(noise_sd), 1),
        "psf_sigma_mm": round(float(psf), 3),
        "reader_spread_mm": round(lat_info["spread_mm"], 3),
        "edge_width_mm": round(lat_info["edge_width_mm"], 3),
        "spicules": int(lat_info["spicules"]),
        "mask_offset_zyx": tuple(int(o - b.start) for o, b in zip(off, bb)),
        "anatomy": anatomy,
        "anatomy_codes": dict(ANATOMY_CODES),
    }
    return out, gt, tuple(readers), meta


def anatomy_labels(
    gt: np.ndarray, vessel: np.ndarray, wall: np.ndarray, bone: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``uint8`` label map (:data:`ANATOMY_CODES`) from output-grid occupancies (each voxel gets
    what fills at least half of it; the nodule wins), and the nodule's 26-neighbourhood.

    A vessel component (26-connected, outside ``gt``) with a voxel next to ``gt`` is "attached".
    """
    near = ndimage.binary_dilation(gt, np.ones((3, 3, 3), bool))
    ves = (vessel >= 0.5) & ~gt
    lab, _ = ndimage.label(ves, np.ones((3, 3, 3), bool))
    touching = np.unique(lab[near & ves])
    anatomy = np.zeros(gt.shape, np.uint8)
    anatomy[ves] = 2
    anatomy[np.isin(lab, touching[touching > 0])] = 3
    anatomy[wall >= 0.5] = 4
    anatomy[bone >= 0.5] = 5
    anatomy[gt] = 1
    return anatomy, near


def _feeder(rng, cons_c, off, step, periph, nrm, extent_mm, lo, hi, in_lung) -> Segments:
    """A vessel touching the nodule on its key slice, leaving toward the hilar side."""
    kz = int(cons_c.sum(axis=(1, 2)).argmax())
    sl = cons_c[kz]
    edge = np.argwhere(sl & ~ndimage.binary_erosion(sl))
    cen = np.argwhere(sl).mean(0)
    a = math.atan2(-nrm[0], -nrm[1]) + rng.uniform(-1.1, 1.1)
    away = np.array([math.sin(a), math.cos(a)])
    rel = edge - cen
    score = rel @ away / (np.linalg.norm(rel, axis=1) + 1e-6) + rng.uniform(0, 0.15, len(edge))
    pick = edge[int(score.argmax())] + away * 0.5
    contact = (np.array([kz, *pick]) + off) * step
    inward = np.array([0.0, *(cen - pick)]) * step
    if np.linalg.norm(inward) < 1e-6:
        inward = np.array([0.0, *-away])
    r = float(np.clip(rng.uniform(0.6, 1.3), 0.4, max(0.4, 0.15 * extent_mm)))
    away3 = np.array([rng.uniform(-0.12, 0.12), *away])
    seg, side = feeder_vessel(rng, contact, inward, away3, r, lo, hi, depth_in=0.8, in_lung=in_lung)
    return seg + grow_tree(rng, side, lo, hi, periphery=periph, in_lung=in_lung, max_segments=200)


def make_phantom(nodule, seed: int = 0, fov_mm: float | None = None, rng: np.random.Generator | None = None) -> Case:
    """The phantom :class:`~hiseg_sim.data.case.Case` of one LIDC nodule.

    ``nodule`` needs ``nodule_id``, ``reader_masks``, ``spacing_zyx``, ``texture`` (or
    ``ratings["texture"]``) and ``scan.slice_thickness``; ``consensus``, ``ratings``,
    ``diameter_mm`` and ``scan.patient_id`` are used when present
    (:class:`hiseg_sim.data.lidc.Nodule` has them all).

    ``case.meta``: ``source`` ("phantom-lidc"), ``nodule_id``, ``patient_id``, ``split``,
    ``seed``, ``texture``, ``ratings``, ``diameter_mm`` (consensus), ``lidc_diameter_mm`` (the
    mean of the readers' own diameters, when the nodule has them), ``n_readers``, ``juxtapleural`` (the
    consensus touches the chest wall), ``vessel_attached`` (a vessel touches the consensus: the
    feeder vessel drawn for ~60 % of phantoms, or a tree vessel by chance), ``feeder_vessel``,
    ``wall_visible``, ``calcified``, ``fov_mm``, ``slice_thickness``, ``lung_hu``, ``vessel_hu``,
    ``nodule_hu``, ``noise_sd_hu``, ``psf_sigma_mm``, ``reader_spread_mm`` / ``edge_width_mm`` (mean
    on the latent edge) and ``spicules`` (:mod:`hiseg_sim.data.phantom_latent`), ``mask_offset_zyx`` (LIDC crop voxel + offset
    = phantom voxel), and ``anatomy``: a ``uint8`` ``(Z, Y, X)`` label map (:data:`ANATOMY_CODES`;
    ``3`` marks the vessel(s) attached to the nodule). Every key but ``anatomy`` is JSON-safe.
    """
    ratings = dict(getattr(nodule, "ratings", None) or {})
    texture = getattr(nodule, "texture", None)
    if texture is None:
        texture = ratings.get("texture", 5)
    scan = nodule.scan
    vol, gt, readers, meta = render_phantom(
        nodule.reader_masks,
        nodule.spacing_zyx,
        texture,
        float(scan.slice_thickness),
        seed,
        nodule_id=nodule.nodule_id,
        consensus=getattr(nodule, "consensus", None),
        ratings=ratings,
        fov_mm=fov_mm,
        rng=rng,
    )
    patient = getattr(scan, "patient_id", None) or nodule.nodule_id.split("/")[0]
    try:
        from hiseg_sim.data.lidc import split_of

        split = split_of(patient)
    except (ImportError, ValueError):
        split = None
    diameter = getattr(nodule, "diameter_mm", None)
    meta.update(
        patient_id=patient,
        split=split,
        n_readers=len(nodule.reader_masks),
        diameter_mm=round(float(diameter), 2) if diameter is not None else None,
        pixel_spacing=float(nodule.spacing_zyx[1]),
        slice_spacing=float(nodule.spacing_zyx[0]),
    )
    if meta["diameter_mm"] is None:
        del meta["diameter_mm"]
    lidc_d = getattr(nodule, "reader_diameters_mm", None)
    if lidc_d:  # the LIDC size convention: the mean of the readers' own diameters (pylidc)
        meta["lidc_diameter_mm"] = round(float(np.mean(lidc_d)), 2)
    return Case(
        case_id=nodule.nodule_id,
        volume_hu=vol,
        spacing_zyx=tuple(nodule.spacing_zyx),
        gt=gt,
        reader_masks=readers,
        meta=meta,
    )
