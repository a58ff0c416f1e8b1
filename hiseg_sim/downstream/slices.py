"""2-D training and test slices: fixed 96-px crops of a case, placed like the environment's viewport.

A crop is placed by :func:`hiseg_sim.env.viewport.place_viewport` (a noisy detection of the
nodule on the key slice, ``detection_sd_mm`` per axis) from a generator seeded by the case id and
a purpose (``"train"`` / ``"test"``), so every label set of a case is cut from the same pixels
and the net never learns that the nodule sits exactly in the middle. Pixels outside the volume
are air (−1000 HU), as in the env.

Labels made in the env come back from the run tables in volume coordinates
(:func:`hiseg_sim.experiments.episode.unpack_mask`); :func:`volume_mask_slice` pastes them into
the key slice and :func:`crop_of` cuts the crop.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from hiseg_sim.env.viewport import AIR_HU, crop2d, place_viewport

__all__ = ["SliceCrop", "crop_origin", "crop_of", "case_crops", "volume_mask_slice", "case_rng"]

CROP_PX = 96


def case_rng(case_id: str, purpose: str, seed: int = 0) -> np.random.Generator:
    """A generator fixed by ``(seed, purpose, case_id)`` (no Python ``hash``: it is salted per process)."""
    h = int.from_bytes(hashlib.sha256(f"{purpose}|{case_id}".encode()).digest()[:8], "little")
    return np.random.default_rng([int(seed), h])


@dataclass(frozen=True)
class SliceCrop:
    """One crop: ``image_hu`` ``(S, S)`` float32, ``gt`` ``(S, S)`` bool, where it came from."""

    case_id: str
    z: int
    y0: int
    x0: int
    image_hu: np.ndarray
    gt: np.ndarray


def crop_origin(
    case, purpose: str, seed: int = 0, size: int = CROP_PX, detection_sd_mm: float = 3.0
) -> tuple[int, int]:
    """Top-left ``(y0, x0)`` of the case's crop for ``purpose`` (the same for every slice of the case)."""
    rng = case_rng(case.case_id, purpose, seed)
    return place_viewport(case.gt[case.key_slice], tuple(case.spacing_zyx[1:]), size, rng, detection_sd_mm)


def crop_of(a2d: np.ndarray, origin: tuple[int, int], size: int = CROP_PX, fill=AIR_HU) -> np.ndarray:
    """The ``size``² crop of a slice at ``origin`` (``fill`` outside it)."""
    return crop2d(a2d, int(origin[0]), int(origin[1]), size, fill=fill)


def case_crops(case, purpose: str, seed: int = 0, neighbours: int = 0, size: int = CROP_PX) -> list[SliceCrop]:
    """Crops of the key slice and up to ``neighbours`` slices each side that hold ground truth."""
    y0, x0 = crop_origin(case, purpose, seed, size)
    k = case.key_slice
    out = []
    for z in range(k - neighbours, k + neighbours + 1):
        if 0 <= z < case.shape[0] and case.gt[z].any():
            out.append(
                SliceCrop(
                    case.case_id,
                    z,
                    y0,
                    x0,
                    crop_of(case.volume_hu[z], (y0, x0), size).astype(np.float32),
                    crop_of(case.gt[z], (y0, x0), size, fill=False).astype(bool),
                )
            )
    return out


def volume_mask_slice(
    crop: np.ndarray, origin: tuple[int, int, int], shape_zyx: tuple[int, int, int], z: int
) -> np.ndarray:
    """Slice ``z`` ``(Y, X)`` of a packed mask (``crop`` at volume index ``origin``) pasted into a volume of ``shape_zyx``."""
    out = np.zeros(tuple(shape_zyx[1:]), bool)
    if crop.size == 0:
        return out
    z0, y0, x0 = (int(v) for v in origin)
    if not z0 <= z < z0 + crop.shape[0]:
        return out
    sl = crop[z - z0]
    Y, X = out.shape
    ye, xe = min(y0 + sl.shape[0], Y), min(x0 + sl.shape[1], X)
    out[y0:ye, x0:xe] = sl[: ye - y0, : xe - x0]
    return out
