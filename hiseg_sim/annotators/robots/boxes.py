"""Box robots: the ground-truth box with the noise the models' own authors trained with.

Robots read the ground truth — that is what they are. Boxes are ``XYXY`` float arrays
``[x_min, y_min, x_max, y_max]`` in pixels of the 2-D mask ``gt2d`` (``(Y, X)``), with the max
corner on the last object pixel (inclusive), as MedSAM and ``segment_anything``'s
``batched_mask_to_box`` build it.

Pixel amounts in the sources are at the model's input resolution: SAM and MedSAM resize the
longest image side to 1024 (LiteMedSAM: 256). When ``gt2d`` lives on an image whose longest
side is ``image_size`` (default: ``max(gt2d.shape)``), a source amount of ``p`` input pixels is
``p * image_size / input_size`` pixels of ``gt2d``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["gt_box", "medsam_box", "sam_noisy_box"]


def gt_box(gt2d) -> np.ndarray:
    """Tight box of a 2-D mask ``(Y, X)``: ``[x_min, y_min, x_max, y_max]`` (inclusive), float64.

    Robots read the ground truth — that is what they are.

    Raises:
        ValueError: the mask is not 2-D or is empty.
    """
    gt2d = np.asarray(gt2d).astype(bool, copy=False)
    if gt2d.ndim != 2:
        raise ValueError(f"gt2d must be a 2-D (y, x) mask; got shape {gt2d.shape}")
    ys, xs = np.nonzero(gt2d)
    if ys.size == 0:
        raise ValueError("gt2d is empty: there is no box to draw")
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)


def _scale(gt2d: np.ndarray, input_size: int, image_size: int | None) -> float:
    size = max(gt2d.shape) if image_size is None else image_size
    if size <= 0 or input_size <= 0:
        raise ValueError("image_size and input_size must be positive")
    return float(size) / float(input_size)


def medsam_box(
    gt2d,
    rng: np.random.Generator,
    max_shift_px: int = 20,
    input_size: int = 1024,
    image_size: int | None = None,
    clip: Literal["medsam", "litemedsam"] = "medsam",
) -> np.ndarray:
    """MedSAM's training box: each side pushed outward by a random 0…20 px. Robots read the ground truth — that is what they are.

    Source: bowang-lab/MedSAM, ``train_one_gpu.py``, ``NpyDataset.__getitem__`` (main branch;
    ``bbox_shift=20`` at 1024 px). The LiteMedSAM branch's ``train_one_gpu.py`` uses the same
    rule with ``bbox_shift=5`` at 256 px: pass ``max_shift_px=5, input_size=256,
    clip="litemedsam"``.

    - Tight box of the mask (inclusive max), then four integer shifts drawn uniformly from
      ``0 … max_shift_px`` inclusive (``random.randint``), in the source's order
      ``x_min, x_max, y_min, y_max``; each moves its side outward.
    - The shifts are whole *input* pixels, so in ``gt2d`` pixels they are multiples of
      ``image_size / input_size``.
    - Clipping: ``x_min, y_min >= 0``; ``x_max <= W`` and ``y_max <= H`` in MedSAM (one past the
      last pixel), ``<= W - 1`` / ``H - 1`` in LiteMedSAM (``clip="litemedsam"``).

    Args:
        gt2d: 2-D mask ``(Y, X)``.
        rng: the random generator.
        max_shift_px: the source's ``bbox_shift`` at the input resolution.
        input_size: the model's input side (1024 MedSAM / SAM, 256 LiteMedSAM).
        image_size: longest side of the image ``gt2d`` belongs to; default ``max(gt2d.shape)``.
        clip: ``"medsam"`` or ``"litemedsam"`` (see above).

    Returns:
        ``XYXY`` float64 array of 4.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError("pass an explicit numpy.random.Generator as rng")
    if clip not in ("medsam", "litemedsam"):
        raise ValueError(f"clip must be 'medsam' or 'litemedsam'; got {clip!r}")
    gt2d = np.asarray(gt2d).astype(bool, copy=False)
    x0, y0, x1, y1 = gt_box(gt2d)
    scale = _scale(gt2d, input_size, image_size)
    d = rng.integers(0, int(max_shift_px) + 1, size=4) * scale  # x_min, x_max, y_min, y_max
    h, w = gt2d.shape
    hi_x, hi_y = (w, h) if clip == "medsam" else (w - 1, h - 1)
    return np.array(
        [max(0.0, x0 - d[0]), max(0.0, y0 - d[2]), min(float(hi_x), x1 + d[1]), min(float(hi_y), y1 + d[3])],
        dtype=np.float64,
    )


def sam_noisy_box(
    gt2d,
    rng: np.random.Generator,
    sd_frac: float = 0.1,
    max_px: float = 20.0,
    input_size: int = 1024,
    image_size: int | None = None,
    cap: Literal["noise", "sd"] = "noise",
) -> np.ndarray:
    """SAM's training box: ground-truth box + Gaussian noise per coordinate. Robots read the ground truth — that is what they are.

    Source: Kirillov et al., "Segment Anything" (ICCV 2023), appendix A, training algorithm:
    "random noise in each coordinate with standard deviation equal to 10% of the box
    sidelength, to a maximum of 20 pixels". The training code is not public, so two details are
    read from the sentence and stated here:

    - side length: the box's pixel extent, ``x_max - x_min + 1`` for the two x coordinates and
      ``y_max - y_min + 1`` for the two y coordinates;
    - "to a maximum of 20 pixels": ``cap="noise"`` (default) clips each coordinate's noise to
      ±20 px (at 1024 px input, scaled like MedSAM's shift); ``cap="sd"`` reads it as a cap on
      the standard deviation instead (no clipping of the draw).

    The noisy box is not clipped to the image and not re-sorted (the paper says neither; with a
    10 % SD the corners cross only for a box of a pixel or two).

    Args:
        gt2d: 2-D mask ``(Y, X)``.
        rng: the random generator (four normal draws, in XYXY order).
        sd_frac: SD as a fraction of the side.
        max_px: the cap, in input pixels.
        input_size, image_size: as in :func:`medsam_box`.
        cap: ``"noise"`` or ``"sd"``.

    Returns:
        ``XYXY`` float64 array of 4.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError("pass an explicit numpy.random.Generator as rng")
    if cap not in ("noise", "sd"):
        raise ValueError(f"cap must be 'noise' or 'sd'; got {cap!r}")
    gt2d = np.asarray(gt2d).astype(bool, copy=False)
    box = gt_box(gt2d)
    w = box[2] - box[0] + 1.0
    h = box[3] - box[1] + 1.0
    limit = float(max_px) * _scale(gt2d, input_size, image_size)
    sd = sd_frac * np.array([w, h, w, h])
    if cap == "sd":
        sd = np.minimum(sd, limit)
    noise = rng.normal(0.0, 1.0, size=4) * sd
    if cap == "noise":
        noise = np.clip(noise, -limit, limit)
    return box + noise
