"""What a worked example shows a person: their own intent beside the expert's outline, on one image.

After a case a teacher may show the expert's mask (a *worked example*). The person lays it beside
what they themselves meant to outline on the same image and sees where the two differ. Only what
they could see enters: the image, their intent, the example. :func:`read_example` returns the
:class:`Lessons` of one example; :func:`hiseg_sim.annotators.behaviour.learning.learn_from_example`
turns them into a change of the person's perception.

What the comparison can show (``over``: intent outside the example, ``under``: example outside the
intent; pixels within one pixel of the other outline never count, that is where any line sits):

==============  ================================================================================
kind            seen as
==============  ================================================================================
``wrong_spot``  the intent and the example hardly overlap (under ``WRONG_SPOT_OVERLAP`` of either):
                the person outlined something else
``vessel``      ``over`` that is bright (> ``vessel_hu``), thin (gone after an opening of radius
                ``TUBE_MAX_RADIUS_MM``: elongated, not a blob) and joined to the example through
                the intent: an attached vessel taken in
``pleura``      at the chest wall (soft tissue > ``wall_hu`` thick enough to survive an opening of
                ``WALL_MIN_RADIUS_MM``, within ``CONTACT_MM`` of the example): ``over`` inside the
                wall, or ``under`` within ``pleura_mm`` of it: the pleural edge misplaced
``ggo_rim``     the rest of ``under`` at ground-glass density (``GGO_LOW_HU`` to ``rim_hu``): a
                faint rim left out
``edge``        along the rest of both outlines, the signed distance of the intent's edge from the
                example's (+: drawn too wide): its mean beyond half a pixel (``bias_mm``) and its
                spread beyond the pixel grid (``wander_mm``)
==============  ================================================================================

How clearly: each semantic kind's clarity is ``1 - exp(-area / AREA_SCALE_MM2)`` of the area that
shows it, the edge's ``min(1, wander_mm / WANDER_SCALE_MM)``; so a long vessel taken in teaches
more than a nub, and an example on which the person made no error of a kind teaches nothing about it.

Whether the example can be read at all (``credibility``, :func:`credibility`): an outline teaches
only where it can be seen to outline something. Its *support* is the share of the example's
outline along which the image is denser just inside than just outside (by ``EDGE_CONTRAST_HU``,
local means over ``RING_MM``); it must be high (credibility rises linearly from 0 at
``SUPPORT_LO`` to 1 at ``SUPPORT_HI``) and the outline must sit on the edges it follows: moved
by ``SHIFTS_PX`` pixels in any of eight directions it must fit the image no better (credibility
falls to 0 as the best shifted support exceeds the outline's own by ``ALIGN_BAND``). An expert's
outline of a nodule follows its edge; a mask of the same area centred in the view (the
``worked_example_uninformative`` control) lies a few pixels off the nodule, which a shift would
fit better, so it teaches (nearly) nothing, whatever it differs from. On the default cohort's
viewports (key slices, the env's detection noise) the mean credibility is about 0.67 for the
expert masks and 0.02 for those discs.

Arrays are 2-D ``(H, W)`` (one slice; :func:`key_slice_of` picks the example's largest slice of a
3-D slab); spacing ``(y, x)`` mm; thresholds in HU of the image smoothed by 0.5 mm, as in
:mod:`~hiseg_sim.annotators.behaviour.perception_errors`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from hiseg_sim.annotators.behaviour.perception import _slice_phi
from hiseg_sim.annotators.behaviour.perception_errors import (
    CONTACT_MM,
    TUBE_MAX_RADIUS_MM,
    WALL_MIN_RADIUS_MM,
    _dist,
    _opening,
    _smooth,
)

__all__ = [
    "ALIGN_BAND",
    "AREA_SCALE_MM2",
    "EDGE_CONTRAST_HU",
    "GGO_LOW_HU",
    "Lessons",
    "RING_MM",
    "SHIFTS_PX",
    "SUPPORT_HI",
    "SUPPORT_LO",
    "WANDER_SCALE_MM",
    "WRONG_SPOT_OVERLAP",
    "credibility",
    "key_slice_of",
    "outline_support",
    "read_example",
]

#: An outline pixel is on an edge where the image inside is denser than outside by this much (HU).
#: Ground glass (about -600 HU) against inflated lung (-850 to -910 HU) clears it; noise does not.
EDGE_CONTRAST_HU = 120.0
#: Width (mm) of the rings inside and outside the outline whose local means are compared.
RING_MM = 1.5
#: Outline support at and below which an example is unreadable, and at and above which fully readable.
SUPPORT_LO, SUPPORT_HI = 0.3, 0.6
#: Shifts (pixels, in eight directions) an outline must fit the image no better at ...
SHIFTS_PX = (2, 3)
#: ... credibility falling to 0 as the best shifted support exceeds the outline's own by this much.
ALIGN_BAND = 0.15
#: Intent and example overlapping by less than this share of either: another structure was outlined.
WRONG_SPOT_OVERLAP = 0.1
#: Area (mm^2) at which a semantic error is shown with clarity 1 - 1/e (about 8 pixels at 0.7 mm).
AREA_SCALE_MM2 = 4.0
#: Spread (mm) of the edge beyond the pixel grid at which the wander is shown with clarity 1.
WANDER_SCALE_MM = 1.0
#: Lower bound of ground-glass density (HU): above inflated lung (-850 to -910 HU).
GGO_LOW_HU = -750.0


@dataclass(frozen=True)
class Lessons:
    """What one worked example showed (clarities in [0, 1]; see the module docstring).

    Attributes:
        credibility: how far the example can be read as an outline of something in the image.
        support: the share of the example's outline that runs along an edge.
        wrong_spot, vessel, pleura, ggo_rim: clarity of each semantic error.
        edge: clarity of the edge's wander beyond the pixel grid.
        bias_mm: mean offset of the intent's edge from the example's beyond half a pixel, mm
            (+: drawn too wide).
        areas_mm2: the area that showed each semantic error.
    """

    credibility: float = 0.0
    support: float = 0.0
    wrong_spot: float = 0.0
    vessel: float = 0.0
    pleura: float = 0.0
    ggo_rim: float = 0.0
    edge: float = 0.0
    bias_mm: float = 0.0
    areas_mm2: dict | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def key_slice_of(example: np.ndarray) -> int:
    """The slice of a ``(n, H, W)`` example with the most pixels (a 2-D example: 0)."""
    ex = np.asarray(example, bool)
    return 0 if ex.ndim == 2 else int(ex.reshape(ex.shape[0], -1).sum(axis=1).argmax())


def _as3(a: np.ndarray) -> np.ndarray:
    return np.asarray(a)[None]


def _sp3(spacing_yx) -> tuple[float, float, float]:
    return (1.0e6, float(spacing_yx[0]), float(spacing_yx[1]))  # one slice: nothing connects along z


def _local_mean(img: np.ndarray, where: np.ndarray, sigma_px: tuple[float, float]) -> np.ndarray:
    w = ndimage.gaussian_filter(where.astype(np.float32), sigma_px)
    v = ndimage.gaussian_filter(np.where(where, img, 0.0).astype(np.float32), sigma_px)
    return np.divide(v, w, out=np.full(img.shape, np.nan, np.float32), where=w > 1e-3)


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def outline_support(image_hu: np.ndarray, example: np.ndarray, spacing_yx, smoothed: np.ndarray | None = None) -> float:
    """Share of the example's outline along which the image is denser just inside than just
    outside by at least :data:`EDGE_CONTRAST_HU` (0 for an empty example)."""
    ex = np.asarray(example, bool)
    if not ex.any():
        return 0.0
    img = _smooth(_as3(image_hu), _sp3(spacing_yx))[0] if smoothed is None else smoothed
    k = [max(1, int(round(RING_MM / float(s)))) for s in spacing_yx]
    st = np.ones((2 * k[0] + 1, 2 * k[1] + 1), bool)
    inner = ex & ~ndimage.binary_erosion(ex, st, border_value=0)
    outer = ndimage.binary_dilation(ex, st) & ~ex
    sig = (k[0] / 2.0, k[1] / 2.0)
    contrast = _local_mean(img, inner, sig) - _local_mean(img, outer, sig)
    line = _outline(ex)
    c = contrast[line]
    return float(np.mean(np.nan_to_num(c, nan=0.0) >= EDGE_CONTRAST_HU))


def credibility(
    image_hu: np.ndarray, example: np.ndarray, spacing_yx, smoothed: np.ndarray | None = None
) -> tuple[float, float]:
    """``(support, credibility)`` of an outline on an image (see the module docstring)."""
    ex = np.asarray(example, bool)
    img = _smooth(_as3(image_hu), _sp3(spacing_yx))[0] if smoothed is None else smoothed
    support = outline_support(image_hu, ex, spacing_yx, smoothed=img)
    readable = float(np.clip((support - SUPPORT_LO) / (SUPPORT_HI - SUPPORT_LO), 0.0, 1.0))
    if readable == 0.0:
        return support, 0.0
    shifted = max(
        outline_support(image_hu, np.roll(ex, (r * dy, r * dx), axis=(0, 1)), spacing_yx, smoothed=img)
        for r in SHIFTS_PX
        for dy in (-1, 0, 1)
        for dx in (-1, 0, 1)
        if (dy, dx) != (0, 0)
    )
    return support, readable * float(np.clip(1.0 - (shifted - support) / ALIGN_BAND, 0.0, 1.0))


def _clarity(area_mm2: float) -> float:
    return float(1.0 - math.exp(-max(area_mm2, 0.0) / AREA_SCALE_MM2))


def read_example(image_hu: np.ndarray, intent: np.ndarray, example: np.ndarray, spacing_yx, params) -> Lessons:
    """The :class:`Lessons` of one worked example.

    Args:
        image_hu: the image the example was drawn on, ``(H, W)`` HU.
        intent: what the person meant to outline on it, ``bool`` ``(H, W)``.
        example: the outline shown, ``bool`` ``(H, W)``.
        spacing_yx: pixel size ``(y, x)`` mm.
        params: the person's :class:`~hiseg_sim.annotators.behaviour.perception.PerceptionParams`
            (its thresholds ``vessel_hu``, ``rim_hu``, ``wall_hu`` and ``pleura_mm``: what looks
            bright, faint or like chest wall to them).
    """
    own = np.asarray(intent, bool)
    ex = np.asarray(example, bool)
    if own.shape != ex.shape or np.shape(image_hu) != ex.shape or own.ndim != 2:
        raise ValueError(
            f"read_example takes 2-D image, intent and example of one shape; got "
            f"{np.shape(image_hu)}, {own.shape}, {ex.shape}"
        )
    if not own.any() or not ex.any():
        return Lessons()
    sp3 = _sp3(spacing_yx)
    img = _smooth(_as3(image_hu), sp3)[0]
    support, cred = credibility(image_hu, ex, spacing_yx, smoothed=img)
    px_area = float(spacing_yx[0]) * float(spacing_yx[1])
    px = float(min(spacing_yx))
    both = np.count_nonzero(own & ex)
    if both < WRONG_SPOT_OVERLAP * min(np.count_nonzero(own), np.count_nonzero(ex)):
        return Lessons(credibility=cred, support=support, wrong_spot=1.0, areas_mm2={})

    d_to_ex = _dist(_as3(ex), sp3)[0]
    d_to_own = _dist(_as3(own), sp3)[0]
    over = own & ~ex & (d_to_ex > px)
    under = ex & ~own & (d_to_own > px)

    # an attached vessel taken in: bright, thin, and joined to the example through the intent
    bright = img > params.vessel_hu
    thick = _opening(_as3(bright), TUBE_MAX_RADIUS_MM, sp3)[0]
    thick |= _dist(_as3(thick), sp3)[0] <= 1.0  # the ragged edge of the nodule or wall
    lab, n = ndimage.label(own & ~ex & bright, np.ones((3, 3), bool))
    joined = np.unique(lab[(lab > 0) & (d_to_ex <= CONTACT_MM)])
    vessel = np.isin(lab, joined[joined > 0]) & over & ~thick

    # the chest wall: thick soft tissue outside the example, touching it
    tissue = img > params.wall_hu
    wall = _opening(_as3(tissue & ~ex), WALL_MIN_RADIUS_MM, sp3)[0]
    lab, n = ndimage.label(wall, np.ones((3, 3), bool))
    near = np.unique(lab[(lab > 0) & (d_to_ex <= CONTACT_MM)])
    wall = np.isin(lab, near[near > 0])
    if wall.any():
        d_to_wall = _dist(_as3(wall), sp3)[0]
        pleura = (over & wall) | (under & (d_to_wall <= params.pleura_mm + px))
    else:
        pleura = np.zeros_like(ex)

    # a faint rim left out: the example's ground-glass pixels outside the intent
    rim = under & ~pleura & (img >= GGO_LOW_HU) & (img < params.rim_hu)

    # the edge elsewhere: signed distance of each outline from the other (+: intent too wide)
    semantic = vessel | pleura | rim
    away = ~ndimage.binary_dilation(semantic, iterations=1) if semantic.any() else np.ones_like(ex)
    li, le = _outline(own) & away, _outline(ex) & away
    sy_sx = (float(spacing_yx[0]), float(spacing_yx[1]))
    d = np.concatenate([-_slice_phi(ex, sy_sx)[li], _slice_phi(own, sy_sx)[le]])
    bias = wander = 0.0
    if d.size >= 4:
        mean = float(d.mean())
        half = 0.5 * px
        bias = math.copysign(max(abs(mean) - half, 0.0), mean)
        wander = math.sqrt(max(float(((d - mean) ** 2).mean()) - half**2, 0.0))  # beyond the pixel grid
    areas = {
        "vessel": float(vessel.sum() * px_area),
        "pleura": float(pleura.sum() * px_area),
        "ggo_rim": float(rim.sum() * px_area),
    }
    return Lessons(
        credibility=cred,
        support=support,
        vessel=_clarity(areas["vessel"]),
        pleura=_clarity(areas["pleura"]),
        ggo_rim=_clarity(areas["ggo_rim"]),
        edge=float(min(1.0, wander / WANDER_SCALE_MM)),
        bias_mm=float(bias),
        areas_mm2=areas,
    )
