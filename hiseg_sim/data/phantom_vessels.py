"""Pulmonary vessels of the phantom: a tapering, bifurcating tree of tubes and a vessel led to the nodule.

Pure functions. Positions are ``(z, y, x)`` in mm (see :mod:`hiseg_sim.data.phantom_anatomy`).
A tree is a :class:`Segments` table of tapered capsules (two end points and two radii each).

Growth rule (a simple constrained-random model): each branch runs a length of 3–7 diameters in
~4 mm steps whose direction wanders by ~7° and is pulled toward the periphery; its radius tapers
by 3–15 %; it then bifurcates by Murray's law (``r^3 = r1^3 + r2^3``, daughter ratio 0.5–1) at
Murray's optimal angles, and stops below ``r_min``, outside the growth box, or at the pleura.
Diameters therefore run from ~5 mm near the hilar side of the field down to sub-millimetre
twigs near the pleura, as on chest CT.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hiseg_sim.data.phantom_anatomy import Grid

__all__ = ["Segments", "grow_tree", "feeder_vessel", "paint_segments", "random_unit", "perpendicular"]


@dataclass(frozen=True)
class Segments:
    """Tapered capsules: ``p0``, ``p1`` ``(S, 3)`` zyx mm; ``r0``, ``r1`` ``(S,)`` radii mm."""

    p0: np.ndarray
    p1: np.ndarray
    r0: np.ndarray
    r1: np.ndarray

    @staticmethod
    def from_list(rows: list[tuple]) -> Segments:
        if not rows:
            z3 = np.zeros((0, 3))
            return Segments(z3, z3, np.zeros(0), np.zeros(0))
        p0, p1, r0, r1 = zip(*rows)
        return Segments(np.array(p0, float), np.array(p1, float), np.array(r0, float), np.array(r1, float))

    def __len__(self) -> int:
        return len(self.r0)

    def __add__(self, other: Segments) -> Segments:
        return Segments(
            np.vstack([self.p0, other.p0]),
            np.vstack([self.p1, other.p1]),
            np.concatenate([self.r0, other.r0]),
            np.concatenate([self.r1, other.r1]),
        )


def random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def perpendicular(rng: np.random.Generator, d: np.ndarray) -> np.ndarray:
    """A random unit vector perpendicular to unit ``d``."""
    v = random_unit(rng)
    v -= d * float(v @ d)
    n = np.linalg.norm(v)
    return v / n if n > 1e-6 else perpendicular(rng, d)


def _turn(rng: np.random.Generator, d: np.ndarray, sigma: float, pull: np.ndarray | None, w: float) -> np.ndarray:
    d = d + rng.normal(0.0, sigma, 3)
    if pull is not None:
        d = d + w * pull
    return d / np.linalg.norm(d)


def grow_tree(
    rng: np.random.Generator,
    roots: list[tuple[np.ndarray, np.ndarray, float]],
    lo: np.ndarray,
    hi: np.ndarray,
    periphery: np.ndarray | None = None,
    in_lung: Callable[[np.ndarray], bool] | None = None,
    r_min: float = 0.35,
    max_segments: int = 1500,
    step_mm: float = 4.0,
) -> Segments:
    """Grow vessel trees from ``roots`` ``[(start zyx mm, unit direction, radius mm), ...]``.

    Args:
        lo, hi: the growth box (zyx mm); a branch leaving it stops.
        periphery: unit vector toward the pleura; directions are pulled weakly along it.
        in_lung: ``f(point zyx) -> bool``; a branch stops when it leaves the lung.
        r_min: branches thinner than this radius (mm) are not continued.
    """
    rows: list[tuple] = []
    stack = [(np.asarray(p, float), np.asarray(d, float) / np.linalg.norm(d), float(r)) for p, d, r in roots]
    lo_t, hi_t = tuple(float(v) for v in lo), tuple(float(v) for v in hi)
    pull = np.zeros(3) if periphery is None else 0.08 * np.asarray(periphery, float)
    while stack and len(rows) < max_segments:
        p, d, r = stack.pop()
        length = 2 * r * rng.uniform(3.0, 7.0)
        n_sub = max(1, math.ceil(length / step_mm))
        r_end = r * rng.uniform(0.85, 0.97)
        jitter = rng.normal(0.0, 0.12, (n_sub, 3))
        alive = True
        for k in range(n_sub):
            d = d + jitter[k] + pull
            d = d / math.sqrt(float(d @ d))
            q = p + d * (length / n_sub)
            rows.append((p, q, r + (r_end - r) * k / n_sub, r + (r_end - r) * (k + 1) / n_sub))
            p = q
            qz, qy, qx = float(q[0]), float(q[1]), float(q[2])
            if not (lo_t[0] <= qz <= hi_t[0] and lo_t[1] <= qy <= hi_t[1] and lo_t[2] <= qx <= hi_t[2]) or (
                in_lung is not None and not in_lung(q)
            ):
                alive = False
                break
        if not alive or r_end < r_min:
            continue
        a = rng.uniform(0.5, 1.0)
        r1 = r_end / (1.0 + a**3) ** (1.0 / 3.0)
        r2 = a * r1
        c1 = min(1.0, max(-1.0, (r_end**4 + r1**4 - r2**4) / (2 * r_end**2 * r1**2)))
        c2 = min(1.0, max(-1.0, (r_end**4 + r2**4 - r1**4) / (2 * r_end**2 * r2**2)))
        v = perpendicular(rng, d)
        d1 = c1 * d + math.sqrt(1 - c1**2) * v
        d2 = c2 * d - math.sqrt(1 - c2**2) * v
        stack.append((p.copy(), d1 / np.linalg.norm(d1), r1))
        stack.append((p.copy(), d2 / np.linalg.norm(d2), r2))
    return Segments.from_list(rows)


def feeder_vessel(
    rng: np.random.Generator,
    contact: np.ndarray,
    inward: np.ndarray,
    away: np.ndarray,
    r_contact: float,
    lo: np.ndarray,
    hi: np.ndarray,
    depth_in: float = 1.0,
    in_lung: Callable[[np.ndarray], bool] | None = None,
    max_len: float = 80.0,
) -> tuple[Segments, list]:
    """A vessel that reaches the nodule: it starts ``depth_in`` mm inside the nodule at ``contact``
    (zyx mm, on its surface), leaves along ``away`` (unit), curving gently, and widens to ~1.6x its
    radius at the contact as it runs back toward the hilar side until it leaves the box.

    Returns the segments and side-branch roots ``[(point, direction, radius)]`` for
    :func:`grow_tree`, so the vessel carries its own small branches.
    """
    inward = inward / np.linalg.norm(inward)
    start = contact + inward * (r_contact + depth_in)
    rows = [(start, contact.copy(), r_contact, r_contact)]
    p, d, r = contact.copy(), away / np.linalg.norm(away), r_contact
    grow = rng.uniform(1.3, 1.8) ** (1.0 / max(max_len / 3.0, 1.0))
    side, travelled, next_side = [], 0.0, rng.uniform(6, 14)
    while travelled < max_len:
        d = _turn(rng, d, 0.06, None, 0.0)
        q = p + d * 3.0
        rows.append((p, q, r, r * grow))
        p, r, travelled = q, r * grow, travelled + 3.0
        if np.any(q < lo) or np.any(q > hi) or (in_lung is not None and not in_lung(q)):
            break
        if travelled >= next_side:
            side.append((q.copy(), perpendicular(rng, d) * 0.8 + d * 0.6, r * rng.uniform(0.5, 0.75)))
            next_side += rng.uniform(8, 16)
    return Segments.from_list(rows), side


def paint_segments(seg: Segments, grid: Grid, out: np.ndarray, edge_mm: float | None = None) -> np.ndarray:
    """Paint the capsules' occupancy (0..1, linear ramp ``edge_mm`` wide across the wall) into the
    fine-grid ``out`` ``(F, Y, X)`` by maximum; returns ``out``."""
    zf = grid.z_fine
    px = grid.px
    dzf = float(zf[1] - zf[0]) if len(zf) > 1 else px
    edge = edge_mm if edge_mm is not None else max(px, dzf)
    ny, nx = grid.shape[1], grid.shape[2]
    for p0, p1, r0, r1 in zip(seg.p0, seg.p1, seg.r0, seg.r1):
        pad = max(r0, r1) + edge
        lo, hi = np.minimum(p0, p1) - pad, np.maximum(p0, p1) + pad
        k0, k1 = np.searchsorted(zf, lo[0]), np.searchsorted(zf, hi[0], side="right")
        i0, i1 = max(0, int(math.floor(lo[1] / px))), min(ny, int(math.ceil(hi[1] / px)) + 1)
        j0, j1 = max(0, int(math.floor(lo[2] / px))), min(nx, int(math.ceil(hi[2] / px)) + 1)
        if k1 <= k0 or i1 <= i0 or j1 <= j0:
            continue
        z = zf[k0:k1, None, None] - p0[0]
        y = (np.arange(i0, i1) * px)[None, :, None] - p0[1]
        x = (np.arange(j0, j1) * px)[None, None, :] - p0[2]
        d = p1 - p0
        l2 = float(d @ d) or 1e-9
        t = np.clip((z * d[0] + y * d[1] + x * d[2]) / l2, 0.0, 1.0)
        dist = np.sqrt((z - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (x - t * d[2]) ** 2)
        occ = np.clip(0.5 + (r0 + t * (r1 - r0) - dist) / edge, 0.0, 1.0).astype(np.float32)
        sub = out[k0:k1, i0:i1, j0:j1]
        np.maximum(sub, occ, out=sub)
    return out


def bronchi_along(rng: np.random.Generator, tree: Segments, r_min: float = 1.1) -> tuple[Segments, Segments]:
    """Airways running beside the larger vessels (bronchovascular bundles): for each segment of
    radius >= ``r_min`` mm a parallel tube of about the same outer radius, just touching the vessel
    on one side (a side fixed per tree, turned smoothly with the segment's direction).

    Returns ``(outer, lumen)`` capsules: the wall is ``outer`` minus ``lumen`` (wall thickness
    ~15–20 % of the outer radius, at least 0.35 mm)."""
    keep = np.flatnonzero(np.minimum(tree.r0, tree.r1) >= r_min)
    if keep.size == 0:
        empty = Segments.from_list([])
        return empty, empty
    ref = random_unit(rng)
    ratio = rng.uniform(0.85, 1.1)
    wall = rng.uniform(0.15, 0.2)
    outer, lumen = [], []
    for i in keep:
        p0, p1, r0, r1 = tree.p0[i], tree.p1[i], tree.r0[i], tree.r1[i]
        d = (p1 - p0) / (np.linalg.norm(p1 - p0) + 1e-9)
        v = np.cross(d, ref)
        if np.linalg.norm(v) < 1e-3:
            v = perpendicular(rng, d)
        v /= np.linalg.norm(v)
        b0, b1 = r0 * ratio, r1 * ratio
        q0, q1 = p0 + v * (r0 + b0 + 0.2), p1 + v * (r1 + b1 + 0.2)
        outer.append((q0, q1, b0, b1))
        lumen.append((q0, q1, max(b0 - max(0.35, wall * b0), 0.2), max(b1 - max(0.35, wall * b1), 0.2)))
    return Segments.from_list(outer), Segments.from_list(lumen)


def vessel_forest(
    rng: np.random.Generator,
    grid: Grid,
    periphery: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    in_lung: Callable[[np.ndarray], bool] | None = None,
    lung: np.ndarray | None = None,
    target_fraction: float = 0.025,
    max_batches: int = 8,
) -> tuple[Segments, np.ndarray]:
    """Grow trees in batches until vessels fill ``target_fraction`` of the lung in the output slab.

    Each batch holds four roots entering from the hilar side (``-periphery``) of the field, 1.2–2.4
    mm in radius, and two entering through the top or bottom of the growth box (vessels seen end-on
    as dots), 0.9–1.8 mm. Vessel density then no longer depends on the luck of one draw.

    Args:
        periphery: unit zyx vector toward the pleura.
        lo, hi: growth box (zyx mm).
        lung: optional ``bool`` fine-grid mask of the lung (where the fraction is measured).

    Returns:
        ``(segments, occupancy)``: the tree and its fine-grid occupancy ``(F, Y, X)``.
    """
    zf, dz = grid.z_fine, grid.spacing_zyx[0]
    fov = grid.shape[1] * grid.px
    side = np.array([0.0, -periphery[2], periphery[1]])
    side /= np.linalg.norm(side) + 1e-9
    mid = np.array([(zf[0] + zf[-1]) / 2, fov / 2, fov / 2])
    slab = (zf >= -0.5 * dz) & (zf <= (grid.shape[0] - 0.5) * dz)
    where = lung[slab] if lung is not None else None
    occ = np.zeros(grid.fine_shape, np.float32)
    tree = Segments.from_list([])
    for _ in range(max_batches):
        roots = []
        for _ in range(4):
            p = mid - periphery * (fov / 2 + 10) + side * rng.uniform(-0.8, 0.8) * fov
            p[0] = rng.uniform(zf[0] - 10, zf[-1] + 10)
            d = periphery + 0.6 * random_unit(rng)
            roots.append((p, d / np.linalg.norm(d), rng.uniform(1.2, 2.4)))
        for _ in range(2):
            top = rng.random() < 0.5
            p = np.array([lo[0] + 1 if top else hi[0] - 1, *rng.uniform(0.1, 0.9, 2) * fov])
            d = np.array([1.0 if top else -1.0, 0, 0]) + 0.5 * random_unit(rng)
            roots.append((p, d / np.linalg.norm(d), rng.uniform(0.9, 1.8)))
        batch = grow_tree(rng, roots, lo, hi, periphery=periphery, in_lung=in_lung)
        paint_segments(batch, grid, occ)
        tree = tree + batch
        filled = occ[slab] >= 0.5
        frac = float(filled[where].mean()) if where is not None and where.any() else float(filled.mean())
        if frac >= target_fraction:
            break
    return tree, occ
