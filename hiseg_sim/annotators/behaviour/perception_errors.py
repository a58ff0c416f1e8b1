"""Semantic errors of perception: mistakes about *what* the nodule is, not where its edge runs.

Each is a pure function of a mask (the intent so far, or for :func:`wrong_spot` the person's
idea of the nodule), the image a person would look at, and the spacing; none sees the ground
truth. :func:`hiseg_sim.annotators.behaviour.perception.intended_mask` applies them with the per-case
probabilities of :class:`~hiseg_sim.annotators.behaviour.perception.PerceptionParams`:

==================  ===============================================================================
error               what changes
==================  ===============================================================================
``wrong_spot``      the person misses the nodule and intends another bright blob in the field
                    (> ``blob_hu``: a vessel cross-section, another opacity) of about the
                    nodule's size; the boundary model then draws around that blob.
``include_vessel``  the bright (> ``vessel_hu``) thin structure (it does not survive an opening of
                    radius ``TUBE_MAX_RADIUS_MM``) within 3 mm of the intent is taken in, up to
                    ``vessel_reach_mm`` from it, with the bright voxels bridging the two: the
                    largest such vessel piece.
``miss_ggo_rim``    the faint periphery goes: voxels below ``rim_hu`` connected to the intent's
                    outline (a ground-glass rim around a solid core). With no core (under 10 %
                    of the intent above ``rim_hu``: pure ground glass) the densest 40 % stays.
``pleura_error``    at the chest wall (soft tissue > ``wall_hu`` thicker than 6 mm within 2 mm of
                    the intent): leak ``pleura_mm`` into the wall (share ``p_pleura_leak``) or stop
                    ``pleura_mm`` short of it. Nothing happens away from the wall.
==================  ===============================================================================

Thresholds are HU of the image smoothed in plane with a 0.5-mm Gaussian (CT noise would
otherwise decide). HU figures are the standard CT attenuation values (lung -850 to -910, ground
glass about -600, solid component above -400, soft tissue +25 to +60, fat -50 to -100).
Masks are ``bool`` ``(Z, Y, X)``; spacing ``(z, y, x)`` mm (a 2-D call reaches here as one
slice with a huge z spacing, so nothing connects along z).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from hiseg_sim.annotators.behaviour.geometry import reference_diameter_mm

__all__ = [
    "include_vessel",
    "miss_ggo_rim",
    "pleura_error",
    "wrong_spot",
    "TUBE_MAX_RADIUS_MM",
    "WALL_MIN_RADIUS_MM",
    "CONTACT_MM",
    "CORE_MIN_SHARE",
    "GGO_KEEP",
    "SEARCH_MM",
]

#: Bright structures that survive an opening with a ball of this radius (mm) are not vessels.
TUBE_MAX_RADIUS_MM = 2.5
#: Soft tissue that survives an opening with a ball of this radius (mm) is chest wall.
WALL_MIN_RADIUS_MM = 3.0
#: Within this distance (mm) a structure touches the intent.
CONTACT_MM = 2.0
#: ``miss_ggo_rim``: below this share of the intent above ``rim_hu`` there is no solid core ...
CORE_MIN_SHARE = 0.1
#: ... and the densest this share of the intent is kept instead.
GGO_KEEP = 0.4
#: ``wrong_spot`` looks this far (mm, in plane) from the nodule, at least 3 diameters.
SEARCH_MM = 30.0
_SMOOTH_MM = 0.5


def _box(mask: np.ndarray, margin_mm: float, spacing) -> tuple[slice, ...]:
    idx = np.argwhere(mask)
    lo, hi = idx.min(0), idx.max(0) + 1
    out = []
    for ax, (lw, h) in enumerate(zip(lo, hi)):
        m = int(math.ceil(margin_mm / spacing[ax])) + 1 if spacing[ax] < 1e5 else 0
        out.append(slice(max(0, int(lw) - m), min(mask.shape[ax], int(h) + m)))
    return tuple(out)


def _smooth(image: np.ndarray, spacing) -> np.ndarray:
    return ndimage.gaussian_filter(image.astype(np.float32), (0.0, _SMOOTH_MM / spacing[1], _SMOOTH_MM / spacing[2]))


def _ball(radius_mm: float, spacing) -> np.ndarray:
    r = [int(math.floor(radius_mm / s)) if s < 1e5 else 0 for s in spacing]
    grids = np.ogrid[tuple(slice(-k, k + 1) for k in r)]
    d2 = sum((g * s) ** 2 for g, s, k in zip(grids, spacing, r) if k > 0) if any(r) else np.zeros((1, 1, 1))
    return np.broadcast_to(d2 <= radius_mm**2, tuple(2 * k + 1 for k in r)).copy()


def _opening(x: np.ndarray, radius_mm: float, spacing) -> np.ndarray:
    """Opening whose erosion treats the box border as foreground (a wall cut by the box stays)."""
    st = _ball(radius_mm, spacing)
    return ndimage.binary_dilation(ndimage.binary_erosion(x, st, border_value=1), st) & x


def _dist(mask: np.ndarray, spacing) -> np.ndarray:
    """Distance (mm) from each voxel to ``mask`` (0 inside); ``inf`` everywhere if it is empty."""
    if not mask.any():
        return np.full(mask.shape, np.inf, np.float32)
    sp = [min(s, 1e4) for s in spacing]
    return ndimage.distance_transform_edt(~mask, sampling=sp).astype(np.float32)


_CONN26 = np.ones((3, 3, 3), bool)


def _connected_to(core: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """``core`` plus the parts of ``extra`` connected to it (26-connectivity)."""
    lab, n = ndimage.label(core | extra, _CONN26)
    keep = np.unique(lab[core])
    return np.isin(lab, keep[keep > 0])


def include_vessel(mask: np.ndarray, image_hu: np.ndarray, spacing, params) -> np.ndarray:
    """Take in the largest bright thin structure (a vessel) touching the intent, up to
    ``params.vessel_reach_mm`` from it. Unchanged when none touches it."""
    if not mask.any():
        return mask
    reach = float(params.vessel_reach_mm)
    box = _box(mask, reach + TUBE_MAX_RADIUS_MM + 1.0, spacing)
    m, img = mask[box], _smooth(image_hu[box], spacing)
    bright = img > params.vessel_hu
    thick = _opening(bright, TUBE_MAX_RADIUS_MM, spacing)  # nodule, wall, large blobs
    thick |= _dist(thick, spacing) <= 1.0  # and their ragged edges
    dist = _dist(m, spacing)
    tubes = bright & ~m & ~thick & (dist <= reach)
    lab, n = ndimage.label(tubes, _CONN26)
    if n == 0:
        return mask
    gap = CONTACT_MM + 1.0  # the ragged-edge margin cut off above, plus contact
    touching = np.unique(lab[(dist <= gap) & tubes])
    touching = touching[touching > 0]
    if touching.size == 0:
        return mask
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    vessel = lab == touching[np.argmax(sizes[touching])]
    bridge = bright & ~m & (dist <= gap) & (_dist(vessel, spacing) <= gap)  # between intent and vessel
    grown = _connected_to(m, vessel | bridge)
    out = mask.copy()
    out[box] |= grown
    return out


def miss_ggo_rim(mask: np.ndarray, image_hu: np.ndarray, spacing, params) -> np.ndarray:
    """Drop the faint periphery: voxels of the intent below ``params.rim_hu`` that connect to its
    outline; keep the largest piece left. With no solid core (under ``CORE_MIN_SHARE`` of the
    intent above ``rim_hu``) the threshold is the intent's own ``1 - GGO_KEEP`` HU quantile
    instead, so its densest part stays. Unchanged if nothing would be left."""
    if not mask.any():
        return mask
    box = _box(mask, 1.0, spacing)
    m, img = mask[box], _smooth(image_hu[box], spacing)
    thr = float(params.rim_hu)
    if float((img[m] >= thr).mean()) < CORE_MIN_SHARE:
        thr = float(np.quantile(img[m], 1.0 - GGO_KEEP))
    low = m & (img < thr)
    struct = ndimage.generate_binary_structure(3, 1)
    if spacing[0] >= 1e5:
        struct[0] = struct[2] = False
    outline = m & ~ndimage.binary_erosion(m, struct, border_value=0)
    lab, n = ndimage.label(low, _CONN26)
    rim_labels = np.unique(lab[outline & low])
    rim = np.isin(lab, rim_labels[rim_labels > 0])
    core = m & ~rim
    if not core.any():
        return mask
    lab, n = ndimage.label(core, _CONN26)
    if n > 1:
        core = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
    out = mask.copy()
    out[box] = core
    return out


def pleura_error(mask: np.ndarray, image_hu: np.ndarray, spacing, params, rng: np.random.Generator) -> np.ndarray:
    """At the chest wall: leak ``params.pleura_mm`` into it (probability ``params.p_pleura_leak``)
    or stop ``params.pleura_mm`` short of it. One uniform is drawn from ``rng`` first, always.
    Unchanged when no chest wall (soft tissue > ``wall_hu`` surviving an opening of radius
    ``WALL_MIN_RADIUS_MM``) comes within ``CONTACT_MM`` of the intent."""
    leak = bool(rng.random() < params.p_pleura_leak)
    if not mask.any():
        return mask
    depth = float(params.pleura_mm)
    box = _box(mask, depth + 2.0 * WALL_MIN_RADIUS_MM + CONTACT_MM, spacing)
    m, img = mask[box], _smooth(image_hu[box], spacing)
    tissue = img > params.wall_hu
    wall = _opening(tissue & ~m, WALL_MIN_RADIUS_MM, spacing)
    dist_m = _dist(m, spacing)
    lab, n = ndimage.label(wall, _CONN26)
    near = np.unique(lab[wall & (dist_m <= CONTACT_MM)])
    near = near[near > 0]
    if near.size == 0:
        return mask
    wall = np.isin(lab, near)
    dist_w = _dist(wall, spacing)
    if leak:
        gap = tissue & (dist_m <= CONTACT_MM) & (dist_w <= CONTACT_MM)  # what lies between intent and wall
        new = _connected_to(m, (wall & (dist_m <= depth)) | gap)
    else:
        new = m & (dist_w > depth)
        if not new.any():
            return mask
        lab, k = ndimage.label(new, _CONN26)
        if k > 1:
            new = lab == np.argmax(np.bincount(lab.ravel())[1:]) + 1
    out = mask.copy()
    out[box] = new
    return out


def wrong_spot(
    reference: np.ndarray, image_hu: np.ndarray, spacing, params, rng: np.random.Generator
) -> np.ndarray | None:
    """A missed nodule: another bright blob the person takes for it, as a new reference mask.

    Candidates: in-plane connected pieces of smoothed image > ``params.blob_hu`` on the
    reference's slices, within ``max(SEARCH_MM, 3 D)`` mm of its centre, not touching the
    reference (grown by 2 mm), 1.5 mm to ``max(1.5 D, 10 mm)`` across. One is drawn from ``rng``
    with probability proportional to its area; the new reference is the bright voxels connected
    to its densest pixel within a disc of ``max(D / 2, 1.5 mm) x 1.5`` around it, on as many
    slices above and below as the nodule had. ``None`` when there is no candidate.
    """
    if not reference.any():
        return None
    dz, py, px = spacing
    d = max(reference_diameter_mm(reference, spacing), 2.0)
    zs = np.flatnonzero(reference.any(axis=(1, 2)))
    key = int(reference.sum(axis=(1, 2)).argmax())
    cy, cx = np.argwhere(reference[key]).mean(0)
    search = max(SEARCH_MM, 3.0 * d)
    ry, rx = int(math.ceil(search / py)), int(math.ceil(search / px))
    y0, y1 = max(0, int(cy) - ry), min(reference.shape[1], int(cy) + ry + 1)
    x0, x1 = max(0, int(cx) - rx), min(reference.shape[2], int(cx) + rx + 1)
    sl = (slice(int(zs[0]), int(zs[-1]) + 1), slice(y0, y1), slice(x0, x1))
    img = _smooth(image_hu[sl], spacing)
    near = _dist(reference[sl], (min(dz, 1e4), py, px)) <= 2.0
    bright = img > params.blob_hu
    yy, xx = np.mgrid[y0:y1, x0:x1]
    in_field = ((yy - cy) * py) ** 2 + ((xx - cx) * px) ** 2 <= search**2
    area_px = py * px
    a_min, a_max = math.pi * 0.75**2, math.pi * (max(1.5 * d, 10.0) / 2) ** 2
    cands = []  # (z in sl, label map, label, area mm2)
    for k in range(bright.shape[0]):
        lab, n = ndimage.label(bright[k] & in_field, np.ones((3, 3), bool))
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel(), minlength=n + 1) * area_px
        bad = np.unique(lab[near[k]])
        for j in range(1, n + 1):
            if j not in bad and a_min <= sizes[j] <= a_max:
                cands.append((k, lab, j, float(sizes[j])))
    if not cands:
        return None
    w = np.array([c[3] for c in cands])
    k, lab, j, _ = cands[int(rng.choice(len(cands), p=w / w.sum()))]
    blob = lab == j
    seed = np.unravel_index(int(np.argmax(np.where(blob, img[k], -np.inf))), blob.shape)
    z_seed = int(zs[0]) + k
    lo, hi = max(0, z_seed - (key - int(zs[0]))), min(reference.shape[0], z_seed + (int(zs[-1]) - key) + 1)
    rho = 1.5 * max(d / 2.0, 1.5)
    vol = _smooth(image_hu[lo:hi, y0:y1, x0:x1], spacing) > params.blob_hu
    disc = ((yy - (y0 + seed[0])) * py) ** 2 + ((xx - (x0 + seed[1])) * px) ** 2 <= rho**2
    vol &= disc[None]
    struct = np.zeros((3, 3, 3), bool)
    struct[1] = True
    struct[0, 1, 1] = struct[2, 1, 1] = True
    lab3, _ = ndimage.label(vol, struct)
    lab_seed = lab3[z_seed - lo, seed[0], seed[1]]
    if lab_seed == 0:
        return None
    out = np.zeros(reference.shape, bool)
    out[lo:hi, y0:y1, x0:x1] = lab3 == lab_seed
    return out if out.sum() >= 2 else None
