"""The viewport: the square crop of a slice a person zooms to, and where it is placed.

Pure functions. A person is shown a nodule (a detection mark, a report, a CAD hit) and zooms in
around it. The mark is not exactly the nodule's centre, so the viewport is centred on a *noisy*
detection point:

1. centre of the nodule: the centroid of the ground truth on the start slice, ``(y, x)`` pixels;
2. detection point = centre + Gaussian noise, SD ``detection_sd_mm`` per axis (converted to
   pixels with the in-plane spacing), drawn from the environment's ``np_random``;
3. the viewport centre is the detection point snapped to a pan grid of ``pan_step_px`` pixels
   (a person pans in coarse steps; snapping also lets the embedding cache serve many episodes,
   since a case's viewports take only a few positions);
4. if that centre falls exactly on the rounded ground-truth centre, the noise is drawn again, so
   the viewport is never centred exactly on the nodule.

The crop is taken at the native pixel spacing (no resampling); where it runs past the edge of
the volume it is padded with air (-1000 HU), as a viewer shows black outside the field of view.
Masks are clipped to the pixels inside the volume: a tool cannot label what is not in the scan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["AIR_HU", "Viewport", "crop2d", "place_viewport", "slab_range"]

#: Hounsfield units of air, used to pad crops that run past the volume (air is -1000 HU).
AIR_HU = -1000.0


@dataclass(frozen=True)
class Viewport:
    """Where the environment looks in a case.

    Attributes:
        z0: first slice of the slab, a volume index.
        n_slices: slices in the slab (1 in 2-D).
        y0, x0: volume row and column of the viewport's top-left pixel (may be negative: padding).
        size: side of the square viewport, pixels.
    """

    z0: int
    n_slices: int
    y0: int
    x0: int
    size: int

    def to_dict(self) -> dict:
        return {k: int(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Viewport:
        return cls(**{k: int(d[k]) for k in ("z0", "n_slices", "y0", "x0", "size")})

    @property
    def centre_yx(self) -> tuple[int, int]:
        return self.y0 + self.size // 2, self.x0 + self.size // 2


def crop2d(image: np.ndarray, y0: int, x0: int, size: int, fill: float | bool = AIR_HU) -> np.ndarray:
    """The ``size x size`` window of a 2-D array whose top-left is ``(y0, x0)``, padded with ``fill``.

    >>> crop2d(np.arange(9.0).reshape(3, 3), -1, 1, 2, fill=-1.0)
    array([[-1., -1.],
           [ 1.,  2.]])
    """
    h, w = image.shape
    out = np.full((size, size), fill, dtype=image.dtype)
    ys, ye = max(y0, 0), min(y0 + size, h)
    xs, xe = max(x0, 0), min(x0 + size, w)
    if ys < ye and xs < xe:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = image[ys:ye, xs:xe]
    return out


def slab_range(n_z: int, start_z: int, max_slices: int) -> tuple[int, int]:
    """``(z0, n)``: at most ``max_slices`` consecutive slices, centred on ``start_z``, inside ``[0, n_z)``."""
    n = min(n_z, max_slices)
    z0 = int(np.clip(start_z - n // 2, 0, n_z - n))
    return z0, n


def place_viewport(
    gt2d: np.ndarray,
    spacing_yx: tuple[float, float],
    size: int,
    rng: np.random.Generator,
    detection_sd_mm: float = 3.0,
    pan_step_px: int = 8,
    max_tries: int = 100,
) -> tuple[int, int]:
    """Top-left ``(y0, x0)`` of a viewport centred on a noisy detection point; see the module docstring.

    Args:
        gt2d: ``bool`` ``(Y, X)`` ground truth on the start slice (non-empty).
        spacing_yx: in-plane pixel size, mm.
        size: viewport side, pixels.
        rng: the environment's generator.
        detection_sd_mm: SD of the detection point's error per axis, mm (> 0).
        pan_step_px: grid the viewport centre snaps to (1 = no snapping).
    """
    if not gt2d.any():
        raise ValueError("the start slice holds no ground truth: cannot place the viewport on the nodule")
    if not detection_sd_mm > 0:
        raise ValueError(
            f"detection_sd_mm must be > 0 (the viewport is never centred exactly on the nodule); got {detection_sd_mm}"
        )
    pan = max(1, int(pan_step_px))
    ys, xs = np.nonzero(gt2d)
    cy, cx = float(ys.mean()), float(xs.mean())
    sd = np.array([detection_sd_mm / spacing_yx[0], detection_sd_mm / spacing_yx[1]])
    target = (int(round(cy)), int(round(cx)))
    for _ in range(max_tries):
        dy, dx = rng.normal(0.0, 1.0, size=2) * sd
        py = int(round((cy + dy) / pan)) * pan
        px = int(round((cx + dx) / pan)) * pan
        if (py, px) != target:
            break
    else:  # pragma: no cover - needs max_tries draws all landing on the centre
        py, px = target[0] + pan, target[1]
    return py - size // 2, px - size // 2
