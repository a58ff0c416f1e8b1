"""Training cohorts for policies: the default cohort's nodules, rendered more than once.

The default cohort has 40 nodules, each in one synthetic chest (its ``phantom_seed``). A policy
that must find the nodule in the image learns little about "a nodule" from 40 pictures, so
:func:`default_renderings` puts every default-cohort nodule (the same real LIDC contour) into
``n_renderings`` synthetic chests: the shipped one and ``n_renderings - 1`` more, with phantom
seeds drawn deterministically from the nodule id. Anatomy, vessels, noise and the nodule's place
change; the nodule's outline does not. No holdout nodule is used (they come from other patients).

Each rendering is a case of its own, ``"<nodule id>@r<k>"`` (``k = 0`` is the shipped phantom);
:func:`nodule_of` gives the nodule back, for splits that keep a nodule's renderings together.
All of them go through the on-disk case cache, so only the first call builds them (about 0.2 s
each).

>>> nodule_of("LIDC-IDRI-0078/n1@r3")
'LIDC-IDRI-0078/n1'
"""

from __future__ import annotations

import dataclasses

from hiseg_sim.seeding import keyed_rng, text_key

__all__ = ["default_renderings", "nodule_of", "holdout_extra_cases", "rendering_manifest", "validation_cases"]

SEP = "@r"


def nodule_of(case_id: str) -> str:
    """The nodule id of a rendering's case id (the id itself when it is not a rendering)."""
    return str(case_id).split(SEP, 1)[0]


def rendering_manifest(n_renderings: int = 8, cohort: str = "default", nodules: int | None = None) -> dict:
    """A manifest whose cohort ``"renderings"`` lists ``n_renderings`` phantoms per nodule of
    ``cohort`` (its first ``nodules`` nodules if given)."""
    from hiseg_sim.data.cohort import read_manifest

    if int(n_renderings) < 1:
        raise ValueError(f"n_renderings must be >= 1; got {n_renderings!r}")
    man = read_manifest()
    if cohort == "holdout":
        raise ValueError("policies are trained on the default cohort; the holdout cohort is for evaluation only")
    cases = []
    for entry in man["cohorts"][cohort]["cases"][:nodules]:
        rng = keyed_rng(text_key(entry["nodule_id"]), 7)
        seeds = [int(entry["phantom_seed"])]
        while len(seeds) < int(n_renderings):
            s = int(rng.integers(10_000, 1_000_000))
            if s not in seeds:
                seeds.append(s)
        cases.extend({**entry, "phantom_seed": s, "rendering": k} for k, s in enumerate(seeds))
    return {"version": 1, "cohorts": {"renderings": {"cases": cases}}}


def default_renderings(n_renderings: int = 8, nodules: int | None = None) -> list:
    """Every default-cohort nodule (the first ``nodules`` if given) in ``n_renderings`` phantoms,
    rendering by rendering (all nodules of rendering 0, then of rendering 1, ...), as cases named
    ``"<nodule id>@r<k>"``."""
    from hiseg_sim.data.cohort import iter_cohort

    man = rendering_manifest(n_renderings, nodules=nodules)
    out = []
    for entry, case in zip(man["cohorts"]["renderings"]["cases"], iter_cohort("renderings", man)):
        meta = {**case.meta, "rendering": entry["rendering"], "nodule_id": entry["nodule_id"]}
        out.append(dataclasses.replace(case, case_id=f"{entry['nodule_id']}{SEP}{entry['rendering']}", meta=meta))
    order = sorted(range(len(out)), key=lambda i: (out[i].meta["rendering"], i))
    return [out[i] for i in order]


def validation_cases(n: int = 40) -> list:
    """``n`` nodules of calibration patients that are in neither the default nor the holdout cohort
    (the last ``n`` of the shipped 200-nodule pool, :mod:`hiseg_sim.downstream.pool`): for choosing
    between policies without looking at the holdout."""
    from hiseg_sim.downstream.pool import pool_cases

    cases = pool_cases()
    return cases[-int(n) :]


def holdout_extra_cases(n: int = 96, seed: int = 0) -> list:
    """``n`` more holdout-split nodules (LIDC-IDRI-0801..1012), none of them in the shipped
    holdout cohort, stratified by size band and texture like the shipped cohorts, each in a seeded
    phantom: a wider evaluation set for a policy chosen without them (``experiments/policy_eval_wide.toml``).
    Deterministic in ``seed``; reads the LIDC database the first time (a few seconds)."""
    from hiseg_sim.data.cohort import _candidates, _draw, load_cohort, read_manifest
    from hiseg_sim.experiments.cases import _lidc_db

    db = _lidc_db()
    taken = {c["nodule_id"] for coh in read_manifest()["cohorts"].values() for c in coh["cases"]}
    rows = [r for r in _candidates(db, "holdout") if r["nodule_id"] not in taken]
    if any(int(r["patient_id"].split("-")[-1]) <= 800 for r in rows):  # pragma: no cover - defined by the database
        raise ValueError("holdout candidates from calibration patients")
    chosen, _ = _draw(rows, int(n), keyed_rng(seed, 0x40))
    cases = [{k: c[k] for k in ("nodule_id", "phantom_seed", "diameter_mm", "texture", "n_readers")} for c in chosen]
    man = {"version": 1, "cohorts": {"holdout_extra": {"split": "holdout", "cases": cases}}}
    return load_cohort("holdout_extra", manifest=man, db=db)
