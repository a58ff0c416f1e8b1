"""Simulated persons as sessions: for the fit's proxy correction, recovery runs and predictive checks.

:func:`simulate_sessions` runs a ``sequence`` study (each person works through the given cases in
a seeded order, learning as they go) of one annotator (a profile name or ``.toml`` path;
``posterior=True``: each person one joint draw of a fitted profile's posterior) and writes the
persons as sessions (:func:`hiseg_sim.fitting.sessions.write_run_sessions`). The run is kept in
``work_dir`` and resumed there, so a second fit on the same cases reuses the simulation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from hiseg_sim.fitting.sessions import Session, read_sessions, write_run_sessions

__all__ = ["simulate_sessions"]


def simulate_sessions(
    annotator: str,
    case_ids: Sequence[str],
    n_persons: int,
    work_dir: str | Path,
    *,
    cohort: str = "default",
    seed: int = 1,
    env: str = "2d",
    posterior: bool = False,
    executor: str = "serial",
    workers: int = 1,
    cache_dir: str | None = None,
    progress: bool = False,
) -> list[Session]:
    """Simulate ``n_persons`` persons of ``annotator`` on ``case_ids`` and return their sessions."""
    from hiseg_sim.experiments.runner import run_study
    from hiseg_sim.experiments.spec import spec_from_dict

    ids = list(case_ids)
    key = hashlib.sha256("\n".join([annotator, *ids, str(seed), env, str(posterior)]).encode()).hexdigest()[:10]
    arm: dict = {"name": str(annotator), "label": "person"}
    if posterior:
        arm["posterior"] = True
    doc = {
        "study": {"name": f"fit-sim-{key}", "kind": "groups", "seed": int(seed), "env": env},
        "cases": {"cohort": cohort, "ids": ids},
        "segmenters": {"names": ["litemedsam"]},
        "annotators": [arm],
        "run": {"replicates": int(n_persons), "executor": executor, "workers": int(workers), "design": "sequence"},
    }
    spec = spec_from_dict(doc, f"simulate_sessions({annotator})")
    run_dir = Path(work_dir) / f"run-{key}-n{n_persons}"
    run_study(spec, run_dir, progress=progress, cache_dir=cache_dir)
    out = Path(work_dir) / f"sessions-{key}-n{n_persons}"
    write_run_sessions(run_dir, out, cache_dir=cache_dir)
    return read_sessions(out)
