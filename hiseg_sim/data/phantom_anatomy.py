"""Pure pieces of the synthetic chest-CT phantom: sampling grid, lung parenchyma, chest wall, CT noise.

Every function takes an explicit ``numpy.random.Generator`` (or none) and returns new arrays; the
orchestration lives in :mod:`hiseg_sim.data.phantom`, the vessels in
:mod:`hiseg_sim.data.phantom_vessels`.

Geometry and units
------------------
- Arrays are indexed ``[z, y, x]``; positions are in mm: in-plane ``y = row * px``,
  ``x = col * px``; the coarse (output) slice ``k`` lies at ``z = k * slice_spacing``.
- The anatomy is first drawn on a *fine* grid: the same rows and columns, but planes every
  ``dz / K`` mm (:class:`Grid`), so that thin oblique vessels do not alias. The slice
  sensitivity profile (a Gaussian with FWHM = slice thickness, :func:`slice_weights`) then
  integrates the fine planes into the output slices: the partial-volume effect along z.
- HU figures are the standard CT attenuation values: inflated lung
  -850…-910, fat -50…-100, soft tissue +25…+60, blood +30…+70, bone 700+.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import expit

__all__ = [
    "Grid",
    "WallSpec",
    "stable_rng",
    "make_grid",
    "slice_weights",
    "hat_matrix",
    "smooth_field",
    "lung_parenchyma",
    "parenchyma_speckle",
    "sample_wall",
    "place_wall",
    "wall_depth",
    "paint_wall",
    "ct_noise",
    "psf_blur",
]


def stable_rng(key: str, seed: int) -> np.random.Generator:
    """A generator seeded by ``seed`` mixed with a stable (BLAKE2) hash of ``key``.

    The same ``(key, seed)`` gives the same stream on every machine and Python run (``hash()``
    is salted per process; this is not).

    >>> int(stable_rng("LIDC-IDRI-0078/n1", 0).integers(1000)) == int(stable_rng("LIDC-IDRI-0078/n1", 0).integers(1000))
    True
    """
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed}")
    h = int.from_bytes(hashlib.blake2b(str(key).encode("utf-8"), digest_size=8).digest(), "little")
    return np.random.default_rng(np.random.SeedSequence([h, seed]))


@dataclass(frozen=True)
class Grid:
    """The output grid ``shape`` (Z, Y, X) at ``spacing_zyx`` mm and its fine z sampling.

    Attributes:
        shape: output ``(Z, Y, X)``.
        spacing_zyx: output voxel size, mm.
        thickness: reconstructed slice thickness, mm (FWHM of the slice profile).
        z_fine: ``(F,)`` positions (mm, ascending) of the fine planes.
    """

    shape: tuple[int, int, int]
    spacing_zyx: tuple[float, float, float]
    thickness: float
    z_fine: np.ndarray

    @property
    def z(self) -> np.ndarray:
        return np.arange(self.shape[0]) * self.spacing_zyx[0]

    @property
    def fine_shape(self) -> tuple[int, int, int]:
        return (len(self.z_fine), self.shape[1], self.shape[2])

    @property
    def px(self) -> float:
        return self.spacing_zyx[1]

    def yx_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """``(Y, 1)`` and ``(1, X)`` in-plane positions in mm, for broadcasting."""
        return (np.arange(self.shape[1])[:, None] * self.px, np.arange(self.shape[2])[None, :] * self.px)


def make_grid(shape: tuple[int, int, int], spacing_zyx, thickness: float) -> Grid:
    """Fine planes every ``dz / K`` mm (``K`` such that the step is at most the thickness, clipped
    to 0.5–0.75 mm), padded by about one thickness beyond the first and last slice."""
    dz = float(spacing_zyx[0])
    t = max(float(thickness), 1e-3)
    target = float(np.clip(t, 0.5, 0.75))
    k = max(1, math.ceil(dz / target - 1e-6))
    step = dz / k
    n_pad = math.ceil((1.2 * max(t, dz)) / step)
    idx = np.arange(-n_pad, (shape[0] - 1) * k + n_pad + 1)
    return Grid(tuple(int(s) for s in shape), tuple(float(s) for s in spacing_zyx), t, idx * step)


def slice_weights(z_out: np.ndarray, z_fine: np.ndarray, thickness: float) -> np.ndarray:
    """``(Z, F)`` row-normalised weights of a Gaussian slice profile with FWHM ``thickness`` mm."""
    step = float(np.median(np.diff(z_fine))) if len(z_fine) > 1 else 1.0
    sigma = max(thickness / 2.3548, 0.5 * step)
    w = np.exp(-0.5 * ((z_fine[None, :] - z_out[:, None]) / sigma) ** 2)
    w[w < 1e-4] = 0.0
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def hat_matrix(x: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """``(len(x), len(nodes))`` linear-interpolation weights from equally spaced ``nodes`` to ``x``;
    zero farther than one node step from every node."""
    step = float(nodes[1] - nodes[0]) if len(nodes) > 1 else 1.0
    return np.clip(1.0 - np.abs(x[:, None] - nodes[None, :]) / step, 0.0, None).astype(np.float32)


def smooth_field(
    rng: np.random.Generator, z_mm: np.ndarray, y_mm: np.ndarray, x_mm: np.ndarray, corr_mm: float
) -> np.ndarray:
    """A smooth random field of unit SD and correlation length about ``corr_mm`` on the grid
    ``z_mm x y_mm x x_mm``: Gaussian noise on a lattice of step ``corr_mm``, lightly smoothed,
    then linearly interpolated (separable matrices, so it costs little)."""
    axes = []
    for pos in (z_mm, y_mm, x_mm):
        lo, hi = float(pos.min()) - corr_mm, float(pos.max()) + corr_mm
        axes.append(lo + np.arange(int(math.ceil((hi - lo) / corr_mm)) + 1) * corr_mm)
    lat = ndimage.gaussian_filter(rng.standard_normal([len(a) for a in axes]), 0.7, mode="wrap")
    lat /= lat.std() + 1e-9
    mz, my, mx = (hat_matrix(p, a) for p, a in zip((z_mm, y_mm, x_mm), axes))
    out = np.tensordot(mz, lat.astype(np.float32), axes=(1, 0))  # (F, b, c)
    out = np.tensordot(out, my, axes=(1, 1))  # (F, c, Y)
    out = np.tensordot(out, mx, axes=(1, 1))  # (F, Y, X)
    return out.astype(np.float32)


def lung_parenchyma(rng: np.random.Generator, grid: Grid, base_hu: float) -> np.ndarray:
    """Fine-grid lung background (HU): ``base_hu`` + low-frequency texture (regional aeration,
    ~8 mm, 6–14 HU SD) + mid-frequency mottling (~3 mm, 3–7 HU) + a gentle gravity gradient
    along +y (dependent lung denser, 0–25 HU across the field)."""
    y, x = grid.yx_mm()
    z = grid.z_fine
    vol = smooth_field(rng, z, y[:, 0], x[0], 8.0) * rng.uniform(6, 14)
    vol += smooth_field(rng, z, y[:, 0], x[0], 3.0) * rng.uniform(3, 7)
    span = max(float(y.max()), 1.0)
    vol += (rng.uniform(0, 25) * (y / span - 0.5))[None].astype(np.float32)
    vol += np.float32(base_hu)
    return vol


def parenchyma_speckle(
    rng: np.random.Generator, shape: tuple[int, int, int], px: float, per_cm2: float = 6.0
) -> np.ndarray:
    """Output-grid HU increments from sub-millimetre vessels and interstitium: sparse dots of
    +15…+90 HU blurred to ~0.45 mm, weakly correlated between neighbouring slices."""
    z, ny, nx = shape
    out = np.zeros(shape, np.float32)
    n = rng.poisson(per_cm2 * ny * nx * px * px / 100.0, size=z)
    for k in range(z):
        iy, ix = rng.integers(0, ny, n[k]), rng.integers(0, nx, n[k])
        np.add.at(out[k], (iy, ix), rng.uniform(15, 90, n[k]).astype(np.float32) * (0.45 / px) ** -2 / 6.3)
    out = ndimage.gaussian_filter(out, (0, 0.45 / px, 0.45 / px))
    if z > 2:
        out = ndimage.convolve1d(out, [0.25, 0.5, 0.25], axis=0, mode="nearest")
    return out


# ---------------------------------------------------------------------------------- chest wall


@dataclass(frozen=True)
class WallSpec:
    """A chest-wall segment: the pleura is an arc of radius ``radius_mm`` touching
    ``contact_yx`` with outward normal ``normal_yx`` (lung → wall), shifted by ``z_slope`` mm per
    mm of z from ``z_ref``; layers outward from the pleura as ``(thickness_mm, hu)``; oblique
    ribs (elliptical section, cortex + marrow) inside the first (intercostal muscle) layer."""

    normal_yx: tuple[float, float]
    contact_yx: tuple[float, float]
    radius_mm: float
    z_ref: float
    z_slope: float
    layers: tuple[tuple[float, float], ...]
    wobble: tuple[float, float, float, float]  # amplitude mm, wavelength mm, phase, slope-z
    rib_depth: float
    rib_half_thick: float
    rib_half_height: float
    rib_pitch: float
    rib_angle: float
    rib_phase: float
    cortex_mm: float
    cortex_hu: float
    marrow_hu: float

    def depth_at(self, z: float, y: float, x: float) -> float:
        """Scalar :func:`wall_depth` ``u`` (fast path for growing vessels point by point)."""
        ny, nx = self.normal_yx
        dy = y - (self.contact_yx[0] - ny * self.radius_mm)
        dx = x - (self.contact_yx[1] - nx * self.radius_mm)
        t = self.radius_mm * math.atan2(dx * ny - dy * nx, dy * ny + dx * nx)
        amp, wl, ph, sz = self.wobble
        return (
            math.hypot(dy, dx)
            - self.radius_mm
            + self.z_slope * (z - self.z_ref)
            + amp * math.sin(2 * math.pi * t / wl + ph + sz * z)
        )

    def with_contact(self, contact_yx) -> WallSpec:
        return WallSpec(**{**self.__dict__, "contact_yx": (float(contact_yx[0]), float(contact_yx[1]))})


def sample_wall(rng: np.random.Generator, normal_angle: float, z_ref: float) -> WallSpec:
    """Draw a wall's shape and tissues (contact point to be set by :func:`place_wall`)."""
    half_thick = rng.uniform(2.6, 3.6)
    depth = half_thick + rng.uniform(1.0, 2.5)
    layers = (
        (depth + half_thick + rng.uniform(0.8, 2.5), rng.uniform(35, 55)),  # intercostal muscle
        (rng.uniform(2.0, 8.0), rng.uniform(-100, -70)),  # fat between muscle planes
        (rng.uniform(6.0, 16.0), rng.uniform(35, 60)),  # serratus / latissimus
        (rng.uniform(6.0, 20.0), rng.uniform(-110, -80)),  # subcutaneous fat
        (1.5, 40.0),  # skin
    )
    return WallSpec(
        normal_yx=(math.sin(normal_angle), math.cos(normal_angle)),
        contact_yx=(0.0, 0.0),
        radius_mm=rng.uniform(70, 160),
        z_ref=float(z_ref),
        z_slope=rng.uniform(-0.2, 0.2),
        layers=layers,
        wobble=(rng.uniform(0.2, 0.8), rng.uniform(30, 80), rng.uniform(0, 2 * math.pi), rng.uniform(-0.1, 0.1)),
        rib_depth=depth,
        rib_half_thick=half_thick,
        rib_half_height=rng.uniform(4.5, 6.5),
        rib_pitch=rng.uniform(18, 26),
        rib_angle=rng.uniform(0.25, 0.7),
        rib_phase=rng.uniform(0, 26),
        cortex_mm=rng.uniform(0.8, 1.4),
        cortex_hu=rng.uniform(900, 1300),
        marrow_hu=rng.uniform(180, 350),
    )


