"""The recovery and posterior predictive runs of ``docs/fitting.md``, for one profile.

Inputs are sessions already simulated from the profile with ``hiseg-sim simulate``: the *data*
persons (fitted, as a pilot would be) and a *pool* of other persons of the same profile (the
calibration persons of every fit, and the held-out side of the perfect-fit null). For each pilot
size the data's first persons and nodules are fitted (:func:`~hiseg_sim.fitting.checks.recovery_rows`);
then the first half of the data persons is fitted, persons are simulated from that fit's posterior
(one joint draw each), and their per-nodule Dice and seconds are compared with the other half's
(:func:`~hiseg_sim.fitting.checks.predictive_ks`), beside what a perfect fit gives at the same
numbers of persons (:func:`~hiseg_sim.fitting.checks.predictive_ks_null`). ::

    hiseg-sim simulate non_medical --limit 16 --persons 8 --seed 0 --traces runs/recovery/non_medical-data
    hiseg-sim simulate non_medical --limit 16 --persons 64 --seed 2 --traces runs/recovery/non_medical-pool
    python -m hiseg_sim.fitting.recovery non_medical runs/recovery/non_medical-data \\
        runs/recovery/non_medical-pool runs/recovery/non_medical.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from hiseg_sim.annotators.registry import load_profile
from hiseg_sim.fitting.checks import predictive_ks, predictive_ks_null, recovery_rows, subset
from hiseg_sim.fitting.fit import fit_sessions, load_references, write_profile
from hiseg_sim.fitting.sessions import read_sessions
from hiseg_sim.fitting.simulate import simulate_sessions

__all__ = ["SIZES", "run"]

#: Pilot sizes (persons, nodules) of the recovery table.
SIZES = ((2, 16), (4, 16), (8, 8), (8, 16))


def run(
    profile: str,
    data_dir: str | Path,
    pool_dir: str | Path,
    work_dir: str | Path,
    *,
    sizes=SIZES,
    n_predictive: int = 8,
    null_reps: int = 300,
    log=print,
) -> dict:
    """Recovery rows per size, the predictive check and its perfect-fit null, as one JSON-able dict."""
    t0 = time.time()
    data, pool = read_sessions(data_dir), read_sessions(pool_dir)
    truth = load_profile(profile)
    refs = load_references(data + pool)
    out: dict = {"profile": truth.name, "rows": recovery_rows(truth, data, pool, refs, list(sizes))}
    log(f"{truth.name}: recovery {time.time() - t0:.0f} s")
    half = len(data) // 2
    fit = fit_sessions(subset(data, half), truth, calibration=pool, references=refs, seed=3)
    work = Path(work_dir)
    toml = write_profile(fit, work / f"{truth.name}-half.toml", name=f"{truth.name}_half")
    cases = sorted({e.case for s in data for e in s.episodes})
    pred = simulate_sessions(
        str(toml), cases, n_predictive, work / "predictive", seed=7, posterior=True, executor="process", workers=2
    )
    held = data[half:]
    out["ppc"] = predictive_ks(held, pred)
    null = predictive_ks_null(pool, len(held), n_predictive, reps=null_reps)
    out["null"] = {
        k: {
            "q50_q90_q95": np.quantile(v, [0.5, 0.9, 0.95]).tolist(),
            "frac_above_0_15": float((v > 0.15).mean()),
            "p": float((v >= out["ppc"][k]).mean()),
        }
        for k, v in null.items()
    }
    out["notes"] = fit.notes
    out["seconds"] = time.time() - t0
    log(f"{truth.name}: done {out['seconds']:.0f} s; predictive {out['ppc']}")
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile")
    ap.add_argument("data_dir")
    ap.add_argument("pool_dir")
    ap.add_argument("out", help="the JSON file to write")
    a = ap.parse_args(argv)
    out = Path(a.out)
    res = run(a.profile, a.data_dir, a.pool_dir, out.parent / f"{out.stem}-work")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
