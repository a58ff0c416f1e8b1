"""The phantom's nodule as a latent object of which every reader's contour is a plausible reading.

Painting the nodule exactly inside the readers' consensus lets a segmenter recover the scoring
reference from the image by a threshold, whoever prompts it. Real CT does not: where LIDC
readers disagree, the edge is faint, blurred, lobulated or ragged. So the image is rendered from
a *latent* nodule built from the readers' own spread, on the nodule's crop grid ``(z, y, x)``:

1. Each reader's signed distance ``phi_i`` (mm, + inside; 3-D, with the voxel spacing).
2. Their mean ``phi_bar`` (the middle of the readers) and spread ``sigma``: the SD with which
   one *more* reading departs from the mean of ``k`` readings, ``s * sqrt(1 + 1/k)`` with ``s``
   the readers' SD (ddof 1; the predictive SD of a new draw), smoothed by a 1-mm Gaussian, at
   most :data:`MAX_SPREAD_MM`. It sets how blurred the edge is (step 4).
3. The latent edge ``phi_L = phi_bar + d``: one more plausible reading, whose departure ``d`` is
   a real reader's departure from the others' mean, in a random direction, scaled to a
   ``k``-reader panel (:func:`_reader_departure`). So the consensus differs from the visible
   edge about as much as a radiologist who did not make it differs from it, with the readers'
   own kind of disagreement (a whole edge drawn a millimetre out, a lobe taken in or left out).
4. Tissue fraction ``sigmoid(phi_L / w)`` with an edge width ``w = w_margin + SPREAD_BLUR *
   sigma``: the sharper the LIDC margin rating (1 poorly defined ... 5 sharp) the narrower
   (:data:`MARGIN_WIDTH_MM`), and wider where readers disagree: the doubt shows as partial density.
5. Spicules (LIDC spiculation 1 none ... 5 marked): ``2 * (rating - 1)`` thin strands of nodule
   density leaving the latent surface, 1.5-4 mm long, which readers leave out of their outlines.

With one reader the spread is 0 and the edge is that reader's, blurred by the margin width.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.special import expit

__all__ = ["latent_nodule", "MAX_SPREAD_MM", "MARGIN_WIDTH_MM", "SPREAD_BLUR"]

#: The readers' local spread used for the edge's blur is at most this (mm): beyond it they drew
#: different objects (one the solid core, one the whole ground glass) and a blur that wide would
#: smear the nodule.
MAX_SPREAD_MM = 2.5
#: Edge width (mm, logistic scale) by LIDC margin rating 1 (poorly defined) ... 5 (sharp).
#: assumption: a sharp margin's edge is set by the scanner (the phantom's PSF blur of about
#: 0.3 mm comes on top); a poorly defined one fades over about 2 mm (4 x 0.5 mm, 10-90 %).
MARGIN_WIDTH_MM = {1: 0.5, 2: 0.4, 3: 0.3, 4: 0.2, 5: 0.12}
#: How much of the readers' local spread becomes edge width. Chosen on the default cohort
#: (calibration split): at a quarter the ground-glass rims of part-solid 10-20 mm nodules faded
#: into the lung and the tight box fell 0.05 below the readers there; at a tenth a band where
#: readers differ by 2 mm fades over about 1 mm more than the margin alone gives.
SPREAD_BLUR = 0.1


def _signed_distance(mask: np.ndarray, spacing) -> np.ndarray:
    """3-D signed distance (mm, + inside) to the boundary half a voxel outside ``mask``."""
    m = np.pad(mask, 1)
    h = 0.5 * min(spacing[1:])
    din = ndimage.distance_transform_edt(m, sampling=spacing)[1:-1, 1:-1, 1:-1]
    dout = ndimage.distance_transform_edt(~m, sampling=spacing)[1:-1, 1:-1, 1:-1]
    return np.where(mask, din - h, h - dout).astype(np.float32)


def _spicules(rng: np.random.Generator, latent: np.ndarray, spacing, count: int) -> np.ndarray:
    """Occupancy ``0..1`` of ``count`` thin strands leaving the surface of ``latent`` outward."""
    out = np.zeros(latent.shape, np.float32)
    surf = np.argwhere(latent & ~ndimage.binary_erosion(latent))
    if count <= 0 or len(surf) == 0:
        return out
    step = np.asarray(spacing, float)
    centre = np.argwhere(latent).mean(0) * step
    grid = np.indices(latent.shape).reshape(3, -1).T * step
    for _ in range(count):
        p0 = surf[rng.integers(len(surf))] * step
        d = p0 - centre
        d[0] *= 0.3  # mostly in plane, as spicules on axial CT look
        d += rng.normal(0, 0.25 * (np.linalg.norm(d) + 1e-6), 3)
        d /= np.linalg.norm(d) + 1e-9
        length, radius = rng.uniform(1.5, 4.0), rng.uniform(0.25, 0.45)
        p1 = p0 + d * length
        seg = p1 - p0
        t = np.clip(((grid - p0) @ seg) / (seg @ seg), 0.0, 1.0)
        dist = np.linalg.norm(grid - (p0 + t[:, None] * seg), axis=1)
        taper = radius * (1.0 - 0.6 * t)  # thinner toward the tip
        occ = expit((taper - dist) / 0.12).reshape(latent.shape)
        np.maximum(out, occ.astype(np.float32), out=out)
    return out


def _reader_departure(phis: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One more reading's departure from the mean of ``k >= 2`` readers' signed distances: how a
    real reader ``j`` (drawn) departs from the others' mean, in a random direction, scaled from a
    ``k-1``-reader panel to a ``k``-reader one (``sqrt((k+1)(k-1))/k``, the ratio of the predictive
    SDs ``sqrt(1+1/k)`` and ``sqrt(1+1/(k-1))``). Readers' departures are not a smooth Gaussian
    field: one draws the whole edge a millimetre out, another takes in a lobe the others leave
    out; a field of the same pointwise SD with short correlation averages out along a large
    nodule's edge and left the latent edge nearer the consensus than a new reader is."""
    k = phis.shape[0]
    j = int(rng.integers(k))
    sign = 1.0 if rng.random() < 0.5 else -1.0
    others = (phis.sum(0) - phis[j]) / (k - 1)
    return (sign * math.sqrt((k + 1) * (k - 1)) / k * (phis[j] - others)).astype(np.float32)


