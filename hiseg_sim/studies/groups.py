"""Which annotator group reaches what Dice in how much time: people, robots and policies on the same cases.

The ``groups`` study kind: its ``[analysis]`` settings and its report sections."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hiseg_sim.analysis import metrics as M
from hiseg_sim.analysis import plots as P
from hiseg_sim.analysis.section import (
    Section,
    cluster_ci,
    common_settings,
    fmt_ci,
    ordered,
    summary_table,
    with_group,
)
from hiseg_sim.analysis.stats import paired_bootstrap
from hiseg_sim.studies.base import StudyKind



def _sections(data, settings: dict, out: Path):
    n_boot, seed = common_settings(settings)
    thresholds = [float(t) for t in settings.get("thresholds", (0.80, 0.85, 0.90))]
    max_k = int(settings.get("max_prompts", 20))
    e, a = with_group(data)
    summ = ordered(M.group_summary(e, "group", n_boot, seed), "group")
    sec = Section("Quality, time and prompts per group")
    sec.tables.append(("Per group: final Dice against the reference, simulated seconds and prompts per nodule",
                       summary_table(summ)))
    ref = settings.get("reference", "expert_radiologist")
    headline: dict = {"groups": {r["group"]: {"dice": r["dice"], "dice_lo": r["dice_lo"], "dice_hi": r["dice_hi"],
                                              "seconds": r["seconds"], "prompts": r["prompts"], "n": int(r["n"])}
                                 for _, r in summ.iterrows()}}
    people = summ[summ["group"].map(P.is_person)]
    if len(people):
        pe = e[e["group"].map(P.is_person)]
        mean, lo, hi = cluster_ci(pe["final_dice"], pe["case_id"], n_boot, seed)
        sec.paragraphs.append(f"Mean Dice over all people groups: **{fmt_ci(mean, lo, hi)}** (Hi-Seg reports almost "
                              "0.85 across its annotator groups).")
        headline["people_mean_dice"] = [mean, lo, hi]
    if ref in set(e["annotator"]):
        rows = []
        for g in summ["group"]:
            if g == ref:
                continue
            r = paired_bootstrap(e, "final_dice", "group", g, ref, n_boot=n_boot, seed=seed)
            t = paired_bootstrap(e, "seconds_total", "group", g, ref, n_boot=n_boot, seed=seed)
            rows.append({"group": g, f"ΔDice vs {ref} [95% CI]": fmt_ci(r["diff"], r["lo"], r["hi"]),
                         "p (bootstrap)": r["p_boot"], f"Δseconds vs {ref} [95% CI]": fmt_ci(t["diff"], t["lo"], t["hi"], 1),
                         "pairs": r["n_pairs"]})
        if rows:
            sec.tables.append((f"Paired differences against {ref} (same case and replicate)", pd.DataFrame(rows)))
    curves = M.dice_time_curves(a, e, by="group", n_boot=min(n_boot, 400), seed=seed)
    sec.figures.append(("Mean Dice against simulated time per group (bands: 95 % CI over cases). Curves stay at "
                        "the final Dice after a person accepts.",
                        P.plot_dice_vs_time(curves, out / "figures" / "dice_vs_time.png", by="group")))
    sec.figures.append(("Final Dice per episode, seconds and prompts per nodule, per group",
                        P.plot_distributions(e, summ, out / "figures" / "group_distributions.png", by="group")))
    strata = Section("By nodule size and texture")
    for col, name in (("size_band", "size band (mm)"), ("texture_group", "texture")):
        t = M.strata_table(e, "final_dice", "group", col)
        t = t.reindex(P.order_groups([i for i in t.index if i != "n (episodes)"]) + ["n (episodes)"]).astype(object)
        t.loc["n (episodes)"] = [str(int(v)) if pd.notna(v) else "0" for v in t.loc["n (episodes)"]]
        strata.tables.append((f"Mean final Dice by {name}", t.reset_index().rename(columns={"index": "group"})))
        headline.setdefault("by_" + col, {})
        headline["by_" + col] = {str(k): {c: float(v) for c, v in row.items() if pd.notna(v)}
                                 for k, row in t.iterrows() if k != "n (episodes)"}
    strata.figures.append(("Mean final Dice per group by size band and by texture",
                           P.plot_strata(e, out / "figures" / "dice_by_size_texture.png", by="group")))
    inter = Section("Prompts and time to quality")
    noc = M.noc_table(a, e, thresholds, max_k)
    ns = M.noc_summary(noc, "group", max_k, min(n_boot, 1000), seed)
    wide = ns.pivot(index="group", columns="threshold", values="noc_mean")
    never = ns.pivot(index="group", columns="threshold", values="never")
    tab = pd.DataFrame({"group": wide.index})
    for c in wide.columns:
        tab[f"{c} mean"] = wide[c].to_numpy()
        tab[f"{c} never"] = never[c].to_numpy().astype(int)
    inter.tables.append((f"NoC: prompts to reach each Dice level (never reached within {max_k} prompts counts as "
                         f"{max_k}, as in RITM; 'never' = episodes that did not get there)", ordered(tab, "group")))
    dk = M.dice_after_k(a, e, (1, 2, 3, 5), "group", min(n_boot, 1000), seed)
    dkt = dk.pivot(index="group", columns="k", values="dice")
    dkt.columns = [f"Dice after {k}" for k in dkt.columns]
    inter.tables.append(("Mean Dice after k prompts", ordered(dkt.reset_index(), "group")))
    ttt = M.time_to_threshold(a, e, thresholds)
    ts = M.time_summary(ttt, "group", min(n_boot, 1000), seed)
    ts["AUC [95% CI]"] = [fmt_ci(r["auc"], r["auc_lo"], r["auc_hi"]) for _, r in ts.iterrows()]
    ts = ts.drop(columns=["auc", "auc_lo", "auc_hi"])
    inter.tables.append(("Simulated seconds to reach each Dice level (median over the episodes that reach it, and "
                         "the share that do), and the area under the Dice–time curve over the longest episode",
                         ordered(ts, "group")))
    t85 = 0.85 if 0.85 in thresholds else thresholds[len(thresholds) // 2]
    reach = M.reach_curve(a, e, t85, max_k, "group")
    inter.figures.append((f"NoC curves: share of episodes at Dice ≥ {t85:.2f} after k prompts",
                          P.plot_reach_curves(reach, out / "figures" / "noc_curves.png", t85, by="group")))
    headline["noc"] = {r["group"]: {r2["threshold"]: r2["noc_mean"] for _, r2 in ns[ns["group"] == r["group"]].iterrows()}
                       for _, r in summ.iterrows()}
    return [sec, strata, inter], headline


class GroupsKind(StudyKind):
    name = "groups"
    analysis_keys = {"reference": "arm the others are compared with, paired by case and replicate (default expert_radiologist)",
                     "thresholds": "Dice levels of NoC and time-to-Dice (default 0.80, 0.85, 0.90)",
                     "max_prompts": "prompt budget of NoC (default 20)",
                     "policy": "the policy arm `hiseg-sim eval-policy` compares with the people"}
    label_keys = ("reference", "policy")

    def sections(self, data, settings: dict, out: Path) -> tuple[list, dict]:
        return _sections(data, settings, out)


#: The entry point ``groups`` of the group ``hiseg_sim.study_kinds``.
KIND = GroupsKind()
