"""The phantom's nodule: its density by texture rating, painted on the latent object
(:mod:`~hiseg_sim.data.phantom_latent`).

Pure functions on the nodule's crop grid ``(z, y, x)``.

Density by LIDC texture rating (typical CT attenuation of lung nodules: ground-glass
nodules around -600 HU, a solid component above -160 HU, solid nodules roughly 0 to +70 HU):

====  ==========================  ===========================================
 1    pure ground glass           -680 … -540 HU
 2    ground glass, denser        -500 … -400 HU
 3    part-solid                  rim -620 … -500 HU around a core -120 … +20 HU
 4    mostly solid                -100 … -10 HU
 5    solid                       0 … +60 HU
====  ==========================  ===========================================

plus smooth internal heterogeneity (~1.5 mm, SD 12–40 HU, larger for ground glass) and, when the
calcification rating is below 6 ("absent"), calcium of +300 … +900 HU: diffuse (3, "solid"),
central (2 laminated, 5 central), eccentric (4) or several popcorn foci (1).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.special import expit

from hiseg_sim.data.phantom_anatomy import hat_matrix

__all__ = ["TEXTURE_HU", "nodule_hu_map", "paint_nodule"]

#: HU range drawn from for each texture rating (for 3: the ground-glass rim).
TEXTURE_HU: dict[int, tuple[float, float]] = {
    1: (-680, -540),
    2: (-500, -400),
    3: (-620, -500),
    4: (-100, -10),
    5: (0, 60),
}
#: HU range of the solid core of a part-solid (texture 3) nodule.
PART_SOLID_CORE_HU = (-120.0, 20.0)


def _smooth_noise(rng: np.random.Generator, shape, spacing_zyx, corr_mm: float) -> np.ndarray:
    sig = [max(0.5, corr_mm / s) for s in spacing_zyx]
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sig, mode="wrap")
    return f / (f.std() + 1e-9)


def nodule_hu_map(
    rng: np.random.Generator, consensus: np.ndarray, spacing_zyx, texture: int, calcification: float = 6
) -> tuple[np.ndarray, dict]:
    """HU of the nodule tissue at every voxel of the crop (``float32``, same shape).

    Returns the map and ``{"mean_hu", "calcified", "core_fraction"}`` (mean over the consensus).
    """
    tex = int(np.clip(texture, 1, 5))
    het = _smooth_noise(rng, consensus.shape, spacing_zyx, 1.5)
    lo, hi = TEXTURE_HU[tex]
    base = rng.uniform(lo, hi)
    core_frac = 0.0
    if tex in (1, 2):
        hu = base + het * rng.uniform(20, 40)
    elif tex == 3:
        depth = ndimage.distance_transform_edt(consensus, sampling=spacing_zyx)
        dn = depth / max(depth.max(), 1e-6)
        core_frac = rng.uniform(0.35, 0.6)
        score = dn + 0.15 * _smooth_noise(rng, consensus.shape, spacing_zyx, 2.5)
        core = expit((score - (1.0 - core_frac)) / 0.06)
        hu = base + (rng.uniform(*PART_SOLID_CORE_HU) - base) * core + het * 18
    else:
        hu = base + het * rng.uniform(10, 20)
    calc = int(np.floor(float(calcification) + 0.5))
    calcified = 1 <= calc <= 5
    if calcified:
        hu = _calcify(rng, hu, consensus, spacing_zyx, calc, het)
    hu = hu.astype(np.float32)
    return hu, {"mean_hu": float(hu[consensus].mean()), "calcified": calcified, "core_fraction": core_frac}


def _calcify(rng, hu, consensus, spacing_zyx, pattern: int, het) -> np.ndarray:
    """LIDC calcification patterns 1 popcorn, 2 laminated, 3 solid, 4 non-central, 5 central."""
    calc_hu = rng.uniform(300, 900)
    if pattern == 3:
        return calc_hu + het * 40
    idx = np.argwhere(consensus)
    step = np.asarray(spacing_zyx)
    depth = ndimage.distance_transform_edt(consensus, sampling=spacing_zyx)
    rmax = float(depth.max())
    if pattern in (2, 5):
        centres = [idx.mean(0)]
    elif pattern == 4:
        deep = idx[depth[consensus] >= 0.4 * rmax]
        centres = [deep[rng.integers(len(deep))]]
    else:
        deep = idx[depth[consensus] >= 0.3 * rmax]
        centres = [deep[i] for i in rng.integers(len(deep), size=int(rng.integers(3, 6)))]
    radius = rmax * (rng.uniform(0.25, 0.45) if pattern != 1 else rng.uniform(0.12, 0.22))
    grid = np.indices(consensus.shape).reshape(3, -1).T * step
    dist = np.min([np.linalg.norm(grid - np.asarray(c) * step, axis=1) for c in centres], axis=0)
    blob = expit((max(radius, 0.6) - dist.reshape(consensus.shape)) / 0.35) * consensus
    return hu + (calc_hu - hu) * blob


def paint_nodule(
    vol: np.ndarray, z_fine: np.ndarray, occupancy: np.ndarray, hu: np.ndarray, offset_zyx, dz: float
) -> np.ndarray:
    """Paint the nodule into the fine-grid ``vol`` ``(F, Y, X)`` in place and return it.

    ``occupancy`` and ``hu`` are on the crop grid; crop voxel ``[k, i, j]`` is output voxel
    ``[k, i, j] + offset_zyx``, i.e. at ``z = (k + oz) * dz``. Both are interpolated linearly to the
    fine planes (HU weighted by occupancy, so the lung outside does not bleed in), then blended
    where the nodule is denser than what is there: vessels stay visible through ground glass, a
    solid nodule covers them.
    """
    oz, oy, ox = (int(v) for v in offset_zyx)
    cz, cy, cx = occupancy.shape
    pad = ((1, 1), (0, 0), (0, 0))
    occ_p, hu_p = np.pad(occupancy, pad), np.pad(hu * occupancy, pad)
    nodes = (np.arange(-1, cz + 1) + oz) * dz
    k0, k1 = np.searchsorted(z_fine, nodes[0]), np.searchsorted(z_fine, nodes[-1], side="right")
    m = hat_matrix(z_fine[k0:k1], nodes)
    occ_f = np.tensordot(m, occ_p, axes=(1, 0))
    hu_f = np.tensordot(m, hu_p, axes=(1, 0)) / np.maximum(occ_f, 1e-6)
    sub = vol[k0:k1, oy : oy + cy, ox : ox + cx]  # a view
    sub += np.where(hu_f > sub, (hu_f - sub) * occ_f, 0.0).astype(np.float32)
    return vol
