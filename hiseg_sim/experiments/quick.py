"""Ad-hoc studies without a TOML file (what ``hiseg-sim simulate`` runs).

>>> from hiseg_sim.experiments.quick import quick_spec
>>> spec = quick_spec(["expert_radiologist", "robot_ritm"], cohort="default", limit=4, persons=2)
>>> [a.label for a in spec.annotators], spec.run.replicates
(['expert_radiologist', 'robot_ritm'], 2)
"""

from __future__ import annotations

from collections.abc import Sequence

from hiseg_sim.experiments.spec import StudySpec, spec_from_dict

__all__ = ["quick_spec"]


def quick_spec(
    annotators: Sequence[str],
    *,
    name: str = "simulate",
    cohort: str = "default",
    limit: int | None = None,
    per_stratum: int | None = None,
    ids: Sequence[str] = (),
    replicates: int | None = None,
    persons: int | None = None,
    seed: int = 0,
    segmenters: Sequence[str] = ("litemedsam",),
    checkpoints: dict | None = None,
    env: str = "2d",
    kind: str = "groups",
    executor: str = "process",
    workers: int = 0,
    design: str = "sequence",
) -> StudySpec:
    """A validated :class:`StudySpec` from arguments (each annotator an arm labelled by its name).

    With the default ``design="sequence"`` each of the ``persons`` simulated people of an arm works
    through all the cases in a seeded order, learning as they go (``"crossed"``: a fresh person per
    episode); ``replicates`` is the same number under the study file's name for it (default 1).
    An annotator may be a registered name or a profile ``.toml`` path.
    """
    if persons is not None and replicates is not None and persons != replicates:
        raise ValueError(f"persons={persons} and replicates={replicates} disagree; give one of them")
    n_persons = int(persons or replicates or 1)
    cases: dict = {"cohort": cohort}
    if limit is not None:
        cases["limit"] = int(limit)
    if per_stratum is not None:
        cases["per_stratum"] = int(per_stratum)
    if ids:
        cases["ids"] = list(ids)
    segs: dict = {"names": list(segmenters)}
    if checkpoints:
        segs["checkpoints"] = dict(checkpoints)
    doc = {
        "study": {"name": name, "kind": kind, "seed": int(seed), "env": env},
        "cases": cases,
        "segmenters": segs,
        "annotators": [{"name": a} for a in annotators],
        "run": {"replicates": n_persons, "executor": executor, "workers": int(workers), "design": design},
    }
    return spec_from_dict(doc, f"simulate({', '.join(annotators)})")
