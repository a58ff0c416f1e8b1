"""Executors side by side on one sweep: wall time, speed-up over serial, and whether the rows agree.

>>> from hiseg_sim.experiments.compare import compare_executors
>>> res = compare_executors("demo", ["serial", "process"], out_root="runs/bench")   # doctest: +SKIP
>>> res["speedup"]["process"], res["identical"]["process"]                           # doctest: +SKIP

Each executor runs the same spec from scratch into ``out_root/<executor>-<i>/`` with the same
embedding cache. ``warmup=True`` first runs the sweep once serially so every slice is in the
cache (the timings then measure the episodes, not the encoder). With ``rounds > 1`` the executors
alternate (serial, process, …, serial, process, …) so a change in the machine's load hits all of
them; the load average is recorded around each run, because on a shared machine it is part of
the result.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from hiseg_sim.experiments.runner import run_study
from hiseg_sim.experiments.spec import StudySpec, load_spec

__all__ = ["compare_executors", "same_rows"]


def same_rows(a, b) -> bool:
    """Whether two runs have exactly the same episode and action rows."""
    try:
        pd.testing.assert_frame_equal(
            a.episodes.reset_index(drop=True), b.episodes.reset_index(drop=True), check_exact=True
        )
        pd.testing.assert_frame_equal(
            a.actions.reset_index(drop=True), b.actions.reset_index(drop=True), check_exact=True
        )
    except AssertionError:
        return False
    return True


def compare_executors(
    spec: StudySpec | str,
    executors=("serial", "process"),
    out_root: str | os.PathLike = "runs/bench",
    workers: int | None = None,
    cache_dir: str | None = None,
    rounds: int = 1,
    warmup: bool = True,
    progress: bool = False,
) -> dict:
    """Run ``spec`` on each executor (``rounds`` times, alternating) and compare.

    Returns ``{"runs": [{"executor", "round", "wall_s", "loadavg_before", "loadavg_after",
    "episodes"}], "median_s": {executor: s}, "speedup": {executor: serial median / its median},
    "speedup_vs_one_thread": {executor: "serial:1" median / its median} (None without "serial:1"),
    "identical": {executor: rows equal to the first executor's}, "cores": n, "episodes": n}``.

    An executor may be given as ``"name:threads"`` (e.g. ``"serial:1"``: one intra-op thread)
    to compare thread settings too.
    """
    if not isinstance(spec, StudySpec):
        spec = load_spec(spec)
    root = Path(out_root)
    if warmup:
        run_study(spec, root / "warmup", executor="serial", cache_dir=cache_dir, fresh=True, progress=progress)
    runs: list = []
    data: dict = {}
    for r in range(int(rounds)):
        for ex in executors:
            name, _, th = ex.partition(":")
            before = list(os.getloadavg())
            t0 = time.perf_counter()
            d = run_study(
                spec,
                root / f"{name}{'-t' + th if th else ''}-{r}",
                executor=name,
                workers=workers,
                cache_dir=cache_dir,
                fresh=True,
                progress=progress,
                threads=int(th) if th else None,
            )
            wall = time.perf_counter() - t0
            runs.append(
                {
                    "executor": ex,
                    "round": r,
                    "wall_s": round(wall, 2),
                    "loadavg_before": [round(v, 2) for v in before],
                    "loadavg_after": [round(v, 2) for v in os.getloadavg()],
                    "episodes": len(d.episodes),
                    "workers": d.meta["sessions"][-1]["workers"],
                }
            )
            data.setdefault(ex, d)
    df = pd.DataFrame(runs)
    med = df.groupby("executor")["wall_s"].median().to_dict()
    base = med.get("serial", next(iter(med.values())))
    from hiseg_sim.experiments.executors import available_cores

    return {
        "runs": runs,
        "median_s": med,
        "speedup": {ex: (base / s if base else float("nan")) for ex, s in med.items()},
        "speedup_vs_one_thread": ({ex: med["serial:1"] / s for ex, s in med.items()} if "serial:1" in med else None),
        "identical": {ex: same_rows(data[executors[0]], d) for ex, d in data.items()},
        "cores": available_cores(),
        "episodes": int(len(next(iter(data.values())).episodes)),
    }
