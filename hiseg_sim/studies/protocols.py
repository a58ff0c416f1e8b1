"""Prompting protocols compared within each group: arm labels ``group@protocol``.

The ``protocols`` study kind: its ``[analysis]`` settings and its report sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hiseg_sim.analysis import metrics as M
from hiseg_sim.analysis import plots as P
from hiseg_sim.analysis.section import (
    Section,
    common_settings,
    fmt_ci,
    significance,
    summary_table,
)
from hiseg_sim.analysis.stats import paired_bootstrap
from hiseg_sim.studies.base import StudyKind


def _sections(data, settings: dict, out: Path):
    n_boot, seed = common_settings(settings)
    thresholds = [float(t) for t in settings.get("thresholds", (0.80, 0.85, 0.90))]
    max_k = int(settings.get("max_prompts", 20))
    e, a = data.episodes.copy(), data.actions.copy()
    for df in (e, a):
        parts = df["annotator"].str.split("@", n=1, expand=True)
        df["group"] = parts[0]
        df["protocol"] = parts[1] if parts.shape[1] > 1 else "default"
        df["protocol"] = df["protocol"].fillna("default")
    summ = M.group_summary(e, ["group", "protocol"], min(n_boot, 1000), seed)
    sec = Section("Prompting protocols", definitions=DEFINITIONS)
    tab = summary_table(summ.assign(group=summ["group"] + " @ " + summ["protocol"]))
    sec.tables.append(("Per group and protocol", tab))
    noc = M.noc_table(a, e, thresholds, max_k)
    noc["group"], noc["protocol"] = e["group"].to_numpy(), e["protocol"].to_numpy()
    ns = M.noc_summary(noc, ["group", "protocol"], max_k, min(n_boot, 1000), seed)
    wide = ns.pivot_table(index=["group", "protocol"], columns="threshold", values="noc_mean").reset_index()
    nev = ns.pivot_table(index=["group", "protocol"], columns="threshold", values="never_share").reset_index()
    for c in [c for c in nev.columns if str(c).startswith("noc@")]:
        wide[f"{c} never"] = [f"{100 * v:.0f}%" for v in nev[c]]
    sec.tables.append((f"NoC per group and protocol (never within {max_k} counts as {max_k})", wide))
    ttt = M.time_to_threshold(a, e, thresholds)
    ttt["group"], ttt["protocol"] = e["group"].to_numpy(), e["protocol"].to_numpy()
    ts = M.time_summary(ttt, ["group", "protocol"], min(n_boot, 1000), seed)
    ts["AUC [95% CI]"] = [fmt_ci(r["auc"], r["auc_lo"], r["auc_hi"]) for _, r in ts.iterrows()]
    sec.tables.append(
        ("Time to Dice levels and area under the Dice–time curve", ts.drop(columns=["auc", "auc_lo", "auc_hi"]))
    )
    t85 = 0.85 if 0.85 in thresholds else thresholds[0]
    reach = M.reach_curve(a, e, t85, max_k, ["group", "protocol"])
    sec.figures.append(
        (
            f"NoC curves per group: share of episodes at Dice ≥ {t85:.2f} after k prompts, one line per protocol",
            P.plot_reach_curves(reach, out / "figures" / "noc_by_protocol.png", t85, by="protocol", facet="group"),
        )
    )
    curves = M.dice_time_curves(a, e, by=["group", "protocol"], n_boot=min(n_boot, 300), seed=seed)
    sec.figures.append(
        (
            "Mean Dice against simulated time per group, one line per protocol (95 % CI over cases)",
            P.plot_dice_vs_time(
                curves,
                out / "figures" / "dice_vs_time_by_protocol.png",
                by="protocol",
                facet="group",
                title="Dice against simulated time by prompting protocol",
            ),
        )
    )
    headline: dict[str, Any] = {
        "protocols": {
            f"{r['group']}@{r['protocol']}": {"dice": r["dice"], "seconds": r["seconds"], "prompts": r["prompts"]}
            for _, r in summ.iterrows()
        },
        "noc": {
            f"{r['group']}@{r['protocol']}": {
                c: r[c] for c in wide.columns if str(c).startswith("noc@") and not str(c).endswith("never")
            }
            for _, r in wide.iterrows()
        },
    }
    lead = Section("Key findings", lead=True)
    for g, sub in summ.groupby("group", sort=False):
        if len(sub) < 2:
            continue
        best = sub.loc[sub["dice"].idxmax()]
        parts = []
        for _, r in sub.iterrows():
            if r["protocol"] == best["protocol"]:
                continue
            pb = paired_bootstrap(
                e,
                "final_dice",
                "annotator",
                f"{g}@{best['protocol']}",
                f"{g}@{r['protocol']}",
                n_boot=min(n_boot, 2000),
                seed=seed,
            )
            parts.append(
                f"{fmt_ci(pb['diff'], pb['lo'], pb['hi'], signed=True)} over `{r['protocol']}` "
                f"({'significant' if significance(pb['lo'], pb['hi']) == 'yes' else 'not significant'})"
            )
        lead.bullets.append(
            f"`{g}`: highest Dice with `{best['protocol']}`, "
            f"{fmt_ci(best['dice'], best['dice_lo'], best['dice_hi'])} in {best['seconds']:.1f} s; "
            "paired, " + "; ".join(parts) + "."
        )
    if lead.bullets:
        lead.notes.append(
            "Paired by case and replicate, 95 % bootstrap intervals over cases; significant: the "
            "interval excludes 0 (not adjusted for several comparisons)."
        )
    else:
        lead.bullets.append("Each group has one protocol here: nothing to compare within a group.")
    headline["findings"] = [b.replace("**", "").replace("`", "") for b in lead.bullets]
    return [lead, sec], headline


#: What the protocols report's own columns mean.
DEFINITIONS = {
    "group": "the group of simulated people, with the protocol after ' @ ' in the first table",
    "protocol": "the prompting protocol the arm was told to follow (box only, box then points, points only, or "
    "the profile's own habits: default)",
    r"noc@(\d+)": "NoC: mean prompts until the Dice first reaches the level (0.80 for noc@80); never counts as the "
    "prompt budget",
    r"noc@(\d+) never": "share of episodes that never reached the level within the prompt budget",
}


class ProtocolsKind(StudyKind):
    name = "protocols"
    analysis_keys = {
        "thresholds": "Dice levels of NoC and time-to-Dice (default 0.80, 0.85, 0.90)",
        "max_prompts": "prompt budget of NoC (default 20)",
    }
    label_keys = ()

    def sections(self, data, settings: dict, out: Path) -> tuple[list, dict]:
        return _sections(data, settings, out)


#: The entry point ``protocols`` of the group ``hiseg_sim.study_kinds``.
KIND = ProtocolsKind()
