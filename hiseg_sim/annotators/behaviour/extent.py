"""Where the nodule starts and ends: a person's own judgement of the extent along z, from the image.

Readers disagree about the first and last slice of a nodule because its poles are faint: the
slice profile averages the thin cap of the nodule with the lung around it (partial volume), so
the end slices show a small, pale blob that one reader counts and another does not. A simulated
person judges the extent the same way, from what the slices show:

1. *Key slice*: they start where they find the nodule largest (the slice of their intent with the
   largest area; ties: the one nearest where they were put).
2. *Visibility* of a slice ``z`` (:func:`slice_visibility`): on the image smoothed over
   ``SMOOTH_MM`` (a reader integrates over about a pixel; single noisy pixels do not read as
   nodule), the contrast inside the outline they saw on the neighbouring slice toward the key
   slice (past their intent's ends, the last outline on the way), each pixel's contrast being its
   share of the way from the lung around it (the darker quartile of a ring 2-6 mm outside the
   outline, on that slice) to the nodule's mean density on the key slice, clipped to [0, 1]; the
   visibility is the mean over the brightest half of those pixels (``LOOK_SHARE``; at least a
   blob ``BLOB_MM`` across): about 1 where solid nodule fills at least half the outline above, 0
   for lung, and low on a pole slice that the partial volume makes pale or small. Past the
   slices of their intent, bright structures that run on beyond the outline (they reach
   ``AROUND_MM`` past it: the chest wall beside a juxtapleural nodule, a vessel crossing its
   place) do not count (:func:`_runs_on`): a pole is a blob of its own inside the outline above.
3. *Judgement* (:func:`judge_extent`): scrolling away from the key slice, a slice shows nodule
   when ``v + e >= threshold``, ``e ~ N(0, sd)`` a fresh draw per slice looked at; the extent ends
   at the last slice that shows it, the first one that does not being the slice past the end
   they looked at to check it had ended.

``threshold`` and ``sd`` (:class:`ExtentParams`) are fitted so a simulated expert disagrees with
the LIDC readers about the first and last slice as much as the readers disagree with each other
(:mod:`hiseg_sim.annotators.behaviour.extent_fit`, ``agents/calibration/expert_extent.json``);
nothing here reads the ground truth or the slices the intent covers: the intent gives only the
key slice and where on each slice the person looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

__all__ = [
    "ExtentParams",
    "Extent",
    "key_slice",
    "extent_from_visibility",
    "slice_visibility",
    "judge_extent",
    "extent_of",
    "visible_target",
]

#: assumption: a reader integrates the image over about a pixel (0.7 mm), so a lone noisy pixel
#: does not read as nodule.
SMOOTH_MM = 0.7
#: assumption: the smallest blob a reader counts as nodule is about 3 mm across (the LIDC protocol
#: outlines nodules from 3 mm; smaller ones are marked, not outlined).
BLOB_MM = 3.0
#: assumption: a person sees the nodule go on when at least half the outline above it is still
#: filled: the visibility is the mean over the brightest half of the footprint (at least a blob).
LOOK_SHARE = 0.5
#: assumption: below 50 HU of contrast between nodule and lung nothing reads as nodule.
MIN_CONTRAST_HU = 50.0
#: assumption: past the slices they meant to outline, a person looks this far around the last
#: outline to see whether what is bright there is a blob of its own or the cut of a structure
#: that runs on (the chest wall, a vessel): one that reaches this far past the outline runs on.
AROUND_MM = 4.0
#: assumption: the width of the band at ``AROUND_MM`` in which a structure counts as reaching it.
SLACK_MM = 1.0


@dataclass(frozen=True)
class ExtentParams:
    """A person's perception of where a nodule ends along z.

    Attributes:
        threshold: visibility (share of the way from lung to nodule density) at which a slice
            shows nodule.
        sd: SD of the perception noise on the visibility, per slice looked at.
    """

    threshold: float = 0.425  # the expert fit, agents/calibration/expert_extent.json
    sd: float = 0.12

    def __post_init__(self) -> None:
        for name in ("threshold", "sd"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"ExtentParams.{name} must be a number >= 0; got {v}")


class Extent(NamedTuple):
    """A judged extent: ``first`` .. ``last`` (inclusive slice indices), the ``key`` slice, and the
    visibility of each slice (NaN where the person did not look)."""

    first: int
    last: int
    key: int
    visibility: np.ndarray

    @property
    def n_slices(self) -> int:
        return self.last - self.first + 1


def key_slice(intent: np.ndarray, start: int) -> int:
    """The slice where the person finds the nodule largest: the largest intent area; ties go to
    the slice nearest ``start``; ``start`` when the intent is empty."""
    areas = np.asarray(intent, bool).reshape(len(intent), -1).sum(axis=1)
    if areas.max() == 0:
        return int(start)
    best = np.flatnonzero(areas == areas.max())
    return int(best[np.argmin(np.abs(best - int(start)))])


def _smooth(image_hu: np.ndarray, spacing_yx) -> np.ndarray:
    sig = [SMOOTH_MM / float(s) for s in spacing_yx]
    return np.stack([ndimage.gaussian_filter(np.asarray(s, np.float32), sig, mode="nearest") for s in image_hu])


def _footprints(intent: np.ndarray, key: int) -> np.ndarray:
    """Where the person looks on each slice: their outline on the neighbouring slice toward the
    key slice (past the intent's ends, the last non-empty one on the way)."""
    n = len(intent)
    out = np.zeros(intent.shape, bool)
    out[key] = intent[key]
    for step in (1, -1):
        ref = intent[key]
        z = key + step
        while 0 <= z < n:
            prev = intent[z - step]
            if prev.any():
                ref = prev
            out[z] = ref
            z += step
    return out


def _lung(smooth_z: np.ndarray, look: np.ndarray, spacing_yx) -> float:
    """HU of the aerated lung around the footprint: the 25th percentile of a ring 2-6 mm outside it
    (the darker part of the ring, so a vessel or the chest wall beside the nodule does not count)."""
    px = float(np.mean(spacing_yx))
    near = ndimage.binary_dilation(look, iterations=max(1, int(round(2.0 / px))))
    far = ndimage.binary_dilation(look, iterations=max(2, int(round(6.0 / px))))
    ring = far & ~near
    return float(np.percentile(smooth_z[ring], 25)) if ring.any() else float(np.percentile(smooth_z, 25))


def _runs_on(contrast: np.ndarray, look: np.ndarray, spacing_yx) -> np.ndarray:
    """Pixels of the bright structures (contrast >= 0.5) touching the footprint ``look`` that run
    on past it: they reach ``AROUND_MM`` beyond its edge. A pole cap stays inside the outline
    above it (give or take ``SLACK_MM``); the chest wall or a vessel crossing the outline runs on,
    and a person scrolling past the nodule's end does not take them for its continuation."""
    px = float(np.mean(spacing_yx))
    reach = max(2, int(round(AROUND_MM / px)))
    slack = min(reach - 1, max(1, int(round(SLACK_MM / px))))
    inner = ndimage.binary_dilation(look, iterations=reach - slack)
    around = ndimage.binary_dilation(inner, iterations=slack)
    lab, n = ndimage.label(contrast >= 0.5)
    if n == 0:
        return np.zeros(look.shape, bool)
    ids = np.arange(1, n + 1)
    touches = ndimage.maximum(look, lab, ids) > 0
    far = ndimage.maximum(around & ~inner, lab, ids) > 0
    return np.isin(lab, ids[touches & far]) & around


def slice_visibility(image_hu: np.ndarray, intent: np.ndarray, spacing_yx, key: int) -> tuple[np.ndarray, float, float]:
    """Visibility of the nodule on every slice (see the module docstring), and the ``(lung, core)``
    HU of the key slice.

    Args:
        image_hu: ``(Z, H, W)`` HU, the slices the person can scroll through.
        intent: ``bool`` ``(Z, H, W)``: the person's intent, for the key slice and where they look.
        spacing_yx: pixel size, mm.
        key: the key slice.
    """
    image_hu = np.asarray(image_hu, np.float32)
    intent = np.asarray(intent, bool)
    smooth = _smooth(image_hu, spacing_yx)
    looks = _footprints(intent, key)
    vis = np.full(len(image_hu), np.nan)
    if not looks[key].any():
        return vis, float(np.percentile(smooth[key], 25)), float(smooth[key].max())
    lung = _lung(smooth[key], looks[key], spacing_yx)
    core = float(smooth[key][looks[key]].mean())
    span = max(core - lung, MIN_CONTRAST_HU)
    k_blob = max(1, int(round(math.pi * (BLOB_MM / 2.0) ** 2 / (float(spacing_yx[0]) * float(spacing_yx[1])))))
    for z in range(len(image_hu)):
        if looks[z].any():
            lz = _lung(smooth[z], looks[z], spacing_yx)
            if intent[z].any():
                c = np.clip((smooth[z][looks[z]] - lz) / span, 0.0, 1.0)
            else:  # past the intent: the whole slice, to see what runs on beyond the outline
                full = np.clip((smooth[z] - lz) / span, 0.0, 1.0)
                c = np.where(_runs_on(full, looks[z], spacing_yx), 0.0, full)[looks[z]]
            k = min(max(k_blob, int(round(LOOK_SHARE * len(c)))), len(c))
            vis[z] = float(np.partition(c, len(c) - k)[len(c) - k :].mean())
    return vis, lung, core


def extent_from_visibility(vis: np.ndarray, key: int, threshold: float, noise: np.ndarray) -> tuple[int, int]:
    """``(first, last)``: scrolling down then up from ``key``, the last slice whose perceived
    visibility ``vis[z] + noise[i, z]`` reaches ``threshold`` before the first that does not
    (``noise[0]`` going down, ``noise[1]`` going up).

    >>> extent_from_visibility(np.array([0.2, 0.6, 1.0, 0.7, 0.1]), 2, 0.5, np.zeros((2, 5)))
    (1, 3)
    """
    n = len(vis)
    ends = []
    for i, step in enumerate((-1, 1)):
        end, z = int(key), int(key) + step
        while 0 <= z < n and np.isfinite(vis[z]) and vis[z] + noise[i, z] >= threshold:
            end, z = z, z + step
        ends.append(end)
    return ends[0], ends[1]


def judge_extent(
    image_hu: np.ndarray,
    intent: np.ndarray,
    spacing_yx,
    start: int,
    params: ExtentParams,
    rng: np.random.Generator,
) -> Extent:
    """The first and last slice the person judges to show the nodule (see the module docstring).

    Draws ``2 * Z`` normals from ``rng`` whatever the outcome (the stream stays fixed).
    """
    intent = np.asarray(intent, bool)
    key = key_slice(intent, start)
    vis, _, _ = slice_visibility(image_hu, intent, spacing_yx, key)
    return extent_of(vis, key, params, rng)


def extent_of(vis: np.ndarray, key: int, params: ExtentParams, rng: np.random.Generator) -> Extent:
    """:func:`judge_extent` from the slices' visibility (:func:`slice_visibility`) and the key slice."""
    n = len(vis)
    noise = rng.standard_normal((2, n)) * float(params.sd)
    ends = extent_from_visibility(vis, key, params.threshold, noise)
    seen = np.full(n, np.nan)
    lo, hi = max(0, ends[0] - 1), min(n - 1, ends[1] + 1)
    seen[lo : hi + 1] = vis[lo : hi + 1]
    return Extent(int(ends[0]), int(ends[1]), key, seen)


def visible_target(
    image_hu: np.ndarray, look: np.ndarray, spacing_yx, lung: float, core: float, threshold: float
) -> np.ndarray:
    """What a person outlines on a slice they judge to show nodule but did not mean to outline
    (their intent is empty there): the connected part of the footprint ``look`` whose smoothed
    HU reaches ``threshold`` of the way from lung to nodule, around its brightest pixel."""
    sm = _smooth(np.asarray(image_hu, np.float32)[None], spacing_yx)[0]
    look = ndimage.binary_dilation(np.asarray(look, bool))  # the blob may sit a pixel off the outline
    if not look.any():
        return np.zeros(look.shape, bool)
    level = lung + float(threshold) * max(core - lung, 50.0)
    bright = look & (sm >= level)
    peak = np.unravel_index(int(np.argmax(np.where(look, sm, -np.inf))), sm.shape)
    bright[peak] = True
    lab, _ = ndimage.label(bright)
    return lab == lab[peak]
