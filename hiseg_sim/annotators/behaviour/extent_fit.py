"""Fit a person's extent perception (:class:`~hiseg_sim.annotators.behaviour.extent.ExtentParams`) to
the LIDC readers' disagreement about the first and last slice, and check it on the holdout.

For each LIDC nodule of a split (2-4 readers; every ``stride``-th, in database order) a phantom is
drawn around its readers' masks (:func:`hiseg_sim.data.phantom.make_phantom`, which carries the
readers' masks onto its grid), the expert's intent is drawn on it (the calibrated perception,
:func:`~hiseg_sim.annotators.behaviour.perception.intended_mask`) and the slices' visibility is
measured (:func:`~hiseg_sim.annotators.behaviour.extent.slice_visibility`). A simulated expert is
one more reader: their judged first/last slice is compared with each reader's
(:func:`~hiseg_sim.data.lidc_extent.extent_delta_vs_readers`), and the real figure is the
readers' own pairwise disagreement on the same nodules
(:func:`~hiseg_sim.data.lidc_extent.pairwise_extent_delta`).

The fit is a grid over ``(threshold, sd)`` with common random numbers (one fixed set of normals
per nodule) minimising ``(mean |Δ| sim - real)^2 + (mean length sim - mean length readers)^2``
(slices): the disagreement fixes the noise, the extent's length (the expert is neither a
lumper nor a splitter) fixes the threshold. Run ``python -m
hiseg_sim.annotators.behaviour.extent_fit`` to refit and rewrite ``agents/calibration/expert_extent.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import sys
from pathlib import Path

import numpy as np

from hiseg_sim.annotators.behaviour.extent import ExtentParams, extent_from_visibility, key_slice, slice_visibility
from hiseg_sim.data.lidc_extent import extent_delta_vs_readers, pairwise_extent_delta, reader_extents

__all__ = ["EXTENT_FIT_PATH", "nodule_table", "score", "fit", "expert_extent_params", "main"]

EXTENT_FIT_PATH = Path(__file__).resolve().parents[3] / "agents" / "calibration" / "expert_extent.json"


def nodule_table(split: str, stride: int = 1, limit: int | None = None, seed: int = 0) -> list[dict]:
    """Per sampled nodule: the visibility of its slices to the expert, the key slice, the readers'
    extents and band (see the module docstring)."""
    from hiseg_sim.annotators.behaviour.difficulty import case_log_difficulty
    from hiseg_sim.annotators.behaviour.perception import case_difficulty, expert_params, intended_mask
    from hiseg_sim.data.lidc import LidcDatabase
    from hiseg_sim.data.lidc_agreement import size_band
    from hiseg_sim.data.phantom import make_phantom
    from hiseg_sim.seeding import episode_streams

    params = expert_params()
    rows = []
    db = LidcDatabase()
    for i, nod in enumerate(db.iter_nodules(split, min_readers=2)):
        if i % stride:
            continue
        case = make_phantom(nod, seed=seed)
        ext = reader_extents(case.reader_masks)
        if len(ext) < 2:
            continue
        rng, _ = episode_streams(seed, case.case_id)
        sp = tuple(float(s) for s in case.spacing_zyx)
        intent = intended_mask(
            case.gt,
            sp,
            params,
            rng,
            image_hu=case.volume_hu,
            difficulty_z=case_difficulty(key=case.case_id),
            difficulty_log=case_log_difficulty(case.meta),
        )
        key = key_slice(intent, int(case.key_slice))
        vis, _, _ = slice_visibility(case.volume_hu, intent, sp[1:], key)
        rows.append(
            {
                "nodule_id": nod.nodule_id,
                "band": size_band(nod.diameter_mm),
                "key": key,
                "visibility": vis,
                "extents": ext,
                "real": pairwise_extent_delta(ext)["both"],
                "reader_length": float(np.mean([b - a + 1 for a, b in ext])),
            }
        )
        if limit is not None and len(rows) >= limit:
            break
    return rows


def score(rows: list[dict], params: ExtentParams, seed: int = 0) -> dict:
    """The simulated expert's disagreement with the readers on these nodules, beside the real one.

    Returns ``{"n", "sim", "real", "sim_length", "reader_length", "by_size": {band: {"sim",
    "real", "n"}}}`` (slices; means over nodules)."""
    sims, lens = [], []
    for j, r in enumerate(rows):
        noise = np.random.default_rng([seed, j]).standard_normal((2, len(r["visibility"])))
        first, last = extent_from_visibility(r["visibility"], r["key"], params.threshold, noise * params.sd)
        sims.append(extent_delta_vs_readers(first, last, r["extents"])["both"])
        lens.append(last - first + 1)
    by = {}
    for band in sorted({r["band"] for r in rows}):
        idx = [j for j, r in enumerate(rows) if r["band"] == band]
        by[band] = {
            "sim": float(np.mean([sims[j] for j in idx])),
            "real": float(np.mean([rows[j]["real"] for j in idx])),
            "n": len(idx),
        }
    return {
        "n": len(rows),
        "sim": float(np.mean(sims)),
        "real": float(np.mean([r["real"] for r in rows])),
        "sim_length": float(np.mean(lens)),
        "reader_length": float(np.mean([r["reader_length"] for r in rows])),
        "by_size": by,
    }


def fit(rows: list[dict]) -> tuple[ExtentParams, dict]:
    """The grid point of ``(threshold, sd)`` that best matches the readers (module docstring)."""
    best = None
    for t in np.round(np.arange(0.05, 1.01, 0.025), 3):
        for sd in np.round(np.arange(0.0, 0.61, 0.02), 3):
            p = ExtentParams(float(t), float(sd))
            s = score(rows, p)
            loss = (s["sim"] - s["real"]) ** 2 + (s["sim_length"] - s["reader_length"]) ** 2
            if best is None or loss < best[0]:
                best = (loss, p, s)
    return best[1], best[2]


def expert_extent_params(path: str | Path | None = None) -> ExtentParams:
    """The fitted expert :class:`ExtentParams` (``agents/calibration/expert_extent.json``)."""
    p = Path(path) if path is not None else EXTENT_FIT_PATH
    d = json.loads(p.read_text())["params"]
    return ExtentParams(threshold=float(d["threshold"]), sd=float(d["sd"]))


def main(argv: list[str] | None = None) -> int:
    """Fit on the calibration split, check on the holdout, write the calibration file."""
    argv = sys.argv[1:] if argv is None else argv
    stride = int(argv[0]) if argv else 4
    cal = nodule_table("calibration", stride=stride)
    params, cal_score = fit(cal)
    hold = nodule_table("holdout", stride=max(1, stride // 2))
    hold_score = score(hold, params)
    out = {
        "params": {"threshold": params.threshold, "sd": params.sd},
        "fitted": ["threshold", "sd"],
        "calibration": cal_score,
        "holdout": hold_score,
        "provenance": {
            "split": "calibration (LIDC-IDRI-0001..0800); checked on holdout (0801..1012)",
            "n_calibration": cal_score["n"],
            "n_holdout": hold_score["n"],
            "sampling": f"one in {stride} calibration and one in {max(1, stride // 2)} holdout nodules with 2-4 "
            "readers, in database order; one phantom (seed 0) and one expert intent per nodule",
            "objective": "(mean |delta| sim vs readers - readers' pairwise)^2 + (mean extent sim - readers)^2, slices",
            "date": _dt.date.today().isoformat(),
            "module": "hiseg_sim.annotators.behaviour.extent_fit",
            "note": "the simulated expert's disagreement is partly the image's own (CT noise, partial volume at the "
            "poles) and the calibrated intent's (which slice looks largest, where the person looks next); sd is the "
            "perception noise added on top",
        },
    }
    EXTENT_FIT_PATH.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
