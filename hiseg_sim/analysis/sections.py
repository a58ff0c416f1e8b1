"""The analysis behind each kind of report: ``groups``, ``crowd``, ``training``, ``protocols``.

Each function takes the run's tables (:class:`~hiseg_sim.experiments.storage.RunData`), the
spec's ``[analysis]`` settings and the output directory, and returns ``(sections, headline)``.
Settings read (all optional):

=============  =====================================================================  ==============
kind           key: meaning                                                            default
=============  =====================================================================  ==============
all            ``n_boot``: bootstrap replicates; ``seed``: their seed                  2000; 0
groups         ``reference``: arm the others are compared with, paired by case and     expert_radiologist
               replicate; ``thresholds``: NoC / time-to-Dice levels; ``max_prompts``    0.80,0.85,0.90; 20
crowd          ``worker``: the arm fused; ``reference``: the one-person comparison;     crowd_worker;
               ``ks``; ``draws`` per k and nodule; ``methods``; ``targets`` (Dice)      expert_radiologist
training       ``learners``: arms whose practice is measured; ``reference``; ``margin``  see the spec
               (Dice); ``window`` (smoothing, cases)                                    0.02; 5
protocols      arm labels ``group@protocol``; ``thresholds``; ``max_prompts``            –
downstream     rebuilds ``downstream.md`` from the files the study kept (no retraining)  –
=============  =====================================================================  ==============
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hiseg_sim.analysis import crowd as C
from hiseg_sim.analysis import learning as L
from hiseg_sim.analysis import metrics as M
from hiseg_sim.analysis import plots as P
from hiseg_sim.analysis.report import Section, fmt_ci
from hiseg_sim.analysis.stats import paired_bootstrap

__all__ = ["KINDS", "groups", "crowd", "training", "protocols", "downstream"]


def _common(settings: dict) -> tuple[int, int]:
    return int(settings.get("n_boot", 2000)), int(settings.get("seed", 0))


def _with_group(data) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Episodes and actions with a ``group`` column: the arm, plus the segmenter when there are several."""
    e, a = data.episodes.copy(), data.actions.copy()
    multi = e["segmenter"].nunique() > 1
    for df in (e, a):
        df["group"] = (df["annotator"] + " [" + df["segmenter"].str.rsplit(":", n=1).str[-1] + "]") if multi \
            else df["annotator"]
    return e, a


def _summary_table(summ: pd.DataFrame, by: str = "group") -> pd.DataFrame:
    rows = []
    for _, r in summ.iterrows():
        rows.append({by: r[by], "episodes": int(r["n"]), "Dice mean [95% CI]": fmt_ci(r["dice"], r["dice_lo"], r["dice_hi"]),
                     "Dice median": r["dice_median"], "IoU": r["iou"], "HD95 mm (median)": r["hd95_median"],
                     "NSD@1mm": r["nsd"], "seconds [95% CI]": fmt_ci(r["seconds"], r["seconds_lo"], r["seconds_hi"], 1),
                     "prompts": r["prompts"], "accepted": f"{100 * r['accepted']:.0f}%",
                     "stopped unsatisfied": f"{100 * r['gave_up']:.0f}%"})
    return pd.DataFrame(rows)


def _ordered(df: pd.DataFrame, col: str) -> pd.DataFrame:
    order = {g: i for i, g in enumerate(P.order_groups(df[col].unique()))}
    return df.sort_values(col, key=lambda s: s.map(order), kind="mergesort").reset_index(drop=True)


