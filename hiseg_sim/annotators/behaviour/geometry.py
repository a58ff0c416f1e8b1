"""Geometry of a person's reference mask that both perception files need."""

from __future__ import annotations

import numpy as np

from hiseg_sim.metrics import max_diameter_mm

__all__ = ["reference_diameter_mm"]


def reference_diameter_mm(reference: np.ndarray, spacing_zyx) -> float:
    """Largest in-plane diameter (mm) of a ``(Z, Y, X)`` mask on its largest slice (LIDC convention)."""
    areas = reference.sum(axis=(1, 2))
    if areas.max() == 0:
        return 0.0
    return max_diameter_mm(reference[int(areas.argmax())], spacing_zyx[1:])