def wall_depth(spec: WallSpec, y, x, z) -> tuple[np.ndarray, np.ndarray]:
    """Depth ``u`` beyond the pleura (mm, > 0 inside the wall) and arc length ``t`` along it, at
    broadcastable positions ``(y, x, z)`` in mm."""
    ny, nx = spec.normal_yx
    cy, cx = spec.contact_yx[0] - ny * spec.radius_mm, spec.contact_yx[1] - nx * spec.radius_mm
    dy, dx = y - cy, x - cx
    rho = np.hypot(dy, dx)
    ang = np.arctan2(dx * ny - dy * nx, dy * ny + dx * nx)
    t = spec.radius_mm * ang
    amp, wl, ph, sz = spec.wobble
    u = rho - spec.radius_mm + spec.z_slope * (z - spec.z_ref) + amp * np.sin(2 * np.pi * t / wl + ph + sz * z)
    return u, t


def place_wall(spec: WallSpec, points_zyx: np.ndarray, max_depth: float, guess_yx) -> WallSpec:
    """Move the wall along its normal so that the deepest of ``points_zyx`` ``(N, 3)`` mm lies
    ``max_depth`` mm beyond the pleura (> 0: the points poke into the wall, i.e. touch it;
    < 0: the nearest point stays that far inside the lung)."""
    n = np.asarray(spec.normal_yx)
    c = np.asarray(guess_yx, float)
    for _ in range(8):
        spec = spec.with_contact(c)
        u, _ = wall_depth(spec, points_zyx[:, 1], points_zyx[:, 2], points_zyx[:, 0])
        err = float(u.max()) - max_depth
        if abs(err) < 0.02:
            break
        c = c + n * err
    return spec


