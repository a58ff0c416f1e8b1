"""More training cases for the downstream study: extra phantoms around calibration-split LIDC nodules.

The shipped ``default`` cohort has 40 nodules: too few key slices to train a net that separates
label quality. :func:`build_pool_manifest` draws ``n`` more nodules from the **calibration split
only** (LIDC-IDRI-0001 … 0800; never the holdout), none of them in the ``default`` cohort, with the
same stratified rules as the shipped cohorts (:func:`hiseg_sim.data.cohort._draw`: size band x
texture group, readers >= 2, diameter >= 3 mm, one nodule per patient where possible). The draw is
stored next to this file (``train_pool.json``, the manifest format of
:mod:`hiseg_sim.data.cohort`, cohort ``train_pool``) so only ids and phantom seeds travel; the
phantoms are rebuilt from the LIDC database and kept in the on-disk case cache
(:mod:`hiseg_sim.data.case_cache`: ~0.3 s each the first time, a few ms after).

:func:`training_cases` is a ``[cases] source`` for the runner::

    [cases]
    source = "downstream_training"
    kwargs = { n_pool = 160 }

It returns the ``default`` cohort followed by the first ``n_pool`` pool cases (the pool's order is
a seeded shuffle, so a prefix is still spread over the strata).
"""

from __future__ import annotations

import json
from pathlib import Path

from hiseg_sim.seeding import keyed_rng

__all__ = ["POOL_PATH", "POOL_COHORT", "build_pool_manifest", "write_pool_manifest", "pool_cases", "training_cases"]

POOL_PATH = Path(__file__).with_name("train_pool.json")
POOL_COHORT = "train_pool"


def build_pool_manifest(n: int = 200, seed: int = 0, db=None) -> dict:
    """Draw ``n`` calibration-split nodules not in the ``default`` cohort; a manifest with one cohort
    ``train_pool`` whose cases are in a seeded random order (reads the LIDC database: ~10 s)."""
    from hiseg_sim.data.cohort import _candidates, _draw, read_manifest

    if db is None:
        from hiseg_sim.data.lidc import LidcDatabase

        db = LidcDatabase()
    man = read_manifest()
    taken = {c["nodule_id"] for coh in man["cohorts"].values() for c in coh["cases"]}
    rows = [r for r in _candidates(db, "calibration") if r["nodule_id"] not in taken]
    bad = [r["nodule_id"] for r in rows if int(r["patient_id"].split("-")[-1]) > 800]
    if bad:  # pragma: no cover - the split is defined by the database
        raise ValueError(f"calibration candidates outside LIDC-IDRI-0001..0800: {bad[:3]}")
    rng = keyed_rng(seed, 0xD0)
    chosen, take = _draw(rows, int(n), rng)
    order = rng.permutation(len(chosen))
    cases = [
        {
            k: chosen[i][k]
            for k in ("nodule_id", "phantom_seed", "diameter_mm", "texture", "n_readers", "size_band", "texture_group")
        }
        for i in order
    ]
    return {
        "version": 1,
        "generator": "hiseg_sim.data.phantom",
        "description": (
            "Extra training phantoms for the downstream study (hiseg_sim.downstream.pool): "
            "calibration-split LIDC nodules (LIDC-IDRI-0001..0800) not in the default cohort, "
            "stratified like the shipped cohorts, in a seeded random order."
        ),
        "cohorts": {
            POOL_COHORT: {
                "split": "calibration",
                "seed": int(seed),
                "n": len(cases),
                "strata": dict(take),
                "cases": cases,
            }
        },
    }


def write_pool_manifest(n: int = 200, seed: int = 0, path: str | Path = POOL_PATH) -> Path:
    """Build the pool (:func:`build_pool_manifest`) and write it as JSON (one line per case)."""
    from hiseg_sim.data.cohort import _dumps

    out = Path(path)
    out.write_text(_dumps(build_pool_manifest(n, seed)))
    return out


def pool_cases(n: int | None = None, path: str | Path = POOL_PATH) -> list:
    """The first ``n`` cases of the pool (all if ``None``), built or read from the case cache."""
    from hiseg_sim.data.cohort import load_cohort
    from hiseg_sim.experiments.cases import _lidc_db

    return load_cohort(POOL_COHORT, manifest=Path(path), limit=n, db=_lidc_db)


def training_cases(n_pool: int = 160, default: bool = True) -> list:
    """The downstream study's training cases: the ``default`` cohort (if ``default``) and then the
    first ``n_pool`` pool cases. All calibration split; ids are unique (the pool excludes ``default``)."""
    from hiseg_sim.data.cohort import load_cohort
    from hiseg_sim.experiments.cases import _lidc_db

    out = list(load_cohort("default", db=_lidc_db)) if default else []
    if n_pool > 0:
        data = json.loads(POOL_PATH.read_text())
        have = len(data["cohorts"][POOL_COHORT]["cases"])
        if n_pool > have:
            raise ValueError(f"the training pool has {have} cases; asked for {n_pool}")
        out += pool_cases(int(n_pool))
    return out
