"""How well a radiologist agrees with the others on one slice: the bar a box-prompted model is held to.

A segmenter given the tight box of the consensus should not out-draw the radiologists: if it
does, the image tells it the answer. The bar is each LIDC reader's Dice with the consensus of
the *other* readers (the project's rule, :func:`~hiseg_sim.data.lidc_raster.consensus_mask`:
at least half of them), on the key slice (the slice where the full consensus is largest, as
:attr:`hiseg_sim.data.case.Case.key_slice` picks it), over nodules with at least three readers
(so that "the others" are at least two). The same in 3-D is reported beside it.

Bands: by the LIDC size convention (mean of the readers' own diameters, pylidc's
``Annotation.diameter``, :attr:`~hiseg_sim.data.lidc.Nodule.lidc_diameter_mm`), or by the consensus
diameter on its largest slice (``band_by="consensus"``, the project's earlier convention).

:func:`boxes_json` puts the tight-box Dice of ``hiseg-sim boxes`` beside the readers' bar; it is
the object ``hiseg-sim boxes --json`` prints as its last line.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any

import numpy as np

from hiseg_sim.data.lidc_agreement import SIZE_BANDS, size_band
from hiseg_sim.data.lidc_raster import consensus_mask
from hiseg_sim.metrics import dice

__all__ = [
    "key_slice_of",
    "leave_one_out_dice",
    "new_reader_dice",
    "reader_keyslice_agreement",
    "new_reader_agreement",
    "shipped_reader_agreement",
    "save_reader_agreement",
    "boxes_json",
]

#: The readers' bar measured once on the calibration split (both bandings), so that a report can
#: put it beside a group's Dice without re-reading the LIDC contours (about 20 s per banding).
READER_AGREEMENT_FILE = ("agents", "calibration", "reader_agreement.json")


def key_slice_of(mask: np.ndarray) -> int:
    """The slice of a ``(Z, Y, X)`` mask with the largest area, ties to the one nearest its centre
    of mass along z (the rule of :attr:`hiseg_sim.data.case.Case.key_slice`)."""
    areas = mask.sum(axis=(1, 2))
    best = np.flatnonzero(areas == areas.max())
    zc = float(np.argwhere(mask)[:, 0].mean())
    return int(best[np.argmin(np.abs(best - zc))])


def leave_one_out_dice(reader_masks, z: int | None = None) -> list[float]:
    """Each reader's Dice with the consensus of the others: on slice ``z`` of the ``(Z, Y, X)``
    masks, or in 3-D when ``z`` is ``None``. Needs at least 3 readers."""
    masks = [np.asarray(m, bool) for m in reader_masks]
    if len(masks) < 3:
        raise ValueError(f"leave-one-out agreement needs >= 3 readers; got {len(masks)}")
    out = []
    for i, m in enumerate(masks):
        others = consensus_mask(masks[:i] + masks[i + 1 :])
        out.append(dice(m, others) if z is None else dice(m[z], others[z]))
    return out


def new_reader_dice(reader_masks) -> tuple[float, float]:
    """``(new, bar)`` for one nodule of exactly 4 readers, each reader held out in turn as a
    radiologist who did not make the consensus: ``new`` is the held-out reader's Dice with the
    other three's consensus, on that consensus' key slice (how a box is scored: against the
    consensus of the readers the image was made from); ``bar`` is the leave-one-out agreement
    within those three, on the same slice (the readers' bar on a 3-reader nodule). Means over
    the 4 hold-outs; ``nan`` where the three have no consensus."""
    masks = [np.asarray(m, bool) for m in reader_masks]
    if len(masks) != 4:
        raise ValueError(f"new_reader_dice needs exactly 4 readers; got {len(masks)}")
    new, bar = [], []
    for j in range(4):
        panel = masks[:j] + masks[j + 1 :]
        cons = consensus_mask(panel)
        if not cons.any():
            continue
        z = key_slice_of(cons)
        new.append(dice(masks[j][z], cons[z]))
        bar.append(float(np.mean(leave_one_out_dice(panel, z))))
    return (float(np.mean(new)), float(np.mean(bar))) if new else (float("nan"), float("nan"))


@lru_cache(maxsize=2)
def new_reader_agreement(split: str = "calibration", db=None) -> dict[str, dict[str, Any]]:
    """How far a radiologist who did not make the consensus beats the readers' leave-one-out bar,
    per LIDC size band: ``{band: {"new": mean, "bar": mean, "gap": new - bar, "n": nodules}}``
    over the nodules of ``split`` with 4 readers (:func:`new_reader_dice`; about 15 s).

    The readers' bar scores each reader against the *others'* consensus, while a box on a
    phantom made from all the readers is scored against *their* consensus, one reader more. A
    new radiologist scored like the box beats the bar by ``gap`` (0.011-0.019 on the calibration
    split), so "the box beats the readers" means beating them by more than that."""
    if db is None:
        from hiseg_sim.data.lidc import LidcDatabase

        db = LidcDatabase()
    rows: dict[str, list[tuple[float, float]]] = {b: [] for b in SIZE_BANDS}
    for nod in db.iter_nodules(split, min_readers=4):
        if len(nod.reader_masks) != 4 or not np.asarray(nod.consensus).any():
            continue
        new, bar = new_reader_dice(nod.reader_masks)
        if np.isfinite(new):
            rows[size_band(nod.lidc_diameter_mm)].append((new, bar))
    out = {}
    for b in SIZE_BANDS:
        d = np.asarray(rows[b], float).reshape(-1, 2)
        n = len(d)
        out[b] = {
            "new": float(d[:, 0].mean()) if n else None,
            "bar": float(d[:, 1].mean()) if n else None,
            "gap": float((d[:, 0] - d[:, 1]).mean()) if n else None,
            "n": n,
        }
    return out


@lru_cache(maxsize=4)
def reader_keyslice_agreement(
    split: str = "calibration", min_readers: int = 3, band_by: str = "lidc", db=None
) -> dict[str, dict[str, Any]]:
    """``{band: {"key_slice": mean Dice, "3d": mean Dice, "n": readers}}`` over
    :data:`~hiseg_sim.data.lidc_agreement.SIZE_BANDS` (one value per reader of every nodule with
    ``min_readers``..4 readers; about 20 s for the calibration split)."""
    if band_by not in ("lidc", "consensus"):
        raise ValueError(f"band_by must be 'lidc' or 'consensus'; got {band_by!r}")
    if db is None:
        from hiseg_sim.data.lidc import LidcDatabase

        db = LidcDatabase()
    key: dict[str, list[float]] = {b: [] for b in SIZE_BANDS}
    vol: dict[str, list[float]] = {b: [] for b in SIZE_BANDS}
    for nod in db.iter_nodules(split, min_readers=max(3, int(min_readers))):
        cons = np.asarray(nod.consensus)
        if not cons.any():
            continue
        band = size_band(nod.lidc_diameter_mm if band_by == "lidc" else nod.diameter_mm)
        key[band].extend(leave_one_out_dice(nod.reader_masks, key_slice_of(cons)))
        vol[band].extend(leave_one_out_dice(nod.reader_masks))
    return {
        b: {
            "key_slice": float(np.mean(key[b])) if key[b] else None,
            "3d": float(np.mean(vol[b])) if vol[b] else None,
            "n": len(key[b]),
        }
        for b in SIZE_BANDS
    }


def save_reader_agreement(path=None) -> dict:
    """Measure :func:`reader_keyslice_agreement` on the calibration split, by both bandings, and
    write it (default ``agents/calibration/reader_agreement.json``); returns what was written."""
    import json
    from datetime import date
    from pathlib import Path

    from hiseg_sim.resources import shipped_path

    out = {
        "source": (
            "measured by hiseg_sim.data.reader_keyslice.save_reader_agreement on the LIDC-IDRI "
            "calibration split (patients 0001-0800), nodules with 3-4 readers (new_reader: with 4, each "
            f"held out in turn), {date.today().isoformat()}"
        ),
        "lidc": reader_keyslice_agreement("calibration", 3, "lidc"),
        "consensus": reader_keyslice_agreement("calibration", 3, "consensus"),
        "new_reader": new_reader_agreement("calibration"),
    }
    target = Path(path) if path is not None else shipped_path(*READER_AGREEMENT_FILE)
    target.write_text(json.dumps(out, indent=1) + "\n")
    return out


def shipped_reader_agreement() -> dict[str, dict[str, dict[str, Any]]]:
    """``{"lidc": table, "consensus": table, "new_reader": gaps}`` on the calibration split
    (:func:`reader_keyslice_agreement` by both bandings, :func:`new_reader_agreement`), read from
    the shipped file when it is there, else measured."""
    import json

    from hiseg_sim.resources import shipped_path

    path = shipped_path(*READER_AGREEMENT_FILE)
    data = json.loads(path.read_text()) if path.is_file() else {}
    out = {b: data.get(b) or reader_keyslice_agreement("calibration", 3, b) for b in ("lidc", "consensus")}
    out["new_reader"] = data.get("new_reader") or new_reader_agreement("calibration")
    return out


def boxes_json(
    rows: Iterable[Any],
    lidc_diameters: dict[str, float] | None = None,
    db=None,
    readers: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The object of ``hiseg-sim boxes --json``: per LIDC size band the mean tight-box Dice of the
    run's ``rows`` (each with ``case_id`` and ``dice``; ``diameter_mm`` is the consensus one),
    the calibration readers' key-slice agreement with the others' consensus, and ``n`` (boxes)::

        {"bands": {"<6" | "6-10" | "10-20" | ">=20": {"box", "readers", "n", "n_readers",
                                                      "readers_3d", "new_reader"}},
         "bands_consensus_diameter": {...the same, banded by the consensus diameter...}}

    ``new_reader`` (LIDC banding only, when ``readers`` has ``"new_reader"``): the readers' bar
    plus :func:`new_reader_agreement`'s gap, what a radiologist who did not make the consensus
    would score against it as the box is scored; a box that does not give the answer away stays
    within 0.02 of it. ``lidc_diameters``: case id -> LIDC diameter (mm); default looked up in the LIDC database by
    case id (a phantom's id is its nodule's). ``readers``: ``{"lidc": table, "consensus": table}``
    of precomputed :func:`reader_keyslice_agreement` (default: the calibration-split measurement,
    :func:`shipped_reader_agreement`).
    """
    rows = list(rows)
    if lidc_diameters is None:
        if db is None:
            from hiseg_sim.data.lidc import LidcDatabase

            db = LidcDatabase()
        lidc_diameters = {r.case_id: float(db.get_nodule(r.case_id).lidc_diameter_mm) for r in rows}
    readers = readers if readers is not None else shipped_reader_agreement()
    new_reader = readers.get("new_reader")
    out: dict[str, Any] = {}
    for name, band_by, diam in (
        ("bands", "lidc", lambda r: lidc_diameters[r.case_id]),
        ("bands_consensus_diameter", "consensus", lambda r: float(r.diameter_mm)),
    ):
        bar = readers[band_by]
        table = {}
        for b in SIZE_BANDS:
            d = [float(r.dice) for r in rows if size_band(diam(r)) == b]
            table[b] = {
                "box": round(float(np.mean(d)), 4) if d else None,
                "readers": None if bar[b]["key_slice"] is None else round(bar[b]["key_slice"], 4),
                "n": len(d),
                "n_readers": bar[b]["n"],
                "readers_3d": None if bar[b]["3d"] is None else round(bar[b]["3d"], 4),
            }
            gap = (new_reader or {}).get(b, {}).get("gap")
            if band_by == "lidc" and gap is not None and bar[b]["key_slice"] is not None:
                table[b]["new_reader"] = round(bar[b]["key_slice"] + gap, 4)
        out[name] = table
    return out