# ---- groups ------------------------------------------------------------------------------------
def groups(data, settings: dict, out: Path):
    n_boot, seed = _common(settings)
    thresholds = [float(t) for t in settings.get("thresholds", (0.80, 0.85, 0.90))]
    max_k = int(settings.get("max_prompts", 20))
    e, a = _with_group(data)
    summ = _ordered(M.group_summary(e, "group", n_boot, seed), "group")
    sec = Section("Quality, time and prompts per group")
    sec.tables.append(("Per group: final Dice against the reference, simulated seconds and prompts per nodule",
                       _summary_table(summ)))
    ref = settings.get("reference", "expert_radiologist")
    headline: dict = {"groups": {r["group"]: {"dice": r["dice"], "dice_lo": r["dice_lo"], "dice_hi": r["dice_hi"],
                                              "seconds": r["seconds"], "prompts": r["prompts"], "n": int(r["n"])}
                                 for _, r in summ.iterrows()}}
    people = summ[summ["group"].map(P.is_person)]
    if len(people):
        pe = e[e["group"].map(P.is_person)]
        mean, lo, hi = _ci(pe["final_dice"], pe["case_id"], n_boot, seed)
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
                         f"{max_k}, as in RITM; 'never' = episodes that did not get there)", _ordered(tab, "group")))
    dk = M.dice_after_k(a, e, (1, 2, 3, 5), "group", min(n_boot, 1000), seed)
    dkt = dk.pivot(index="group", columns="k", values="dice")
    dkt.columns = [f"Dice after {k}" for k in dkt.columns]
    inter.tables.append(("Mean Dice after k prompts", _ordered(dkt.reset_index(), "group")))
    ttt = M.time_to_threshold(a, e, thresholds)
    ts = M.time_summary(ttt, "group", min(n_boot, 1000), seed)
    ts["AUC [95% CI]"] = [fmt_ci(r["auc"], r["auc_lo"], r["auc_hi"]) for _, r in ts.iterrows()]
    ts = ts.drop(columns=["auc", "auc_lo", "auc_hi"])
    inter.tables.append(("Simulated seconds to reach each Dice level (median over the episodes that reach it, and "
                         "the share that do), and the area under the Dice–time curve over the longest episode",
                         _ordered(ts, "group")))
    t85 = 0.85 if 0.85 in thresholds else thresholds[len(thresholds) // 2]
    reach = M.reach_curve(a, e, t85, max_k, "group")
    inter.figures.append((f"NoC curves: share of episodes at Dice ≥ {t85:.2f} after k prompts",
                          P.plot_reach_curves(reach, out / "figures" / "noc_curves.png", t85, by="group")))
    headline["noc"] = {r["group"]: {r2["threshold"]: r2["noc_mean"] for _, r2 in ns[ns["group"] == r["group"]].iterrows()}
                       for _, r in summ.iterrows()}
    return [sec, strata, inter], headline


def _ci(values, clusters, n_boot, seed):
    from hiseg_sim.analysis.stats import bootstrap_ci

    return bootstrap_ci(values, clusters, n_boot, seed=seed)


# ---- crowd -------------------------------------------------------------------------------------
def crowd(data, settings: dict, out: Path):
    n_boot, seed = _common(settings)
    e = data.episodes
    worker = settings.get("worker", "crowd_worker")
    ref_arm = settings.get("reference", "expert_radiologist")
    methods = tuple(settings.get("methods", ("majority", "staple")))
    pool = int(e[e["annotator"] == worker].groupby("case_id").size().min())
    ks = [int(k) for k in settings.get("ks", range(1, pool + 1)) if int(k) <= pool]
    targets = [float(t) for t in settings.get("targets", (0.80, 0.85))]
    draws = C.crowd_draws(e, data.cases, worker, ks, methods, int(settings.get("draws", 30)), seed)
    curve = C.crowd_curve(draws, min(n_boot, 1000), seed)
    ref = C.single_arm_reference(e, ref_arm, min(n_boot, 1000), seed) if ref_arm in set(e["annotator"]) else None
    sec = Section(f"Fusing {worker} masks")
    sec.paragraphs.append(f"{pool} independent {worker}s per nodule on {e['case_id'].nunique()} nodules; for each k, "
                          f"{int(settings.get('draws', 30))} random subsets of k workers per nodule are fused and "
                          "scored (all of them once when k is the whole pool). Cost = the k workers' simulated seconds. Majority "
                          "vote is strict (ties at even k go to background), hence its zigzag.")
    wide = curve.pivot(index="k", columns="method", values="dice")
    tab = pd.DataFrame({"k": wide.index})
    for m in methods:
        c = curve[curve["method"] == m].set_index("k")
        tab[f"{m} Dice [95% CI]"] = [fmt_ci(c.at[k, "dice"], c.at[k, "lo"], c.at[k, "hi"]) for k in wide.index]
    tab["total seconds"] = curve[curve["method"] == methods[0]].set_index("k").loc[wide.index, "seconds"].to_numpy()
    sec.tables.append(("Expected Dice of the fused mask and total seconds against workers per nodule", tab))
    headline: dict = {"curve": {m: {int(r["k"]): [r["dice"], r["lo"], r["hi"], r["seconds"]]
                                    for _, r in curve[curve["method"] == m].iterrows()} for m in methods}}
    rows = []
    for m in methods:
        sat = C.saturation_k(curve, m)
        need = {t: C.workers_needed(curve, t, m) for t in targets}
        need_c = {t: C.workers_needed(curve, t, m, conservative=True) for t in targets}
        rows.append({"method": m, "Dice k=1": sat["dice_k1"], f"Dice k={sat['k_max']}": sat["dice_kmax"],
                     "90% of the gain at k": sat["k_share"], "next worker adds < 0.005 from k": sat["k_marginal"],
                     **{f"k for Dice ≥ {t:.2f} (mean / lower CI)": f"{_k(need[t])} / {_k(need_c[t])}" for t in targets}})
        headline[f"saturation_{m}"] = sat
        headline[f"workers_needed_{m}"] = {f"{t:.2f}": [need[t], need_c[t]] for t in targets}
    sec.tables.append(("Where fusion saturates, and how many workers a Dice target needs (None: not reached "
                       f"with {max(ks)})", pd.DataFrame(rows)))
    if ref is not None:
        sec.paragraphs.append(f"One {ref_arm} per nodule: Dice **{fmt_ci(ref['dice'], ref['lo'], ref['hi'])}** in "
                              f"{ref['seconds']:.1f} simulated seconds.")
        headline["reference"] = ref
    sec.figures.append((f"Fused Dice against {worker}s per nodule (left) and against total simulated seconds (right); "
                        f"the dashed line / star is one {ref_arm}",
                        P.plot_crowd(curve, out / "figures" / "crowd_fusion.png", ref, targets,
                                     worker=worker.replace("_", " "),
                                     saturation=headline.get("saturation_staple"))))
    arms = Section("Single annotators")
    summ = _ordered(M.group_summary(e, "annotator", min(n_boot, 1000), seed), "annotator")
    arms.tables.append(("Per arm, one annotator per nodule", _summary_table(summ.rename(columns={"annotator": "group"}))))
    by_band = draws[draws["method"] == "staple"].groupby(["size_band", "k"])["dice"].mean().unstack("k") \
        if "size_band" in draws else None
    if by_band is not None:
        by_band = by_band.reindex([b for b in M.SIZE_BANDS if b in by_band.index])
        by_band.columns = [f"k={k}" for k in by_band.columns]
        arms.tables.append(("STAPLE Dice by size band and k", by_band.reset_index()))
    return [sec, arms], headline


def _k(v):
    return "None" if v is None else str(v)


def _reach_txt(r: dict, length: int) -> str:
    hi = str(r["hi"]) if r["hi"] is not None else f">{length}"
    lo = str(r["lo"]) if r["lo"] is not None else f">{length}"
    est = str(r["cases"]) if r["cases"] is not None else f"not within {length}"
    return f"{est} [{lo}, {hi}]"


# ---- training ----------------------------------------------------------------------------------
def training(data, settings: dict, out: Path):
    n_boot, seed = _common(settings)
    e = data.episodes
    arms = list(dict.fromkeys(e["annotator"]))
    ref = settings.get("reference", "junior_medical_student")
    learners = list(settings.get("learners", [a for a in arms if a != ref]))
    window = int(settings.get("window", 5))
    margin = float(settings.get("margin", 0.02))
    curves = L.learning_curve(e, "annotator", "final_dice", min(n_boot, 500), seed, window)
    tcurves = L.learning_curve(e, "annotator", "seconds_total", min(n_boot, 500), seed, window)
    sec = Section("Learning curves")
    length = int(e["position"].max()) + 1
    persons = e.groupby("annotator")["replicate"].nunique()
    n_p = f"{int(persons.min())}" if persons.min() == persons.max() else f"{int(persons.min())}–{int(persons.max())}"
    sec.paragraphs.append(f"Each arm: {n_p} simulated persons, each working "
                          f"through {length} cases in a seeded order shared by all arms (person r of every arm meets "
                          f"the same case at the same position). Curves are smoothed over {window} cases.")
    reaches, headline = [], {"reach": {}}
    rows = []
    for lrn in learners:
        if ref not in arms or lrn not in arms:
            continue
        r = L.cases_to_reach(e, lrn, ref, margin, window, n_boot, seed, mode="exp")
        st = L.cases_to_reach(e, lrn, ref, margin, window, n_boot, seed, mode="stay")
        fit = L.fit_exponential(L.paired_gap_matrix(e, lrn, ref).mean(axis=0).to_numpy())
        reaches.append(r)
        rows.append({"learner": lrn, "exponential fit: cases [95% CI]": _reach_txt(r, length),
                     "draws never": f"{100 * r['never_share']:.0f}%",
                     "fit: gap at start → asymptote (tau cases)": "–" if fit is None else
                     f"{fit[0]:+.3f} → {fit[1]:+.3f} ({fit[2]:.1f})",
                     "smoothed gap within it to the end from [95% CI]": _reach_txt(st, length),
                     "draws never ": f"{100 * st['never_share']:.0f}%"})
        headline["reach"][lrn] = {"exp": {k: v for k, v in r.items() if k != "curve"},
                                  "stay": {k: v for k, v in st.items() if k != "curve"},
                                  "fit_g0_a_tau": fit}
    if rows:
        sec.tables.append((f"Practice cases until the learner's Dice comes within {margin:.2f} of {ref}'s on the same "
                           "cases: where a fitted exponential learning curve of the paired gap crosses the margin, and "
                           "(stricter) from where the smoothed gap stays within it to the end; intervals and 'never' "
                           "(share of draws not getting there within the sequence) from a bootstrap over persons",
                           pd.DataFrame(rows)))
    first_last = []
    for arm in P.order_groups(arms):
        g = e[e["annotator"] == arm]
        head, tail = g[g["position"] < window], g[g["position"] >= length - window]
        first_last.append({"arm": arm, f"Dice, first {window} cases": head["final_dice"].mean(),
                           f"Dice, last {window} cases": tail["final_dice"].mean(),
                           f"seconds, first {window}": head["seconds_total"].mean(),
                           f"seconds, last {window}": tail["seconds_total"].mean(),
                           "feedback": ", ".join(sorted(g["feedback"].unique()))})
    sec.tables.append(("Start and end of the sequence per arm", pd.DataFrame(first_last)))
    gaps = pd.concat([L.gap_curve(e, lrn, ref, window, min(n_boot, 500), seed) for lrn in learners
                      if lrn in arms and ref in arms], ignore_index=True) if ref in arms else None
    sec.figures.append((f"Learning curves over {length} cases: Dice per case (left), the gap to {ref} on the same "
                        "cases with where each learner's fitted learning curve reaches the margin and its 95 % interval "
                        "(middle), and simulated seconds per case (right)",
                        P.plot_learning(curves, out / "figures" / "learning_curves.png", reaches=reaches,
                                        gaps=gaps, time_curves=tcurves, reference=ref, margin=margin)))
    return [sec], headline


# ---- protocols ---------------------------------------------------------------------------------
def protocols(data, settings: dict, out: Path):
    n_boot, seed = _common(settings)
    thresholds = [float(t) for t in settings.get("thresholds", (0.80, 0.85, 0.90))]
    max_k = int(settings.get("max_prompts", 20))
    e, a = data.episodes.copy(), data.actions.copy()
    for df in (e, a):
        parts = df["annotator"].str.split("@", n=1, expand=True)
        df["group"] = parts[0]
        df["protocol"] = parts[1] if parts.shape[1] > 1 else "default"
        df["protocol"] = df["protocol"].fillna("default")
    summ = M.group_summary(e, ["group", "protocol"], min(n_boot, 1000), seed)
    sec = Section("Prompting protocols")
    tab = _summary_table(summ.assign(group=summ["group"] + " @ " + summ["protocol"]))
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
    sec.tables.append(("Time to Dice levels and area under the Dice–time curve",
                       ts.drop(columns=["auc", "auc_lo", "auc_hi"])))
    t85 = 0.85 if 0.85 in thresholds else thresholds[0]
    reach = M.reach_curve(a, e, t85, max_k, ["group", "protocol"])
    sec.figures.append((f"NoC curves per group: share of episodes at Dice ≥ {t85:.2f} after k prompts, one line per "
                        "protocol", P.plot_reach_curves(reach, out / "figures" / "noc_by_protocol.png", t85,
                                                        by="protocol", facet="group")))
    curves = M.dice_time_curves(a, e, by=["group", "protocol"], n_boot=min(n_boot, 300), seed=seed)
    sec.figures.append(("Mean Dice against simulated time per group, one line per protocol (95 % CI over cases)",
                        P.plot_dice_vs_time(curves, out / "figures" / "dice_vs_time_by_protocol.png", by="protocol",
                                            facet="group", title="Dice against simulated time by prompting protocol")))
    headline = {"protocols": {f"{r['group']}@{r['protocol']}": {"dice": r["dice"], "seconds": r["seconds"],
                                                                  "prompts": r["prompts"]} for _, r in summ.iterrows()},
                "noc": {f"{r['group']}@{r['protocol']}": {c: r[c] for c in wide.columns if str(c).startswith("noc@")
                                                          and not str(c).endswith("never")}
                        for _, r in wide.iterrows()}}
    return [sec], headline


# ---- downstream ---------------------------------------------------------------------------------
def downstream(data, settings: dict, out: Path):
    """``kind = "downstream"`` (:mod:`hiseg_sim.downstream.study`): rebuild ``downstream.md`` and its
    figures from the run's saved results, and show its (a)–(e) table here too."""
    import json

    from hiseg_sim.downstream.report import rebuild_report

    md = rebuild_report(data.dir)
    summary = json.loads((Path(data.dir) / "downstream.json").read_text())
    tab = pd.DataFrame(summary["table"])
    sec = Section("Downstream training on simulated labels")
    sec.paragraphs.append(f"The full report of this study is `{md.name}` (rebuilt now); the test Dice per arm:")
    cols = [c for c in ("title", "dice", "lo", "hi", "diff_vs_gt", "diff_lo", "diff_hi", "p_boot") if c in tab]
    sec.tables.append(("Holdout test Dice per training-label arm", tab[cols]))
    for name in ("downstream_dice", "specialist_curve", "downstream_labels"):
        p = Path(data.dir) / f"{name}.png"
        if p.is_file():
            sec.figures.append((name.replace("_", " "), p))
    return [sec], {"downstream": {r["arm"]: r["dice"] for r in summary["table"]}}


KINDS = {"groups": groups, "crowd": crowd, "training": training, "protocols": protocols, "downstream": downstream}
