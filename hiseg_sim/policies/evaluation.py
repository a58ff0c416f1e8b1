"""A policy beside the simulated people and robots, at equal simulated time, from a study run.

The study is an ordinary one (``experiments/policy_eval.toml``: the holdout cohort, the policy,
``robot_ritm`` and ``junior_medical_student``), run by :func:`hiseg_sim.experiments.run_study`,
so every arm goes through the same runner, env, seeds scheme and metrics as in the group studies.
:func:`compare_at_equal_time` reads its tables:

- ``t*`` = the policy's median episode time (simulated seconds);
- ``dice@t*`` per episode: the Dice of the episode's Dice-vs-time step function at ``t*``
  (:func:`hiseg_sim.analysis.metrics.dice_time_matrix`: the Dice after the last action finished
  by then; the final Dice once the episode is over) — "higher Dice at equal simulated time";
- the final Dice and the episode seconds — "equal Dice in less time";

each as a paired difference (policy − arm) over episodes matched on (case, replicate), with a
95 % cluster-bootstrap interval over cases (:func:`hiseg_sim.analysis.stats.paired_bootstrap`).
:func:`plot_comparison` draws the Dice-vs-time curves with their bands and the paired differences.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hiseg_sim.analysis.metrics import dice_time_curves, dice_time_matrix, group_summary
from hiseg_sim.analysis.stats import paired_bootstrap

__all__ = ["MEASURES", "compare_at_equal_time", "plot_comparison"]

MEASURES = ("dice@t*", "final_dice", "seconds_total")


def _episode_table(data, t_star: float) -> pd.DataFrame:
    idx, M = dice_time_matrix(data.actions, data.episodes, np.array([t_star]))
    idx = idx.copy()
    idx["dice@t*"] = M[:, 0]
    return idx


def compare_at_equal_time(data, policy: str, arms: list[str] | None = None, n_boot: int = 2000, seed: int = 0) -> dict:
    """Policy ``policy`` (an arm label) against each other arm of a run (``load_run`` / ``run_study`` output).

    Returns a JSON-ready dict: ``t_star``, ``arms`` (one row per arm of
    :func:`~hiseg_sim.analysis.metrics.group_summary` plus ``dice_at_t_star``), ``paired``
    (``{"b", "measure", "diff", "lo", "hi", "n_pairs", "p_boot"}`` per arm and measure; ``diff``
    is policy − arm), ``episodes``, ``cohort``, ``study``.
    """
    ep = data.episodes
    if policy not in set(ep["annotator"]):
        raise ValueError(f"no arm {policy!r} in the run; arms: {sorted(set(ep['annotator']))}")
    arms = [a for a in (arms or list(dict.fromkeys(ep["annotator"]))) if a != policy]
    t_star = float(ep.loc[ep["annotator"] == policy, "seconds_total"].median())
    table = _episode_table(data, t_star)
    summ = group_summary(ep, n_boot=n_boot, seed=seed)
    at_t = table.groupby("annotator")["dice@t*"].mean()
    rows = []
    for r in summ.to_dict("records"):
        rows.append(
            {
                k: (
                    float(v) if isinstance(v, (np.floating, float)) else (int(v) if isinstance(v, (np.integer,)) else v)
                )
                for k, v in r.items()
            }
            | {"dice_at_t_star": float(at_t.get(r["annotator"], np.nan))}
        )
    paired = []
    for b in arms:
        for m in MEASURES:
            res = paired_bootstrap(
                table, m, "annotator", policy, b, pair_on=("case_id", "replicate"), n_boot=n_boot, seed=seed
            )
            paired.append({"b": b, "measure": m, **{k: res[k] for k in ("diff", "lo", "hi", "n_pairs", "p_boot")}})
    spec = getattr(data, "spec", None) or {}
    cases = spec.get("cases") or {}
    return {
        "study": spec.get("name"),
        "cohort": cases.get("cohort") or cases.get("source"),
        "policy": policy,
        "episodes": int(len(ep)),
        "t_star": t_star,
        "arms": rows,
        "paired": paired,
    }


def plot_comparison(data, result: dict, path: str | Path, horizon: float | None = None) -> Path:
    """Left: mean Dice against simulated seconds per arm with 95 % bands and ``t*`` marked.
    Right: paired differences (policy − arm) in Dice at ``t*`` and in final Dice, with 95 % intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = data.episodes
    if horizon is None:  # long enough for the slowest arm's typical episode (90th percentile per arm)
        horizon = float(ep.groupby("annotator")["seconds_total"].quantile(0.9).max())
    curves = dice_time_curves(data.actions, ep, horizon=horizon, n_grid=161, n_boot=500, seed=0)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [1.5, 1]})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (arm, g) in enumerate(curves.groupby("annotator", sort=False)):
        c = colors[i % len(colors)]
        lw = 2.6 if arm == result["policy"] else 1.6
        ax.plot(g["t"], g["dice"], color=c, lw=lw, label=arm)
        ax.fill_between(g["t"], g["lo"], g["hi"], color=c, alpha=0.18)
    t_star = result["t_star"]
    ax.axvline(t_star, color="k", ls="--", lw=1)
    ax.text(t_star, 0.02, f" t* = {t_star:.1f} s", fontsize=9)
    ax.set_xlim(0, horizon)
    ax.set_ylim(0, 1)
    ax.set_xlabel("simulated seconds")
    ax.set_ylabel("mean Dice (95 % band, bootstrap over cases)")
    ax.set_title(f"Dice against simulated time, cohort '{result.get('cohort')}'")
    ax.legend(fontsize=8, loc="lower right")
    rows = [p for p in result["paired"] if p["measure"] in ("dice@t*", "final_dice")]
    ys = np.arange(len(rows))[::-1]
    for y, p in zip(ys, rows):
        col = "tab:blue" if p["measure"] == "dice@t*" else "tab:gray"
        bx.errorbar(p["diff"], y, xerr=[[p["diff"] - p["lo"]], [p["hi"] - p["diff"]]], fmt="o", color=col, capsize=3)
    bx.set_yticks(ys, [f"vs {p['b']}\n{p['measure']}" for p in rows], fontsize=8)
    bx.axvline(0, color="k", lw=1)
    bx.set_xlabel("paired difference, policy − arm (95 % CI)")
    bx.set_title(f"{result['policy']}: Dice at t* and final Dice", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
