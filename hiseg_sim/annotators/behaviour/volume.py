"""How a person works through a whole nodule in the 3-D tool, and the parameters of it.

People segmenting a nodule in 3D Slicer, MONAI Label or a MedSAM2 plug-in work the same way:
find the slice where the nodule looks largest, prompt there, propagate the mask up slice by
slice, scroll one slice past the end to see that the nodule has ended, come back, propagate down
and check the other end, then scroll through the result once and accept. On each slice a
propagated mask is looked at and kept when it looks right; only slices where it leaks or
shrinks are corrected, with the same prompts as in 2-D.

:class:`VolumePlan` holds what the person decided before starting: the key slice and the
extent (:func:`~hiseg_sim.annotators.behaviour.extent.judge_extent`, their own judgement from the
image) and the outline they mean on each slice of it (their intent; on a slice they see nodule
on but had no intent for, the visible blob, :func:`~hiseg_sim.annotators.behaviour.extent.visible_target`).
:func:`slice_looks_right` is the test a person applies to a propagated (or corrected) slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hiseg_sim.annotators.behaviour import judgement as J
from hiseg_sim.annotators.behaviour.extent import (
    Extent,
    ExtentParams,
    extent_of,
    key_slice,
    slice_visibility,
    visible_target,
)

__all__ = ["VolumeParams", "VolumePlan", "plan_volume", "slice_looks_right"]


@dataclass(frozen=True)
class VolumeParams:
    """A group's way of working in 3-D.

    Attributes:
        extent_threshold: visibility at which a slice shows nodule (:class:`ExtentParams`).
        extent_sd: perception noise on the visibility, per slice looked at.
        slice_tolerance_mm: a slice looks right when nothing is missing or leaking deeper than
            this (or its perceived Dice reaches the accept threshold): the slices a person corrects
            are those where the mask leaks or shrinks visibly, not those a pixel off.
        inspect_slice_s: seconds to look at a slice newly shown (scrolling, propagating,
            reviewing), charged by the env's time model (``TimeModel.inspect_s``).
        review: 1: scroll through the whole extent once before accepting; 0: accept at once.
    """

    extent_threshold: float = 0.425  # the expert fit, agents/calibration/expert_extent.json
    extent_sd: float = 0.12
    slice_tolerance_mm: float = 1.0
    inspect_slice_s: float = 0.5
    review: int = 1

    def __post_init__(self) -> None:
        for name in ("extent_threshold", "extent_sd", "slice_tolerance_mm", "inspect_slice_s"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"VolumeParams.{name} must be a number >= 0; got {v}")
        if int(self.review) not in (0, 1) or int(self.review) != self.review:
            raise ValueError(f"VolumeParams.review must be 0 or 1; got {self.review}")
        object.__setattr__(self, "review", int(self.review))

    @property
    def extent(self) -> ExtentParams:
        return ExtentParams(threshold=self.extent_threshold, sd=self.extent_sd)


@dataclass(frozen=True)
class VolumePlan:
    """What a person sets out to do on a volume: the judged :class:`Extent` (slab indices) and the
    outline they mean on each slice (``bool`` ``(Z, H, W)``, empty outside the extent)."""

    extent: Extent
    target: np.ndarray

    @property
    def key(self) -> int:
        return self.extent.key

    @property
    def first(self) -> int:
        return self.extent.first

    @property
    def last(self) -> int:
        return self.extent.last


def plan_volume(
    image_hu: np.ndarray,
    intent: np.ndarray,
    spacing_yx,
    start: int,
    params: VolumeParams,
    rng: np.random.Generator,
) -> VolumePlan:
    """The person's :class:`VolumePlan`: the extent judged from the image, and on each of its
    slices their intent there, or the blob they see where they had none (walking out from the key
    slice, looking where the last outline was)."""
    image_hu = np.asarray(image_hu, np.float32)
    intent = np.asarray(intent, bool)
    key = key_slice(intent, start)
    vis, lung, core = slice_visibility(image_hu, intent, spacing_yx, key)  # once: the extent and the blobs
    ext = extent_of(vis, key, params.extent, rng)
    target = np.zeros(intent.shape, bool)
    target[ext.key] = intent[ext.key]
    for lo, hi, step in ((ext.key + 1, ext.last + 1, 1), (ext.key - 1, ext.first - 1, -1)):
        for z in range(lo, hi, step):
            if intent[z].any():
                target[z] = intent[z]
            else:
                target[z] = visible_target(
                    image_hu[z], target[z - step], spacing_yx, lung, core, params.extent_threshold
                )
    return VolumePlan(ext, target)


def slice_looks_right(
    mask: np.ndarray, target: np.ndarray, q: float, spacing_yx, params: VolumeParams, accept_threshold: float
) -> bool:
    """A slice looks right to the person when its perceived quality ``q`` reaches
    ``accept_threshold`` or nothing on it is missing or leaking deeper than
    ``slice_tolerance_mm`` (:func:`~hiseg_sim.annotators.behaviour.judgement.perceived_errors`)."""
    if q >= accept_threshold:
        return True
    err = J.perceived_errors(mask, target, spacing_yx, params.slice_tolerance_mm)
    return not (err.missing.any() or err.leak.any())
