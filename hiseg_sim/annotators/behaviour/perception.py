"""Perception: the mask a person *intends* to draw, from their own idea of the nodule.

A person does not see the ground truth. They have an idea of where the nodule is and where its
edge runs, and that idea differs from anyone else's the way LIDC readers' contours differ. This
module turns one *reference* mask (the person's idea of the nodule; on LIDC calibration the
readers' consensus or one reader) into a random *intended* mask. It never needs anything else
about the truth: no reader masks, no ground truth; only, where the semantic errors need it, the
image a person would look at.

The boundary model (parametric, so it serves on scans with no reader masks)
-------------------------------------------------------------------------------
Readers contour slice by slice, so the edge is modelled per slice, in mm:

1. ``phi``: in-plane signed distance to the reference's outline on each slice, mm, positive
   inside, the outline half a pixel outside the outermost reference pixel (so with no shift
   the reference comes back exactly).
2. A shift in mm is added everywhere: ``s * (bias_mm + bias_sd_mm * b + shift_sd_mm * G(x))``,
   ``b ~ N(0, 1)`` once per draw (this person, this nodule: draws outside or inside), ``G`` a
   smooth unit-variance Gaussian random field with covariance ``exp(-d^2 / (2 corr_len_mm^2))``
   (``d`` in mm across the slice and across slices), and the scale
   ``s = r ** size_exp * (1 + ggo_gain * (5 - texture) / 4 * r ** ggo_size_exp)`` with
   ``r = D / 10 mm``: ``D`` the reference's largest in-plane diameter on its largest slice
   (LIDC's size convention), ``texture`` the LIDC rating 1 (ground glass) ... 5 (solid), times
   the case's difficulty ``exp(difficulty_sd * r ** difficulty_size_exp * z)`` (one ``z ~ N(0, 1)`` per
   case, shared by everyone who annotates it: how hard this edge is beyond size and texture).
   Faint ground-glass and large nodules have wider disagreement in mm, as LIDC readers do.
3. The extent along z: each end moves by ``e = s * (bias_mm + bias_sd_mm * b + z_sd_mm * n)`` mm
   (``n ~ N(0, 1)`` per end), converted to whole slices by stochastic rounding
   (``floor(e / dz + u)``): a positive count adds slices beyond that end (each a copy of the end
   slice shrunk by ``(1 - 0.7 ** j)`` of its inscribed radius, ``j`` = 1, 2, ... away from the
   end), a negative one drops end slices (never the largest slice). With thick slices the
   ends move less often, in slices, for the same uncertainty in mm, as in LIDC.
4. ``phi + shift > 0``, then, for each connected part of the (extent-adjusted) reference, the
   largest connected component (8-connected in plane, slices joined through shared pixels) that
   overlaps it; islands that touch no part of the reference go. Should nothing be
   left, the reference's deepest voxel is returned: a person always intends something.

Semantic errors (:mod:`hiseg_sim.annotators.behaviour.perception_errors`), each with a probability per
case, for group profiles: ``p_wrong_spot`` (intend another bright blob instead: a missed
nodule), ``p_include_vessel``, ``p_miss_ggo_rim``, ``p_pleura_error``. They need ``image_hu``;
without it they do nothing.

All randomness comes from the ``rng`` handed in; the draws happen in a fixed order (four
uniforms for the semantic errors, the case difficulty's normal, the wrong spot's pick if it
happens, then the boundary model and the pleura error's side), so one seed gives one mask.

The expert values come from the LIDC calibration fit
(``agents/calibration/expert_perception.json``, :mod:`hiseg_sim.annotators.behaviour.calibration`);
:func:`expert_params` loads them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from hiseg_sim.annotators.behaviour import perception_errors as E
from hiseg_sim.annotators.behaviour.geometry import reference_diameter_mm
from hiseg_sim.resources import shipped_path
from hiseg_sim.seeding import case_key_rng

__all__ = [
    "PerceptionParams",
    "intended_mask",
    "sample_intents",
    "case_difficulty",
    "boundary_intent",
    "ReferenceGeometry",
    "draw_from_geometry",
    "StandardDraw",
    "standard_draw",
    "realise",
    "estimate_texture",
    "reference_diameter_mm",
    "shift_scale",
    "expert_params",
    "EXPERT_PARAMS_PATH",
    "REFERENCE_DIAMETER_MM",
]

#: The size at which the shift parameters are quoted (mm): ``s = (D / 10 mm) ** size_exp``.
REFERENCE_DIAMETER_MM = 10.0
#: Where :mod:`hiseg_sim.annotators.behaviour.calibration` saves the expert fit.
# In a checkout: agents/calibration/; in an installed wheel: the bundled copy.
EXPERT_PARAMS_PATH = shipped_path("agents", "calibration", "expert_perception.json")
_TAPER = 0.7  # an added end slice j keeps (0.7 ** j) of the end slice's inscribed radius
_FAR = -1.0e3  # phi (mm) on slices with no reference


@dataclass(frozen=True)
class PerceptionParams:
    """Parameters of the perception model (mm unless named otherwise).

    Boundary (``s`` is the size/texture scale of the module docstring):

    - ``bias_mm``: mean edge shift at 10 mm, + outward (draws outside), - inward.
    - ``bias_sd_mm``: SD of this draw's global shift (reader-to-reader systematic difference).
    - ``shift_sd_mm``: SD of the smooth local shift field at 10 mm.
    - ``corr_len_mm``: correlation length of that field (Gaussian covariance length, mm).
    - ``size_exp``: shift ~ ``(D / 10 mm) ** size_exp``; 0 = the same mm for every size.
    - ``ggo_gain``: extra shift for ground glass: x ``(1 + ggo_gain)`` at texture 1, x 1 at 5
      (at 10 mm).
    - ``ggo_size_exp``: how that extra grows with size, ``* (D / 10 mm) ** ggo_size_exp`` (0: the
      same factor at every size). A ground-glass rim is a band of the nodule's own width, so
      where to draw it differs more, relative to a solid edge, the larger the nodule.
    - ``z_sd_mm``: SD of each z end's shift (mm, at 10 mm) beyond the global one.
    - ``difficulty_sd``: SD (at 10 mm) of the log of the case's difficulty, a multiplier on every
      shift that is the same for everyone who annotates the case (how hard this edge is to
      place beyond size and texture: margin, contrast, attached structures), scaled with size as
      ``(D / 10 mm) ** difficulty_size_exp`` (large LIDC nodules vary more in agreement).
    - ``difficulty_floor``: the least that multiplier can be (0: no floor). Without it, an "easy"
      large nodule gets almost no boundary noise and simulated readers agree more than real
      ones ever do (the LIDC >= 20 mm band tops out near Dice 0.90).

    Semantic errors (probability per case) and their knobs:

    - ``p_wrong_spot``: intend another bright blob (> ``blob_hu``) in the field instead.
    - ``p_include_vessel``: take in the bright (> ``vessel_hu``) tubular structure attached to
      the mask, up to ``vessel_reach_mm`` from it.
    - ``p_miss_ggo_rim``: drop the faint (< ``rim_hu``) periphery of the mask.
    - ``p_pleura_error``: at the chest wall (tissue > ``wall_hu``), leak ``pleura_mm`` into it
      (share ``p_pleura_leak``) or stop ``pleura_mm`` short of it.
    """

    # boundary defaults: the LIDC expert fit of 2026-11-24 with the size x texture term
    # (agents/calibration/expert_perception.json, calibration split, 1,512 nodules), rounded;
    # expert_params() reads the file itself
    bias_mm: float = -0.13
    bias_sd_mm: float = 0.22
    shift_sd_mm: float = 0.47
    corr_len_mm: float = 0.7
    size_exp: float = 0.52
    ggo_gain: float = 0.29
    ggo_size_exp: float = 0.81
    z_sd_mm: float = 0.45
    difficulty_sd: float = 0.21
    difficulty_size_exp: float = 0.57
    difficulty_floor: float = 0.4
    p_wrong_spot: float = 0.0
    p_include_vessel: float = 0.0
    p_miss_ggo_rim: float = 0.0
    p_pleura_error: float = 0.0
    p_pleura_leak: float = 0.5
    blob_hu: float = -400.0
    vessel_hu: float = -400.0
    vessel_reach_mm: float = 8.0
    rim_hu: float = -450.0
    wall_hu: float = -300.0
    pleura_mm: float = 2.5

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"PerceptionParams.{f.name} must be a finite number; got {v!r}")
            object.__setattr__(self, f.name, float(v))
        for name in (
            "bias_sd_mm",
            "shift_sd_mm",
            "z_sd_mm",
            "difficulty_sd",
            "ggo_gain",
            "vessel_reach_mm",
            "pleura_mm",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"PerceptionParams.{name} must be >= 0; got {getattr(self, name)}")
        if self.corr_len_mm <= 0:
            raise ValueError(f"PerceptionParams.corr_len_mm must be > 0 mm; got {self.corr_len_mm}")
        for name in ("p_wrong_spot", "p_include_vessel", "p_miss_ggo_rim", "p_pleura_error", "p_pleura_leak"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"PerceptionParams.{name} is a probability in [0, 1]; got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PerceptionParams:
        """Build from a mapping of field names (missing ones keep their defaults; unknown ones raise)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise KeyError(f"unknown perception parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: float(v) for k, v in d.items()})

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def replace(self, **changes) -> PerceptionParams:
        return replace(self, **changes)


def expert_params(path: str | Path | None = None) -> PerceptionParams:
    """The LIDC-calibrated expert parameters (``agents/calibration/expert_perception.json``)."""
    p = Path(path) if path is not None else EXPERT_PARAMS_PATH
    if not p.is_file():
        raise FileNotFoundError(
            f"no calibrated perception parameters at {p}; run `hiseg-sim calibrate` "
            "(hiseg_sim.annotators.behaviour.calibration.fit_expert) to make them"
        )
    return PerceptionParams.from_dict(json.loads(p.read_text())["params"])


# ------------------------------------------------------------------------------- geometry helpers


def _as3d(reference, spacing) -> tuple[np.ndarray, tuple[float, float, float], bool]:
    ref = np.asarray(reference)
    if ref.dtype != np.bool_:
        ref = ref.astype(bool)
    sp = tuple(float(s) for s in spacing)
    if ref.ndim == 2:
        if len(sp) != 2:
            raise ValueError(f"a 2-D (y, x) reference needs spacing (y, x) in mm; got {spacing}")
        return ref[None], (1.0e6, *sp), True  # one slice, no neighbours along z
    if ref.ndim != 3:
        raise ValueError(f"reference must be a 2-D (y, x) or 3-D (z, y, x) mask; got shape {ref.shape}")
    if len(sp) != 3:
        raise ValueError(f"a 3-D (z, y, x) reference needs spacing (z, y, x) in mm; got {spacing}")
    if not all(s > 0 and math.isfinite(s) for s in sp):
        raise ValueError(f"spacing must be positive mm; got {spacing}")
    return ref, sp, False


#: (median HU of the nodule's inner half, texture) pairs: ground glass ~ -600 HU, part-solid
#: mixed, solid 0 ... +70 HU (the phantom's densities, :data:`hiseg_sim.data.phantom_nodule.TEXTURE_HU`).
_TEXTURE_HU = ((-610.0, 1.0), (-450.0, 2.0), (-300.0, 3.0), (-55.0, 4.0), (30.0, 5.0))


def estimate_texture(image_hu: np.ndarray, reference: np.ndarray, spacing=None) -> float:
    """What a reader would rate the texture (1 ground glass ... 5 solid) from the image: the median
    HU of the reference's inner half (voxels deeper than half its maximum in-plane depth), mapped
    piecewise-linearly through :data:`_TEXTURE_HU`. Used only when no texture is given."""
    ref = np.asarray(reference, bool)
    img = np.asarray(image_hu, dtype=np.float32)
    if ref.ndim == 2:
        ref, img = ref[None], img[None]
    if not ref.any():
        return 5.0
    sp = (1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)[-2:]
    depth = np.zeros(ref.shape, np.float32)
    for z in np.flatnonzero(ref.any(axis=(1, 2))):
        depth[z] = ndimage.distance_transform_edt(np.pad(ref[z], 1), sampling=sp)[1:-1, 1:-1]
    core = depth >= 0.5 * depth.max()
    hu = float(np.median(img[core]))
    xs, ts = zip(*_TEXTURE_HU)
    return float(np.interp(hu, xs, ts))


def shift_scale(
    diameter_mm: float,
    texture: float | None,
    params: PerceptionParams,
    difficulty_z: float = 0.0,
    difficulty_log: float = 0.0,
) -> float:
    """The scale ``s`` of every shift, with ``r = D / 10 mm``: ``r ** size_exp * (1 + ggo_gain *
    (5 - texture) / 4 * r ** ggo_size_exp) * max(exp(difficulty_log + difficulty_sd * r **
    difficulty_size_exp * difficulty_z), difficulty_floor)``. ``difficulty_log`` is the part of
    the case's difficulty its nodule's own features predict
    (:mod:`~hiseg_sim.annotators.behaviour.difficulty`), ``difficulty_z`` the rest."""
    r = max(float(diameter_mm), 1.0) / REFERENCE_DIAMETER_MM
    t = 5.0 if texture is None else float(np.clip(texture, 1.0, 5.0))
    s = r**params.size_exp * (1.0 + params.ggo_gain * (5.0 - t) / 4.0 * r**params.ggo_size_exp)
    if (difficulty_z and params.difficulty_sd) or difficulty_log:
        s *= max(
            math.exp(
                float(difficulty_log) + params.difficulty_sd * r**params.difficulty_size_exp * float(difficulty_z)
            ),
            params.difficulty_floor,
        )
    return s


def _slice_phi(mask2d: np.ndarray, sp_yx: tuple[float, float]) -> np.ndarray:
    """In-plane signed distance (mm, + inside) to the outline half a pixel outside the mask."""
    h = 0.5 * min(sp_yx)
    m = np.pad(mask2d, 1)  # outside the array is not nodule
    din = ndimage.distance_transform_edt(m, sampling=sp_yx)[1:-1, 1:-1]
    dout = ndimage.distance_transform_edt(~m, sampling=sp_yx)[1:-1, 1:-1]
    return np.where(mask2d, din - h, h - dout).astype(np.float32)


@lru_cache(maxsize=256)
def _kernel_norm(sigma_vox: float) -> float:
    """Sum of squared weights of scipy's 1-D Gaussian kernel (truncate 4), for unit-variance fields."""
    if sigma_vox <= 0:
        return 1.0
    r = int(4.0 * sigma_vox + 0.5)
    delta = np.zeros(2 * r + 1)
    delta[r] = 1.0
    k = ndimage.gaussian_filter1d(delta, sigma_vox, mode="constant", truncate=4.0)
    return float((k**2).sum())


def _unit_field(rng: np.random.Generator, shape: tuple[int, ...], spacing, corr_len_mm: float) -> np.ndarray:
    """A unit-variance Gaussian random field on ``shape`` with covariance ``exp(-d^2 / (2 L^2))``
    (white noise convolved with a Gaussian of SD ``L / sqrt(2)`` mm; generated with a margin so
    the crop's edges are not special)."""
    sig = [corr_len_mm / math.sqrt(2.0) / s for s in spacing]
    sig = [s if s >= 0.05 else 0.0 for s in sig]
    pad = [int(math.ceil(3.0 * s)) for s in sig]
    noise = rng.standard_normal(tuple(n + 2 * p for n, p in zip(shape, pad))).astype(np.float32)
    field = ndimage.gaussian_filter(noise, sig, mode="reflect", truncate=4.0)
    field /= math.sqrt(float(np.prod([_kernel_norm(s) for s in sig])))
    return field[tuple(slice(p, p + n) for p, n in zip(pad, shape))]


_STRUCT = np.zeros((3, 3, 3), bool)
_STRUCT[1] = True
_STRUCT[0, 1, 1] = _STRUCT[2, 1, 1] = True


def largest_overlapping_component(mask: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """For each connected part of ``reference``, the largest connected component of ``mask`` that
    overlaps it (8-connected in plane, slices joined through shared pixels); the union of those.
    Islands that touch no part of the reference go. When nothing overlaps, the largest component.
    A one-piece reference gives one piece; with no change, a reference comes back whole."""
    struct = _STRUCT if mask.ndim == 3 else np.ones((3, 3), bool)
    lab, n = ndimage.label(mask, struct)
    if n <= 1:
        return mask.copy()
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    rlab, rn = ndimage.label(reference, struct)
    both = (rlab > 0) & (lab > 0)
    if not both.any():
        return lab == int(np.argmax(sizes))
    code = np.unique(rlab[both].astype(np.int64) * (n + 1) + lab[both])  # (reference part, mask component)
    parts, comps = code // (n + 1), code % (n + 1)
    keep = set()
    for r in np.unique(parts):
        c = comps[parts == r]
        keep.add(int(c[np.argmax(sizes[c])]))
    if len(keep) == 1:
        return lab == keep.pop()
    return np.isin(lab, sorted(keep))


# --------------------------------------------------------------------------------- boundary model


@dataclass(frozen=True, eq=False)
class ReferenceGeometry:
    """What the boundary model precomputes from a reference: the in-plane signed distance of
    each of its slices on a box around it. It depends on the reference and the spacing only (and
    on ``margin_mm``, how far outside the reference the box reaches, in plane and along z), so
    many draws can share it.

    ``phi``: ``float32`` ``(Zb, Yb, Xb)`` mm, + inside, ``-1000`` on slices without reference;
    ``box``: ``(z0, z1, y0, y1, x0, x1)``, the box in the reference grid (ends exclusive);
    ``z_lo, z_hi, key``: first, last and largest reference slice (reference grid).
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    box: tuple[int, int, int, int, int, int]
    z_lo: int
    z_hi: int
    key: int
    phi: np.ndarray
    diameter_mm: float
    margin_mm: float

    @classmethod
    def from_mask(cls, reference: np.ndarray, spacing, margin_mm: float = 6.0) -> ReferenceGeometry:
        """``reference``: non-empty ``bool`` ``(Z, Y, X)``; ``spacing``: ``(z, y, x)`` mm."""
        ref = np.asarray(reference, dtype=bool)
        if ref.ndim != 3 or not ref.any():
            raise ValueError("ReferenceGeometry needs a non-empty 3-D (z, y, x) mask")
        dz, py, px = (float(v) for v in spacing)
        idx = [np.flatnonzero(ref.any(axis=ax)) for ax in ((1, 2), (0, 2), (0, 1))]
        lo, hi = [int(i[0]) for i in idx], [int(i[-1]) + 1 for i in idx]
        mz = int(math.ceil(margin_mm / dz)) + 1 if dz < 1e5 else 0
        my, mx = int(math.ceil(margin_mm / py)) + 1, int(math.ceil(margin_mm / px)) + 1
        box = tuple(v for lw, h, m, n in zip(lo, hi, (mz, my, mx), ref.shape) for v in (max(0, lw - m), min(n, h + m)))
        z0, z1, y0, y1, x0, x1 = box
        phi = np.full((z1 - z0, y1 - y0, x1 - x0), _FAR, np.float32)
        for z in range(lo[0], hi[0]):
            sl = ref[z, y0:y1, x0:x1]
            if sl.any():
                phi[z - z0] = _slice_phi(sl, (py, px))
        return cls(
            tuple(ref.shape),
            (dz, py, px),
            box,
            lo[0],
            hi[0] - 1,
            int(ref.sum(axis=(1, 2)).argmax()),
            phi,
            reference_diameter_mm(ref, (dz, py, px)),
            float(margin_mm),
        )

    @property
    def box_slices(self) -> tuple[slice, slice, slice]:
        z0, z1, y0, y1, x0, x1 = self.box
        return slice(z0, z1), slice(y0, y1), slice(x0, x1)

    def to_full(self, box_mask: np.ndarray) -> np.ndarray:
        """A box-shaped mask placed on the reference grid."""
        out = np.zeros(self.shape, bool)
        out[self.box_slices] = box_mask
        return out


@dataclass(frozen=True, eq=False)
class StandardDraw:
    """The standardised random variates of one boundary draw: ``b`` (global shift), ``n_end``
    (the two z ends), ``u_end`` (their stochastic rounding) and ``field``, a unit-variance random
    field on the geometry's box for one ``corr_len_mm`` (``None`` when no field is needed)."""

    b: float
    n_end: tuple[float, float]
    u_end: tuple[float, float]
    field: np.ndarray | None
    corr_len_mm: float


def standard_draw(
    geom: ReferenceGeometry, rng: np.random.Generator, corr_len_mm: float, with_field: bool = True
) -> StandardDraw:
    """Draw, in order, ``b``, the two ``n_end``, the two ``u_end``, then the field."""
    b = float(rng.standard_normal())
    n_end = tuple(float(v) for v in rng.standard_normal(2))
    u_end = tuple(float(v) for v in rng.random(2))
    field = _unit_field(rng, geom.phi.shape, geom.spacing, corr_len_mm) if with_field else None
    return StandardDraw(b, n_end, u_end, field, float(corr_len_mm))


def realise(
    geom: ReferenceGeometry,
    params: PerceptionParams,
    draw: StandardDraw,
    texture: float | None = None,
    *,
    allow_z: bool = True,
    difficulty_z: float = 0.0,
    difficulty_log: float = 0.0,
) -> np.ndarray | None:
    """The intended mask of one draw, on the geometry's box (``bool``, ``geom.phi.shape``).

    ``None`` when the draw would reach beyond the box where the box does not already span the
    reference grid (rebuild the geometry with a larger ``margin_mm``). ``draw.field`` must be
    for ``params.corr_len_mm`` (it is not checked when ``shift_sd_mm`` is 0).
    """
    if params.shift_sd_mm > 0 and (draw.field is None or abs(draw.corr_len_mm - params.corr_len_mm) > 1e-9):
        raise ValueError("the draw's field was made for another corr_len_mm (or without a field)")
    dz, py, px = geom.spacing
    z0, z1, y0, y1, x0, x1 = geom.box
    Z, Y, X = geom.shape
    s = shift_scale(geom.diameter_mm, texture, params, difficulty_z, difficulty_log)
    glob = s * (params.bias_mm + params.bias_sd_mm * draw.b)  # this draw's global shift, mm
    if (y0 > 0 or x0 > 0 or y1 < Y or x1 < X) and _reach_mm(glob, s, params) > geom.margin_mm:
        return None
    z_lo, z_hi, key = geom.z_lo, geom.z_hi, geom.key
    move = [0, 0]  # slices added (+) / dropped (-) at the low and the high end
    if allow_z:
        for i in range(2):
            e = glob + s * params.z_sd_mm * draw.n_end[i]
            move[i] = int(math.floor(e / dz + draw.u_end[i]))
        move[0] = int(max(move[0], -(key - z_lo)))  # never drop the key slice
        move[1] = int(max(move[1], -(z_hi - key)))
        if (move[0] > z_lo - z0 and z0 > 0) or (move[1] > z1 - 1 - z_hi and z1 < Z):
            return None
        move[0] = min(move[0], z_lo - z0)  # the box reaches the end of the grid: stop there
        move[1] = min(move[1], z1 - 1 - z_hi)
    new_lo, new_hi = z_lo - move[0], z_hi + move[1]

    phi = np.full(geom.phi.shape, _FAR, np.float32)
    a, c = max(new_lo, z_lo), min(new_hi, z_hi)
    phi[a - z0 : c - z0 + 1] = geom.phi[a - z0 : c - z0 + 1]
    h = 0.5 * min(py, px)
    for z_end, step, count in ((z_lo, -1, move[0]), (z_hi, 1, move[1])):
        if count <= 0:
            continue
        base = geom.phi[z_end - z0]
        top = float(base.max())
        for j in range(1, count + 1):
            cut = (1.0 - _TAPER**j) * (top + h)
            if top - cut <= 0:  # never add an empty slice: keep the deepest pixel(s)
                cut = top - 1e-3
            phi[z_end + step * j - z0] = base - np.float32(cut)
    ref_box = phi > 0

    if params.shift_sd_mm > 0:
        m = (phi + np.float32(glob) + np.float32(s * params.shift_sd_mm) * draw.field) > 0
    else:
        m = (phi + np.float32(glob)) > 0
    m &= phi > _FAR / 2  # slices outside the chosen extent stay empty
    if m.any():
        return largest_overlapping_component(m, ref_box)
    return (phi >= phi.max()) & ref_box


def _reach_mm(glob: float, s: float, params: PerceptionParams) -> float:
    """How far outside the reference a draw can reach (mm): the global shift plus 4 field SDs."""
    return max(glob, 0.0) + s * 4.0 * params.shift_sd_mm


def draw_from_geometry(
    geom: ReferenceGeometry,
    params: PerceptionParams,
    rng: np.random.Generator,
    texture: float | None = None,
    *,
    allow_z: bool = True,
    difficulty_z: float = 0.0,
    difficulty_log: float = 0.0,
) -> np.ndarray | None:
    """One draw on a precomputed geometry, on the full reference grid; ``None`` as :func:`realise`."""
    draw = standard_draw(geom, rng, params.corr_len_mm, with_field=params.shift_sd_mm > 0)
    m = realise(geom, params, draw, texture, allow_z=allow_z, difficulty_z=difficulty_z, difficulty_log=difficulty_log)
    return None if m is None else geom.to_full(m)


def boundary_intent(
    reference: np.ndarray,
    spacing,
    params: PerceptionParams,
    rng: np.random.Generator,
    texture: float | None = None,
    *,
    allow_z: bool = True,
    difficulty_z: float = 0.0,
    difficulty_log: float = 0.0,
) -> np.ndarray:
    """The boundary model alone (steps 1-4 of the module docstring) on a 3-D ``(Z, Y, X)`` mask.

    ``spacing``: ``(z, y, x)`` mm. ``allow_z=False`` keeps the reference's slices (2-D use).
    ``difficulty_z``: the case's standard-normal difficulty (:func:`case_difficulty`);
    ``difficulty_log``: the log difficulty its nodule's features predict (0: none).
    """
    ref = np.asarray(reference, dtype=bool)
    if not ref.any():
        return np.zeros(ref.shape, bool)
    # a box wide enough for a shift of 4.5 SD (global and local or z-end together) + 2 pixels
    s = shift_scale(reference_diameter_mm(ref, spacing), texture, params, difficulty_z, difficulty_log)
    sd = params.bias_sd_mm + max(params.shift_sd_mm, params.z_sd_mm if allow_z else 0.0)
    margin = s * (max(params.bias_mm, 0.0) + 4.5 * sd) + 2.0 * max(spacing[1:])
    geom = ReferenceGeometry.from_mask(ref, spacing, margin_mm=margin)
    state = rng.bit_generator.state
    out = draw_from_geometry(
        geom, params, rng, texture, allow_z=allow_z, difficulty_z=difficulty_z, difficulty_log=difficulty_log
    )
    if out is None:  # a very rare wide draw: redo it, from the same random state, on a wider box
        rng.bit_generator.state = state
        geom = ReferenceGeometry.from_mask(ref, spacing, margin_mm=3.0 * margin + 10.0)
        out = draw_from_geometry(
            geom, params, rng, texture, allow_z=allow_z, difficulty_z=difficulty_z, difficulty_log=difficulty_log
        )
        if out is None:
            rng.bit_generator.state = state
            geom = ReferenceGeometry.from_mask(ref, spacing, margin_mm=float(max(ref.shape) * max(spacing)))
            out = draw_from_geometry(
                geom, params, rng, texture, allow_z=allow_z, difficulty_z=difficulty_z, difficulty_log=difficulty_log
            )
    return out


# ------------------------------------------------------------------------------------ public API


def intended_mask(
    reference,
    spacing,
    params: PerceptionParams | None = None,
    rng: np.random.Generator | None = None,
    image_hu: np.ndarray | None = None,
    texture: float | None = None,
    difficulty_z: float | None = None,
    difficulty_log: float = 0.0,
) -> np.ndarray:
    """One draw of the mask a person intends, from their idea of the nodule.

    Args:
        reference: ``bool`` ``(Z, Y, X)`` or ``(Y, X)``: the person's own idea of the nodule (on
            LIDC calibration: the consensus or one reader). Nothing else about the truth is used.
        spacing: voxel size in mm in the same axis order, ``(z, y, x)`` or ``(y, x)``.
        params: :class:`PerceptionParams` (default: its defaults, the rounded LIDC expert fit;
            :func:`expert_params` gives the saved fit exactly).
        rng: the only source of randomness (required; ``None`` raises).
        image_hu: the image on the same grid (HU), for the semantic errors and, when ``texture``
            is not given, to estimate the texture (:func:`estimate_texture`).
        texture: LIDC texture rating 1 (ground glass) ... 5 (solid) the person would give;
            default from the image, else solid.
        difficulty_z: the case's standard-normal difficulty, shared by everyone who annotates it
            (:func:`case_difficulty`); default: drawn from ``rng``, which is right for one person
            on a case, not for a panel (pass one value to all of them).
        difficulty_log: the log difficulty the nodule's own features predict
            (:func:`hiseg_sim.annotators.behaviour.difficulty.case_log_difficulty`); 0: none.

    Returns:
        ``bool`` mask of the reference's shape. Empty only when the reference is empty.
    """
    if rng is None:
        raise ValueError("intended_mask needs an explicit numpy.random.Generator (rng=...)")
    params = PerceptionParams() if params is None else params
    ref, sp, was2d = _as3d(reference, spacing)
    img = None
    if image_hu is not None:
        img = np.asarray(image_hu, dtype=np.float32)
        img = img[None] if was2d else img
        if img.shape != ref.shape:
            raise ValueError(
                f"image_hu has shape {img.shape[1:] if was2d else img.shape}, the reference "
                f"{ref.shape[1:] if was2d else ref.shape}: they must share one grid"
            )
    if not ref.any():
        return np.zeros(np.shape(reference), bool)
    u = rng.random(4)  # wrong spot, vessel, GGO rim, pleura: always drawn, so the stream is fixed
    zd = float(rng.standard_normal())  # the case difficulty, used when none is given
    difficulty_z = zd if difficulty_z is None else float(difficulty_z)
    if img is not None and u[0] < params.p_wrong_spot:
        alt = E.wrong_spot(ref, img, sp, params, rng)
        if alt is not None:
            ref = alt
    if texture is None and img is not None:
        texture = estimate_texture(img, ref, sp)
    mask = boundary_intent(
        ref, sp, params, rng, texture, allow_z=not was2d, difficulty_z=difficulty_z, difficulty_log=difficulty_log
    )
    if img is not None and (u[1:] < (params.p_include_vessel, params.p_miss_ggo_rim, params.p_pleura_error)).any():
        if u[1] < params.p_include_vessel:
            mask = E.include_vessel(mask, img, sp, params)
        if u[2] < params.p_miss_ggo_rim:
            mask = E.miss_ggo_rim(mask, img, sp, params)
        if u[3] < params.p_pleura_error:
            mask = E.pleura_error(mask, img, sp, params, rng)
    return mask[0] if was2d else mask


def case_difficulty(rng: np.random.Generator | None = None, key: str | None = None) -> float:
    """A case's standard-normal difficulty ``z`` (the shifts scale by ``exp(difficulty_sd * (D/10)
    ** difficulty_size_exp * z)``): from ``rng``, or stably from ``key`` (e.g. the case id), so
    every simulated person on the case shares it."""
    if (rng is None) == (key is None):
        raise ValueError("case_difficulty takes exactly one of rng or key")
    if rng is None:
        rng = case_key_rng(str(key))
    return float(rng.standard_normal())


def sample_intents(
    reference,
    spacing,
    params: PerceptionParams,
    rng: np.random.Generator,
    k: int,
    image_hu: np.ndarray | None = None,
    texture: float | None = None,
) -> list[np.ndarray]:
    """``k`` people with the same idea of one case: one case difficulty (drawn first), then ``k``
    intended masks in draw order."""
    z = case_difficulty(rng)
    return [
        intended_mask(reference, spacing, params, rng, image_hu=image_hu, texture=texture, difficulty_z=z)
        for _ in range(int(k))
    ]