def paint_wall(spec: WallSpec, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fine-grid wall: ``(occupancy, hu, bone_occupancy)``, each ``(F, Y, X)`` float32.

    ``occupancy`` is 0 in the lung, 1 beyond the pleura (soft edge ~0.3 mm); ``hu`` is the wall's
    own value there (layers, ribs)."""
    y, x = grid.yx_mm()
    z = grid.z_fine[:, None, None]
    u, t = wall_depth(spec, y[None], x[None], z)
    w = 0.3
    occ = expit(u / w).astype(np.float32)
    values = [hu for _, hu in spec.layers] + [-1000.0]  # air beyond the skin
    hu = np.full(u.shape, values[0], np.float32)
    edge = 0.0
    for (thick, _), prev, nxt in zip(spec.layers, values[:-1], values[1:]):
        edge += thick
        hu += np.float32(nxt - prev) * expit((u - edge) / w).astype(np.float32)
    # ribs: elliptical section in (depth u, distance across the rib band in the t-z plane)
    ca, sa = math.cos(spec.rib_angle), math.sin(spec.rib_angle)
    across = z * ca - t * sa - spec.rib_phase
    across = (across + spec.rib_pitch / 2) % spec.rib_pitch - spec.rib_pitch / 2
    a, b = spec.rib_half_thick, spec.rib_half_height
    r = np.sqrt(((u - spec.rib_depth) / a) ** 2 + (across / b) ** 2)
    bone = expit((1.0 - r) * min(a, b) / 0.25).astype(np.float32)
    marrow = expit((1.0 - r - spec.cortex_mm / min(a, b)) * min(a, b) / 0.25).astype(np.float32)
    bone_hu = spec.cortex_hu + (spec.marrow_hu - spec.cortex_hu) * marrow
    hu = hu * (1 - bone) + bone_hu * bone
    return occ, hu.astype(np.float32), (bone * occ).astype(np.float32)


# ---------------------------------------------------------------------------- blur and noise


def psf_blur(vol: np.ndarray, px: float, sigma_mm: float) -> np.ndarray:
    """In-plane Gaussian point-spread function, ``sigma_mm`` mm, on a ``(Z, Y, X)`` volume."""
    s = sigma_mm / px
    return ndimage.gaussian_filter(vol, (0, s, s), mode="nearest").astype(np.float32)


def ct_noise(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    px: float,
    sd_hu: float,
    cutoff_cyc_mm: float = 0.6,
    z_sigma_slices: float = 0.0,
) -> np.ndarray:
    """Correlated CT noise of SD ``sd_hu``: white noise shaped in-plane by a filtered-backprojection
    noise power spectrum ``NPS(f) ~ f exp(-(f / cutoff)^2)`` (zero at DC, peak near
    ``cutoff / sqrt 2``), optionally correlated along z (overlapping reconstructions)."""
    z, ny, nx = shape
    white = rng.standard_normal(shape).astype(np.float32)
    fy = np.fft.fftfreq(ny, d=px)[:, None]
    fx = np.fft.rfftfreq(nx, d=px)[None, :]
    f = np.hypot(fy, fx)
    amp = np.sqrt(f * np.exp(-((f / cutoff_cyc_mm) ** 2))).astype(np.float32)
    noise = np.fft.irfft2(np.fft.rfft2(white, axes=(1, 2)) * amp, s=(ny, nx), axes=(1, 2)).astype(np.float32)
    if z_sigma_slices > 0.05 and z > 1:
        noise = ndimage.gaussian_filter1d(noise, z_sigma_slices, axis=0, mode="nearest")
    noise *= np.float32(sd_hu / (noise.std() + 1e-9))
    return noise
