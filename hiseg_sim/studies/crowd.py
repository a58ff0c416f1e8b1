"""How many crowd workers a nodule needs: their masks fused (majority vote, STAPLE) for k = 1, 2, ...

The ``crowd`` study kind: its ``[analysis]`` settings and its report sections."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hiseg_sim.analysis import crowd as C
from hiseg_sim.analysis import metrics as M
from hiseg_sim.analysis import plots as P
from hiseg_sim.analysis.section import (
    Section,
    add_volume_error_column,
    common_settings,
    fmt_ci,
    ordered,
    significance,
    summary_table,
)
from hiseg_sim.analysis.stats import bootstrap_ci
from hiseg_sim.studies.base import StudyKind


def _k(v):
    return "None" if v is None else str(v)


def _sections(data, settings: dict, out: Path):
    n_boot, seed = common_settings(settings)
    e = data.episodes
    worker = settings.get("worker", "crowd_worker")
    ref_arm = settings.get("reference", "expert_radiologist")
    methods = tuple(settings.get("methods", ("majority", "staple")))
    pool = int(e[e["annotator"] == worker].groupby("case_id").size().min())
    ks = [int(k) for k in settings.get("ks", range(1, pool + 1)) if int(k) <= pool]
    targets = [float(t) for t in settings.get("targets", (0.80, 0.85))]
    workers = int(settings.get("workers", 0))
    draws = C.crowd_draws(
        e, data.cases, worker, ks, methods, int(settings.get("draws", 30)), seed, progress=True, workers=workers
    )
    curve = C.crowd_curve(draws, min(n_boot, 1000), seed)
    ref = C.single_arm_reference(e, ref_arm, min(n_boot, 1000), seed) if ref_arm in set(e["annotator"]) else None
    three_d = C.is_three_d(e[e["annotator"] == worker])
    sec = Section(f"Fusing {worker} masks", definitions=DEFINITIONS)
    sec.paragraphs.append(
        f"{pool} independent {worker}s per nodule on {e['case_id'].nunique()} nodules; for each k, "
        f"{int(settings.get('draws', 30))} random subsets of k workers per nodule are fused and "
        "scored (all of them once when k is the whole pool). Cost = the k workers' simulated seconds. Majority "
        "vote is strict (ties at even k go to background), hence its zigzag."
    )
    if three_d:
        sec.paragraphs.append(
            "The workers outlined whole nodules (3-D env): masks are fused voxel by voxel over the union of "
            "the workers' slabs and scored in 3-D against the whole case's ground truth (Dice, NSD at 1 mm, "
            "relative volume error)."
        )
    wide = curve.pivot(index="k", columns="method", values="dice")
    tab = pd.DataFrame({"k": wide.index})
    for m in methods:
        c = curve[curve["method"] == m].set_index("k")
        tab[f"{m} Dice [95% CI]"] = [fmt_ci(c.at[k, "dice"], c.at[k, "lo"], c.at[k, "hi"]) for k in wide.index]
        if three_d:
            tab[f"{m} NSD@1mm"] = c.loc[wide.index, "nsd"].to_numpy()
            tab[f"{m} abs volume error"] = [f"{100 * v:.1f}%" for v in c.loc[wide.index, "abs_volume_error"]]
    tab["total seconds"] = curve[curve["method"] == methods[0]].set_index("k").loc[wide.index, "seconds"].to_numpy()
    sec.tables.append(
        (
            f"Expected {'3-D ' if three_d else ''}Dice of the fused mask and total seconds against workers per nodule",
            tab,
        )
    )
    headline: dict = {
        "curve": {
            m: {
                int(r["k"]): [r["dice"], r["lo"], r["hi"], r["seconds"]]
                for _, r in curve[curve["method"] == m].iterrows()
            }
            for m in methods
        }
    }
    if three_d:
        headline["scored"] = "3d"
        headline["curve_3d"] = {
            m: {
                int(r["k"]): {c: r[c] for c in ("dice", "nsd", "volume_error", "abs_volume_error", "seconds")}
                for _, r in curve[curve["method"] == m].iterrows()
            }
            for m in methods
        }
    rows = []
    for m in methods:
        sat = C.saturation_k(curve, m)
        need = {t: C.workers_needed(curve, t, m) for t in targets}
        need_c = {t: C.workers_needed(curve, t, m, conservative=True) for t in targets}
        rows.append(
            {
                "method": m,
                "Dice k=1": sat["dice_k1"],
                f"Dice k={sat['k_max']}": sat["dice_kmax"],
                "90% of the gain at k": sat["k_share"],
                "next worker adds < 0.005 from k": sat["k_marginal"],
                **{f"k for Dice ≥ {t:.2f} (mean / lower CI)": f"{_k(need[t])} / {_k(need_c[t])}" for t in targets},
            }
        )
        headline[f"saturation_{m}"] = sat
        headline[f"workers_needed_{m}"] = {f"{t:.2f}": [need[t], need_c[t]] for t in targets}
    sec.tables.append(
        (
            f"Where fusion saturates, and how many workers a Dice target needs (None: not reached with {max(ks)})",
            pd.DataFrame(rows),
        )
    )
    if ref is not None:
        sec.paragraphs.append(
            f"One {ref_arm} per nodule: Dice **{fmt_ci(ref['dice'], ref['lo'], ref['hi'])}** in "
            f"{ref['seconds']:.1f} simulated seconds."
        )
        headline["reference"] = ref
    sec.figures.append(
        (
            f"Fused Dice against {worker}s per nodule (left) and against total simulated seconds (right); "
            f"the dashed line / star is one {ref_arm}",
            P.plot_crowd(
                curve,
                out / "figures" / "crowd_fusion.png",
                ref,
                targets,
                worker=worker.replace("_", " "),
                saturation=headline.get("saturation_staple"),
            ),
        )
    )
    arms = Section("Single annotators", definitions=DEFINITIONS)
    summ = ordered(M.group_summary(e, "annotator", min(n_boot, 1000), seed), "annotator")
    arm_tab = summary_table(summ.rename(columns={"annotator": "group"}))
    if three_d:
        ve = add_volume_error_column(arm_tab, e, data.cases, e["annotator"])
        headline["arms_3d"] = {
            r["annotator"]: {
                "dice": r["dice"],
                "nsd": r["nsd"],
                "abs_volume_error": float(ve.get(r["annotator"], float("nan"))),
                "seconds": r["seconds"],
            }
            for _, r in summ.iterrows()
        }
    arms.tables.append(("Per arm, one annotator per nodule", arm_tab))
    by_band = (
        draws[draws["method"] == "staple"].groupby(["size_band", "k"])["dice"].mean().unstack("k")
        if "size_band" in draws
        else None
    )
    if by_band is not None:
        by_band = by_band.reindex([b for b in M.SIZE_BANDS if b in by_band.index])
        by_band.columns = [f"k={k}" for k in by_band.columns]
        arms.tables.append(("STAPLE Dice by size band and k", by_band.reset_index()))
    paired = _paired_with_reference(draws, e, methods, ref_arm, min(n_boot, 2000), seed) if ref is not None else {}
    headline["paired_with_reference"] = paired
    lead = _findings(curve, headline, methods, targets, worker, ref_arm, ref, max(ks), paired)
    headline["findings"] = [b.replace("**", "").replace("`", "") for b in lead.bullets]
    return [lead, sec, arms], headline


def _need_words(target, need, k_max: int) -> str:
    """How many workers a Dice target needs, in words (``need``: on average, to be 95 % sure)."""
    mean, sure = need
    if mean is None:
        return f"Dice ≥ {target} is not reached within {k_max} workers"
    tail = f"{_k(sure)} to be 95 % sure" if sure is not None else f"more than {k_max} to be 95 % sure"
    return f"Dice ≥ {target} needs k = {_k(mean)} on average, {tail}"


def _findings(
    curve, headline: dict, methods, targets, worker: str, ref_arm: str, ref, k_max: int, paired: dict | None = None
) -> Section:
    """Key findings: what fusing k workers gives, where it saturates, how many a target needs."""
    f = Section("Key findings", lead=True, definitions=DEFINITIONS)
    three_d = "nsd" in curve
    for m in methods:
        c = curve[curve["method"] == m].set_index("k")
        k1, kn = int(c.index.min()), int(c.index.max())
        sat = headline[f"saturation_{m}"]
        need = headline[f"workers_needed_{m}"]
        surf = (
            f", NSD {c.at[kn, 'nsd']:.3f}, abs volume error {100 * c.at[kn, 'abs_volume_error']:.1f}%"
            if three_d
            else ""
        )
        f.bullets.append(
            f"{m}: {'3-D ' if three_d else ''}Dice {fmt_ci(c.at[k1, 'dice'], c.at[k1, 'lo'], c.at[k1, 'hi'])} "
            f"with {k1} {worker}, "
            f"**{fmt_ci(c.at[kn, 'dice'], c.at[kn, 'lo'], c.at[kn, 'hi'])}** with {kn}{surf} "
            f"({c.at[kn, 'seconds']:.0f} simulated seconds per nodule); 90 % of the gain by k = {_k(sat['k_share'])}. "
            + "; ".join(_need_words(t, v, k_max) for t, v in need.items())
            + "."
        )
    if ref is not None:
        f.bullets.append(
            f"One `{ref_arm}` per nodule: Dice **{fmt_ci(ref['dice'], ref['lo'], ref['hi'])}** in "
            f"{ref['seconds']:.1f} simulated seconds."
        )
        for m, d in (paired or {}).items():
            sig = significance(d["lo"], d["hi"])
            f.bullets.append(
                f"{m} of {d['k']} `{worker}` against one `{ref_arm}`, paired by nodule: Dice "
                f"{fmt_ci(d['diff'], d['lo'], d['hi'], signed=True)}, "
                + {"yes": "significant", "no": "not significant (the interval includes 0)"}.get(sig, "no interval")
                + "."
            )
        f.notes.append("Intervals are 95 % bootstrap intervals over nodules; significant: the interval excludes 0.")
    return f


def _paired_with_reference(draws, e, methods, ref_arm: str, n_boot: int, seed: int) -> dict:
    """Fused Dice with the most workers minus the reference arm's Dice, per nodule, with a bootstrap
    interval over nodules: ``{method: {"k", "diff", "lo", "hi"}}``."""
    ref = e[e["annotator"] == ref_arm].groupby("case_id")["final_dice"].mean()
    out = {}
    for m in methods:
        dm = draws[draws["method"] == m]
        k = int(dm["k"].max())
        fused = dm[dm["k"] == k].groupby("case_id")["dice"].mean()
        diff = (fused - ref).dropna()
        if len(diff):
            est, lo, hi = bootstrap_ci(diff.to_numpy(), diff.index.to_numpy(), n_boot, seed=seed)
            out[m] = {"k": k, "diff": est, "lo": lo, "hi": hi}
    return out


#: What the crowd report's own columns mean.
DEFINITIONS = {
    "k": "workers per nodule whose masks are fused",
    r"(majority|staple) Dice \[95% CI\]": "expected Dice of the fused mask of k random workers (mean over nodules of "
    "the mean over draws), with its 95 % bootstrap interval over nodules",
    "total seconds": "the k workers' simulated seconds per nodule, added up",
    "method": "fusion: majority (a pixel is in when more than half the masks have it) or STAPLE (EM-weighted)",
    r"Dice k=(\d+)": "expected Dice of the fused mask with that many workers",
    "90% of the gain at k": "the smallest k that reaches 90 % of the Dice gain from one worker to the whole pool",
    "next worker adds < 0.005 from k": "the smallest k from which one more worker adds less than 0.005 Dice",
    r"k for Dice ≥ (.+) \(mean / lower CI\)": "workers needed for that Dice: by the expected Dice / by the lower "
    "end of its 95 % interval (None: not reached with the pool)",
    r"(majority|staple) NSD@1mm": "mean normalised surface Dice at 1 mm of the fused mask against the whole case (3-D)",
    r"(majority|staple) abs volume error": "mean absolute relative volume error of the fused mask, "
    "abs(V_fused - V_ref) / V_ref, against the whole case (3-D)",
    "abs volume error": "mean absolute relative volume error of one annotator's mask, abs(V_mask - V_ref) / V_ref, "
    "against the whole case (3-D)",
    "size_band": "nodule diameter band (mm)",
    r"k=(\d+)": "mean STAPLE Dice with that many workers, on the nodules of the band",
}


class CrowdKind(StudyKind):
    name = "crowd"
    analysis_keys = {
        "worker": "the arm whose masks are fused (default crowd_worker)",
        "reference": "the one-person comparison (default expert_radiologist)",
        "ks": "numbers of workers fused (default 1 .. the pool)",
        "draws": "random subsets per k and nodule (default 30)",
        "methods": "fusion methods (default majority, staple)",
        "targets": "Dice targets for workers needed (default 0.80, 0.85)",
        "workers": "processes fusing nodules side by side (default: all cores; the draws are the same for any number)",
    }
    label_keys = ("worker", "reference")

    def sections(self, data, settings: dict, out: Path) -> tuple[list, dict]:
        return _sections(data, settings, out)


#: The entry point ``crowd`` of the group ``hiseg_sim.study_kinds``.
KIND = CrowdKind()