def latent_nodule(
    reader_masks, spacing_zyx, rng: np.random.Generator, margin: float = 3, spiculation: float = 1
) -> tuple[np.ndarray, np.ndarray, dict]:
    """The latent nodule of 1+ ``bool`` ``(Z, Y, X)`` reader masks on one crop grid.

    Returns ``(occupancy, latent, info)``: ``float32`` tissue fraction 0..1 (edge and spicules
    included), the ``bool`` latent object (``phi_L > 0``, what the density map is built on),
    and ``{"spread_mm": mean reader spread on the latent edge, "edge_width_mm", "spicules"}``.
    Draws from ``rng`` in a fixed order: the reader whose departure is used and its sign, then the
    spicules.
    """
    masks = [np.asarray(m, bool) for m in reader_masks]
    sp = tuple(float(s) for s in spacing_zyx)
    phis = np.stack([_signed_distance(m, sp) for m in masks])
    phi_bar = phis.mean(0)
    k = len(masks)
    spread = phis.std(0, ddof=1) * math.sqrt(1.0 + 1.0 / k) if k > 1 else np.zeros_like(phi_bar)
    spread = ndimage.gaussian_filter(spread, [1.0 / s for s in sp], mode="nearest")
    spread = np.minimum(spread, MAX_SPREAD_MM).astype(np.float32)
    phi_l = phi_bar + _reader_departure(phis, rng) if k > 1 else phi_bar.copy()
    latent = phi_l > 0
    if not latent.any():  # readers that barely overlap: keep the middle of the readers
        latent = phi_bar >= phi_bar.max()
        phi_l = np.where(latent, 0.1, phi_l)
    w_margin = MARGIN_WIDTH_MM[int(np.clip(math.floor(float(margin) + 0.5), 1, 5))]
    width = w_margin + SPREAD_BLUR * spread
    occ = expit(phi_l / width).astype(np.float32)
    n_spic = 2 * max(0, int(math.floor(float(spiculation) + 0.5)) - 1)
    spic = _spicules(rng, latent, sp, n_spic)
    occ = np.maximum(occ, spic)
    edge = np.abs(phi_l) < max(sp[1:])
    info = {
        "spread_mm": float(spread[edge].mean()) if edge.any() else 0.0,
        "edge_width_mm": float(width[edge].mean()) if edge.any() else w_margin,
        "spicules": n_spic,
    }
    return occ, latent, info
