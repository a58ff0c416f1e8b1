"""How masks and values are written into result rows and JSON files, and read back.

Masks travel as the tight bounding-box crop of a ``bool`` ``(Z, Y, X)`` mask, bit-packed
(:func:`pack_mask` / :func:`unpack_mask`); values that Parquet or JSON cannot hold as they are
go through :func:`json_default` (numpy scalars and arrays, sets, plain objects).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

__all__ = ["json_default", "jsonable", "pack_mask", "unpack_mask"]


def pack_mask(mask: np.ndarray, origin=(0, 0, 0), prefix: str = "mask") -> dict:
    """The tight bounding-box crop of a ``bool`` ``(Z, Y, X)`` mask placed at ``origin`` (volume
    indices of ``mask[0, 0, 0]``), as row fields ``{prefix}_z0/_y0/_x0`` (volume indices of the
    crop's corner), ``{prefix}_dz/_dy/_dx`` (crop shape; 0 for an empty mask) and
    ``{prefix}_bits`` (``np.packbits`` of the crop, C order)."""
    m = np.asarray(mask, bool)
    if m.ndim != 3:
        raise ValueError(f"pack_mask takes a (Z, Y, X) mask; got shape {m.shape}")
    idx = np.argwhere(m)
    if idx.size == 0:
        shape: tuple[int, ...] = (0, 0, 0)
        lo, crop = np.asarray(origin), np.zeros((0,), bool)
    else:
        a, b = idx.min(0), idx.max(0) + 1
        crop = m[a[0] : b[0], a[1] : b[1], a[2] : b[2]]
        lo, shape = np.asarray(origin) + a, tuple(int(v) for v in crop.shape)
    out: dict[str, int | bytes] = {f"{prefix}_{k}0": int(v) for k, v in zip("zyx", lo)}
    out.update({f"{prefix}_d{k}": int(v) for k, v in zip("zyx", shape)})
    out[f"{prefix}_bits"] = np.packbits(crop.ravel()).tobytes()
    return out


def unpack_mask(row, prefix: str = "mask") -> tuple[np.ndarray, tuple[int, int, int]]:
    """Inverse of :func:`pack_mask`: ``(crop, (z0, y0, x0))`` from a row (dict or pandas Series)."""
    dz, dy, dx = (int(row[f"{prefix}_d{k}"]) for k in "zyx")
    z0, y0, x0 = (int(row[f"{prefix}_{k}0"]) for k in "zyx")
    shape, origin = (dz, dy, dx), (z0, y0, x0)
    n = int(np.prod(shape))
    bits = np.frombuffer(row[f"{prefix}_bits"], np.uint8)
    crop = np.unpackbits(bits, count=n).astype(bool).reshape(shape) if n else np.zeros(shape, bool)
    return crop, origin


def json_default(o: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy scalars → Python, arrays and sets → lists,
    plain objects → their public attributes, anything else → ``str``."""
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o, key=str)
    if hasattr(o, "__dict__"):
        return {k: v for k, v in vars(o).items() if not k.startswith("_")}
    return str(o)


def jsonable(v: Any) -> Any:
    """A Parquet-friendly scalar: numpy scalars → Python, containers → canonical JSON text."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, (dict, list, tuple, np.ndarray)):
        return json.dumps(v, sort_keys=True, default=json_default)
    return v
