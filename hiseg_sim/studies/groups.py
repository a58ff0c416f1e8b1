"""Which annotator group reaches what Dice in how much time: people, robots and policies on the same cases.

The ``groups`` study kind: its ``[analysis]`` settings and its report sections."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from hiseg_sim.analysis import metrics as M
from hiseg_sim.analysis import plots as P
from hiseg_sim.analysis.crowd import is_three_d
from hiseg_sim.analysis.section import (
    Section,
    add_volume_error_column,
    cluster_ci,
    common_settings,
    fmt_ci,
    ordered,
    significance,
    summary_table,
    with_group,
)
from hiseg_sim.analysis.stats import paired_bootstrap
from hiseg_sim.studies.base import StudyKind


def _plain(text: str) -> str:
    """Markdown inline text as plain text (for the terminal and headline.json)."""
    return text.replace("**", "").replace("`", "")


def _sig_words(lo: float, hi: float) -> str:
    sig = significance(lo, hi)
    return {"yes": "significant", "no": "not significant (the interval includes 0)"}.get(sig, "no interval")


def _findings(summ: pd.DataFrame, paired: list[dict], ref: str, people_mean, n_boot: int) -> Section:
    """The key findings: the best and worst people group, and each arm against the reference with
    its paired interval and whether it is significant."""
    f = Section("Key findings", lead=True)
    people = summ[summ["group"].map(P.is_person)]
    if len(people) == 1:
        g = people.iloc[0]
        f.bullets.append(
            f"`{g['group']}`: Dice **{fmt_ci(g['dice'], g['dice_lo'], g['dice_hi'])}** in "
            f"{g['seconds']:.1f} simulated seconds and {g['prompts']:.1f} prompts per nodule."
        )
    elif len(people):
        hi = people.loc[people["dice"].idxmax()]
        lo = people.loc[people["dice"].idxmin()]
        fast = people.loc[people["seconds"].idxmin()]
        f.bullets.append(
            f"Highest mean Dice among the people groups: `{hi['group']}` "
            f"**{fmt_ci(hi['dice'], hi['dice_lo'], hi['dice_hi'])}**; lowest: `{lo['group']}` "
            f"{fmt_ci(lo['dice'], lo['dice_lo'], lo['dice_hi'])}. Fastest: `{fast['group']}`, "
            f"{fast['seconds']:.1f} simulated seconds per nodule."
        )
        if people_mean is not None:  # more than one people group
            f.bullets.append(
                f"Mean Dice over all people groups: **{fmt_ci(*people_mean)}** (Hi-Seg reports almost "
                "0.85 across its annotator groups)."
            )
    if paired and all(significance(r["d_lo"], r["d_hi"]) == "–" for r in paired):
        f.bullets.append(
            "Too few cases for intervals: no difference below can be called significant; run more "
            "cases (--cases, --limit) for intervals."
        )
    elif paired:
        sig = [r for r in paired if significance(r["d_lo"], r["d_hi"]) == "yes"]
        rest = [r for r in paired if r not in sig]
        txt = (
            f"Against `{ref}` (paired), Dice differs significantly for "
            + ", ".join(f"`{r['group']}` ({fmt_ci(r['d'], r['d_lo'], r['d_hi'], signed=True)})" for r in sig)
            if sig
            else f"Against `{ref}` (paired), no arm's Dice differs significantly"
        )
        names = ", ".join(f"`{r['group']}`" for r in rest)
        if rest:
            txt += f"; not significantly for {names}" if sig else f" ({names})"
        f.bullets.append(txt + ".")
    for r in paired:
        f.bullets.append(
            f"`{r['group']}` against `{ref}`: Dice {fmt_ci(r['d'], r['d_lo'], r['d_hi'], signed=True)}, "
            f"{_sig_words(r['d_lo'], r['d_hi'])}; time {fmt_ci(r['t'], r['t_lo'], r['t_hi'], 1, signed=True)} "
            f"s per nodule, {_sig_words(r['t_lo'], r['t_hi'])}."
        )
    if paired:
        f.notes.append(
            f"Differences are paired (the same case and replicate, arm minus `{ref}`) with 95 % "
            f"bootstrap intervals over cases ({n_boot} resamples). *Significant* means the interval "
            "excludes 0; no correction for comparing several arms is made, so treat a single "
            "borderline result with care. Where a difference is not significant, which group has "
            "the higher mean says nothing: the tables list groups in order of training, not of result."
        )
    elif ref:
        f.notes.append(
            f"No arm `{ref}` in this run, so no paired differences; compare the groups' intervals "
            "below ([analysis] reference names the arm to compare with)."
        )
    return f


def _pearson_boot(x, y, clusters, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Pearson r of ``x`` and ``y`` and its 95 % percentile interval, resampling whole
    ``clusters`` (cases: every episode on a nodule shares its difficulty) with replacement.
    Rows with a NaN are left out; NaN where r is undefined (under three rows, or no spread)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, c = x[ok], y[ok], pd.factorize(np.asarray(clusters)[ok])[0]
    nan = float("nan")

    def r_of(w: np.ndarray) -> np.ndarray:  # weighted Pearson r, one row of weights per draw
        sw = w.sum(-1, keepdims=True)
        mx, my = (w * x).sum(-1, keepdims=True) / sw, (w * y).sum(-1, keepdims=True) / sw
        dx, dy = x - mx, y - my
        sxy, sxx, syy = (w * dx * dy).sum(-1), (w * dx * dx).sum(-1), (w * dy * dy).sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return sxy / np.sqrt(sxx * syy)

    if x.size < 3:
        return nan, nan, nan
    est = float(r_of(np.ones((1, x.size)))[0])
    n_c = int(c.max()) + 1
    if n_c < 3 or n_boot <= 0 or not math.isfinite(est):
        return est, nan, nan
    rng = np.random.default_rng(seed)
    draws = []
    for s in range(0, int(n_boot), 500):
        picks = rng.integers(0, n_c, size=(min(500, int(n_boot) - s), n_c))
        counts = np.stack([np.bincount(p, minlength=n_c) for p in picks]).astype(np.float64)
        draws.append(r_of(counts[:, c]))
    d = np.concatenate(draws)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return est, nan, nan
    lo, hi = np.quantile(d, [0.025, 0.975])
    return est, float(lo), float(hi)


def _intent_section(e: pd.DataFrame, n_boot: int, seed: int) -> tuple[Section | None, dict]:
    """Does the person matter: per people group and pooled over them, the correlation of the final
    Dice with the Dice of the person's intent (their own idea of the nodule, before any prompt).
    A model that snaps to the reference whatever it is told gives r near 0."""
    if "intent_dice" not in e.columns:
        return None, {}
    pe = e[e["group"].map(P.is_person)]
    pe = pe[pd.to_numeric(pe["intent_dice"], errors="coerce").notna()]
    if pe.empty:
        return None, {}
    rows, out = [], {"groups": {}}
    parts = [(g, pe[pe["group"] == g]) for g in P.order_groups(pe["group"].unique())]
    if len(parts) > 1:
        parts.append(("all people groups (pooled)", pe))
    for g, d in parts:
        fin = pd.to_numeric(d["final_dice"], errors="coerce")
        itd = pd.to_numeric(d["intent_dice"], errors="coerce")
        r, lo, hi = _pearson_boot(itd, fin, d["case_id"], n_boot, seed)
        rec = {"r": r, "lo": lo, "hi": hi, "n": int(len(d)), "cases": int(d["case_id"].nunique())}
        rows.append(
            {
                "group": g,
                "episodes": rec["n"],
                "cases": rec["cases"],
                "intent Dice": round(float(itd.mean()), 3),
                "final Dice": round(float(fin.mean()), 3),
                "r final vs intent [95% CI]": fmt_ci(r, lo, hi),
            }
        )
        if g == "all people groups (pooled)" or len(parts) == 1:
            out["pooled"] = rec
        if g != "all people groups (pooled)":
            out["groups"][g] = rec
    sec = Section("Does the person matter: final Dice against the person's intent")
    sec.paragraphs.append(
        "Each simulated person first forms an *intent*, their own idea of the nodule's outline "
        "(perception: boundary noise and semantic errors such as taking in an attached vessel), then "
        "prompts the model toward it. If the image alone decided the outcome, the final Dice would not "
        "follow the intent's Dice (r near 0); the more the person's idea carries through the model, the "
        "higher r."
    )
    sec.tables.append(
        (
            "Per people group and pooled: Pearson r of final Dice with intent Dice over episodes, 95 % "
            "bootstrap interval over cases",
            pd.DataFrame(rows),
            "final_vs_intent_dice",
        )
    )
    sec.definitions.update(
        {
            "intent Dice": "mean Dice of the person's intent (before any prompt) against the reference",
            "final Dice": "mean final Dice of the accepted mask against the reference",
            "cases": "distinct nodules behind the row (the bootstrap resamples them whole)",
            "r final vs intent [95% CI]": "Pearson correlation over episodes of final Dice with intent Dice, with "
            "its 95 % bootstrap interval resampling cases",
        }
    )
    return sec, out


def variance_split(e: pd.DataFrame, value: str) -> dict:
    """How much of an arm's person-to-person spread in mean ``value`` comes from the persons'
    parameters (a one-way random-effects split over persons = replicates).

    Each person's mean over their ``n`` nodules varies by the nodules alone with variance
    ``s_w^2 / n`` (``s_w^2`` the pooled within-person variance); what the between-person variance of
    the means holds beyond that comes from the persons differing, here from their posterior draws.
    Returns ``between`` (variance of the persons' means), ``within`` (``s_w^2 / n``), ``share`` (the
    parameters' part of ``between``, 0-1) and ``persons``.
    """
    v = pd.to_numeric(e[value], errors="coerce")
    d = pd.DataFrame({"p": e["replicate"].to_numpy(), "v": v.to_numpy()}).dropna()
    g = d.groupby("p")["v"]
    k = int(g.ngroups)
    if k < 2:
        return {"between": float("nan"), "within": float("nan"), "share": float("nan"), "persons": k}
    means, counts = g.mean(), g.count()
    within_var = float(((d["v"] - d["p"].map(means)) ** 2).sum() / max(len(d) - k, 1))
    between = float(means.var(ddof=1))
    within = within_var / float(np.mean(counts))
    share = max(0.0, between - within) / between if between > 0 else 0.0
    return {"between": between, "within": within, "share": float(share), "persons": k}


def _posterior_section(data, e: pd.DataFrame) -> tuple[Section | None, dict]:
    """Per arm with ``posterior = true``: the share of the spread between its simulated persons
    that comes from the fitted parameters' uncertainty, for Dice and seconds."""
    spec = getattr(data, "spec", None) or {}
    arms = [a.get("label") for a in spec.get("annotators", []) if isinstance(a, dict) and a.get("posterior")]
    if not arms:
        return None, {}
    rows: list[dict] = []
    out: dict = {}
    for label in arms:
        d = e[e["annotator"] == label]
        if d.empty:
            continue
        dice, secs = variance_split(d, "final_dice"), variance_split(d, "seconds_total")
        out[label] = {"dice": dice, "seconds": secs}
        rows.append(
            {
                "group": label,
                "persons (draws)": dice["persons"],
                "Dice: SD between persons": round(float(np.sqrt(dice["between"])), 4),
                "Dice: from parameters": f"{100 * dice['share']:.0f}%",
                "seconds: SD between persons": round(float(np.sqrt(secs["between"])), 2),
                "seconds: from parameters": f"{100 * secs['share']:.0f}%",
            }
        )
    if not rows:
        return None, {}
    sec = Section("Parameter uncertainty: groups drawn from a fitted posterior")
    sec.paragraphs.append(
        "Each simulated person of these groups is one joint draw of the fitted profile's posterior "
        "(`posterior = true`), so the group's interval holds both the nodules' and people's randomness "
        "and the fit's own uncertainty. The share from parameters is the part of the variance between "
        "the persons' mean Dice (or seconds) beyond what their nodules alone would give "
        "(one-way random effects: between-person variance less within-person variance / nodules per "
        "person); a large share says a bigger pilot would narrow the group's interval."
    )
    sec.tables.append(
        ("Per posterior group: where the spread between persons comes from", pd.DataFrame(rows), "posterior_share")
    )
    sec.definitions.update(
        {
            "persons (draws)": "simulated persons of the group, one posterior draw each",
            "Dice: SD between persons": "SD of the persons' mean final Dice",
            "Dice: from parameters": "share of that variance from the persons' parameters (posterior draws)",
            "seconds: SD between persons": "SD of the persons' mean seconds per nodule",
            "seconds: from parameters": "share of that variance from the persons' parameters",
        }
    )
    return sec, out


def _sections(data, settings: dict, out: Path):
    n_boot, seed = common_settings(settings)
    thresholds = [float(t) for t in settings.get("thresholds", (0.80, 0.85, 0.90))]
    max_k = int(settings.get("max_prompts", 20))
    e, a = with_group(data)
    summ = ordered(M.group_summary(e, "group", n_boot, seed), "group")
    sec = Section("Quality, time and prompts per group")
    ref = settings.get("reference", "expert_radiologist")
    headline: dict = {
        "groups": {
            r["group"]: {
                "dice": r["dice"],
                "dice_lo": r["dice_lo"],
                "dice_hi": r["dice_hi"],
                "seconds": r["seconds"],
                "prompts": r["prompts"],
                "n": int(r["n"]),
            }
            for _, r in summ.iterrows()
        }
    }
    people_mean = None
    if summ["group"].map(P.is_person).any():
        pe = e[e["group"].map(P.is_person)]
        people_mean = cluster_ci(pe["final_dice"], pe["case_id"], n_boot, seed)
        headline["people_mean_dice"] = list(people_mean)
    paired: list[dict] = []
    if ref in set(e["annotator"]):
        rows = []
        for g in summ["group"]:
            if g == ref:
                continue
            r = paired_bootstrap(e, "final_dice", "group", g, ref, n_boot=n_boot, seed=seed)
            t = paired_bootstrap(e, "seconds_total", "group", g, ref, n_boot=n_boot, seed=seed)
            paired.append(
                {
                    "group": g,
                    "d": r["diff"],
                    "d_lo": r["lo"],
                    "d_hi": r["hi"],
                    "t": t["diff"],
                    "t_lo": t["lo"],
                    "t_hi": t["hi"],
                }
            )
            rows.append(
                {
                    "group": g,
                    f"ΔDice vs {ref} [95% CI]": fmt_ci(r["diff"], r["lo"], r["hi"], signed=True),
                    "Dice significant": significance(r["lo"], r["hi"]),
                    "p (bootstrap)": r["p_boot"],
                    f"Δseconds vs {ref} [95% CI]": fmt_ci(t["diff"], t["lo"], t["hi"], 1, signed=True),
                    "seconds significant": significance(t["lo"], t["hi"]),
                    "pairs": r["n_pairs"],
                }
            )
        if rows:
            sec.tables.append(
                (
                    f"Paired differences against {ref} (same case and replicate; significant: the 95 % "
                    "interval excludes 0)",
                    pd.DataFrame(rows),
                    f"paired_differences_vs_{ref}",
                )
            )
        headline["paired"] = {r["group"]: {k: r[k] for k in ("d", "d_lo", "d_hi", "t", "t_lo", "t_hi")} for r in paired}
    findings = _findings(summ, paired, ref, people_mean, n_boot)
    headline["findings"] = [_plain(b) for b in findings.bullets]
    tab = summary_table(summ)
    three_d = "score_nz" in e.columns and is_three_d(e)
    if three_d and len(data.cases) and "mask_bits" in e.columns:
        ve = add_volume_error_column(tab, e, data.cases, e["group"])
        for g, h in headline["groups"].items():
            h["nsd"] = float(summ.loc[summ["group"] == g, "nsd"].iloc[0])
            h["abs_volume_error"] = float(ve.get(g, float("nan")))
    sec.tables.insert(
        0,
        (
            "Per group: final Dice against the reference"
            + (" (whole volume; NSD at 1 mm, absolute volume error against the whole case)" if three_d else "")
            + ", simulated seconds and prompts per nodule",
            tab,
            "per_group_summary",
        ),
    )
    curves = M.dice_time_curves(a, e, by="group", n_boot=min(n_boot, 400), seed=seed)
    sec.figures.append(
        (
            "Mean Dice against simulated time per group (bands: 95 % CI over cases). A person's Dice "
            "stays at their final Dice after they accept, and the curves run until the longest episode "
            "ends, so each curve ends at its group's mean final Dice.",
            P.plot_dice_vs_time(curves, out / "figures" / "dice_vs_time.png", by="group"),
        )
    )
    sec.figures.append(
        (
            "Final Dice per episode, seconds and prompts per nodule, per group",
            P.plot_distributions(e, summ, out / "figures" / "group_distributions.png", by="group"),
        )
    )
    strata = Section("By nodule size and texture")
    for col, name in (("size_band", "size band (mm)"), ("texture_group", "texture")):
        t = M.strata_table(e, "final_dice", "group", col)
        t = t.reindex(P.order_groups([i for i in t.index if i != "n (episodes)"]) + ["n (episodes)"]).astype(object)
        t.loc["n (episodes)"] = [str(int(v)) if pd.notna(v) else "0" for v in t.loc["n (episodes)"]]
        strata.tables.append(
            (
                f"Mean final Dice by {name} (last row: episodes per column)",
                t.reset_index().rename(columns={"index": "group"}),
                f"dice_by_{col}",
            )
        )
        headline.setdefault("by_" + col, {})
        headline["by_" + col] = {
            str(k): {c: float(v) for c, v in row.items() if pd.notna(v)}
            for k, row in t.iterrows()
            if k != "n (episodes)"
        }
    strata.figures.append(
        (
            "Mean final Dice per group by size band and by texture",
            P.plot_strata(e, out / "figures" / "dice_by_size_texture.png", by="group"),
        )
    )
    inter = Section("Prompts and time to quality")
    noc = M.noc_table(a, e, thresholds, max_k)
    ns = M.noc_summary(noc, "group", max_k, min(n_boot, 1000), seed)
    wide = ns.pivot(index="group", columns="threshold", values="noc_mean")
    never = ns.pivot(index="group", columns="threshold", values="never")
    tab = pd.DataFrame({"group": wide.index})
    for c in wide.columns:
        tab[f"{c} mean"] = wide[c].to_numpy()
        tab[f"{c} never"] = never[c].to_numpy().astype(int)
    inter.tables.append(
        (
            f"NoC: prompts to reach each Dice level (never reached within {max_k} prompts counts as "
            f"{max_k}, as in RITM; 'never' = episodes that did not get there)",
            ordered(tab, "group"),
            "noc_prompts_to_dice_level",
        )
    )
    ks = (1, 2, 3, 5)
    dk = M.dice_after_k(a, e, ks, "group", min(n_boot, 1000), seed)
    dkt = dk.pivot(index="group", columns="k", values="dice")
    dkt.columns = [f"Dice after {k}" for k in dkt.columns]
    for k in ks:
        dkt[f"still prompting after {k}"] = [
            f"{100 * (e.loc[e['group'] == g, 'n_prompts'] >= k).mean():.0f}%" for g in dkt.index
        ]
    inter.tables.append(
        (
            "Mean Dice after k prompts, over all episodes: an episode that ended before its k-th prompt "
            "counts with its final Dice. The mean can fall with k because the episodes still prompting "
            "are the hard ones, and a mask mid-correction is often worse than the one the person keeps "
            "in the end (they undo a prompt that made it worse)",
            ordered(dkt.reset_index(), "group"),
            "dice_after_k_prompts",
        )
    )
    ttt = M.time_to_threshold(a, e, thresholds)
    ts = M.time_summary(ttt, "group", min(n_boot, 1000), seed)
    ts["AUC [95% CI]"] = [fmt_ci(r["auc"], r["auc_lo"], r["auc_hi"]) for _, r in ts.iterrows()]
    ts = ts.drop(columns=["auc", "auc_lo", "auc_hi"])
    inter.tables.append(
        (
            "Simulated seconds to reach each Dice level (median over the episodes that reach it, and "
            "the share that do), and the area under the Dice–time curve over the longest episode",
            ordered(ts, "group"),
            "time_to_dice_level",
        )
    )
    t85 = 0.85 if 0.85 in thresholds else thresholds[len(thresholds) // 2]
    reach = M.reach_curve(a, e, t85, max_k, "group")
    inter.figures.append(
        (
            f"NoC curves: share of episodes at Dice ≥ {t85:.2f} after k prompts",
            P.plot_reach_curves(reach, out / "figures" / "noc_curves.png", t85, by="group"),
        )
    )
    headline["noc"] = {
        r["group"]: {r2["threshold"]: r2["noc_mean"] for _, r2 in ns[ns["group"] == r["group"]].iterrows()}
        for _, r in summ.iterrows()
    }
    person, fvi = _intent_section(e, n_boot, seed)
    if person is not None:
        headline["final_vs_intent"] = fvi
        headline["final_vs_intent_r"] = fvi["pooled"]["r"]
    post, post_split = _posterior_section(data, e)
    if post is not None:
        headline["parameter_uncertainty"] = post_split
    extra = ([person] if person is not None else []) + ([post] if post is not None else [])
    bar = readers_bar(e, three_d)
    if bar is not None:
        # people, and the box robots: a box from the reference on every slice is the most a
        # box-prompted model gives on these images, the bar's counterpart on the model's side
        shown = [g for g in summ["group"] if P.is_person(g) or str(g).endswith("_box")]
        headline["vs_readers"] = bar
        extra.append(_readers_section(bar, shown or list(summ["group"])))
    return [findings, sec, strata, inter] + extra, headline


def readers_bar(e: pd.DataFrame, three_d: bool, readers: dict | None = None) -> dict | None:
    """Each group's mean final Dice per size band beside the LIDC readers' agreement with the
    other readers' consensus (calibration split, nodules with 3–4 readers): the bar a person is
    held to. Whole volumes when ``three_d``, the key slice otherwise. Two bandings: by the LIDC diameter
    (the mean of the readers' own diameters, pylidc's convention) and by the consensus diameter::

        {"env": "3d", "lidc": {band: {"readers", "n_readers", "n", "<group>": dice, ...}},
         "consensus": {...}}

    ``None`` when the episodes are not all of LIDC nodules (a user's own scans have no readers).
    ``readers``: ``{"lidc": table, "consensus": table}`` of precomputed
    :func:`~hiseg_sim.data.reader_keyslice.reader_keyslice_agreement` (default: the shipped
    measurement, :func:`~hiseg_sim.data.reader_keyslice.shipped_reader_agreement`).
    """
    from hiseg_sim.data.lidc import LidcDatabase
    from hiseg_sim.data.lidc_agreement import SIZE_BANDS, size_band
    from hiseg_sim.data.reader_keyslice import shipped_reader_agreement

    if e.empty or not e["case_id"].astype(str).str.startswith("LIDC-IDRI-").all():
        return None
    env, key = ("3d", "3d") if three_d else ("2d", "key_slice")
    readers = readers if readers is not None else shipped_reader_agreement()
    db = LidcDatabase()
    try:
        lidc_d = {c: float(db.get_nodule(c).lidc_diameter_mm) for c in e["case_id"].unique()}
    except KeyError:
        return None
    out: dict = {"env": env}
    for banding, diam in (("lidc", e["case_id"].map(lidc_d)), ("consensus", e["diameter_mm"].astype(float))):
        bar = readers[banding]
        band = diam.map(size_band)
        table = {}
        for b in SIZE_BANDS:
            sel = e[band == b]
            row: dict = {
                "readers": None if bar[b][key] is None else round(float(bar[b][key]), 4),
                "n_readers": int(bar[b]["n"]),
                "n": int(sel["case_id"].nunique()),
            }
            for g, x in sel.groupby("group"):
                row[str(g)] = round(float(x["final_dice"].mean()), 4)
            table[b] = row
        out[banding] = table
    return out


_BAR_KEYS = {"readers", "n_readers", "n"}


def _readers_section(bar: dict, groups: list[str]) -> Section:
    what = "whole volumes" if bar["env"] == "3d" else "the key slice"
    sec = Section("Against the LIDC readers")
    sec.paragraphs.append(
        f"Mean final Dice per size band ({what}) beside the LIDC readers' own agreement: each reader "
        "against the consensus of the other readers, calibration split, nodules with 3–4 readers. "
        "A group near the readers annotates as a radiologist does; one above them would mean the "
        "image gives the answer away. The box robots (the reference's box on each of its slices, grown "
        "by the random shifts of MedSAM's training) show what the model gives on these images from a "
        "box drawn with full knowledge of the answer."
    )
    for banding, name in (
        ("lidc", "the LIDC diameter (mean of the readers' diameters)"),
        ("consensus", "the consensus diameter"),
    ):
        rows = []
        for b, r in bar[banding].items():
            row = {"band (mm)": b, "LIDC readers": r["readers"], "reader-nodules": r["n_readers"], "nodules": r["n"]}
            row.update({g: r.get(g) for g in groups})
            rows.append(row)
        sec.tables.append((f"Banded by {name}", pd.DataFrame(rows), f"vs_readers_by_{banding}_diameter"))
    return sec


def _prompt_slice(prompt) -> int:
    """The slice a stored prompt went to (stored as JSON text; 0 when it has none)."""
    import json

    if isinstance(prompt, str):
        prompt = json.loads(prompt)
    return int(prompt.get("slice", 0) or 0) if isinstance(prompt, dict) else 0


def per_annotator_json(data) -> dict:
    """Per arm (the episodes' ``annotator`` label): mean final ``dice``, mean ``seconds`` per episode,
    ``accepted`` (fraction of episodes the annotator ended by accepting, not by giving up or by the
    step limit) and mean ``slices_prompted`` (distinct slices that received a click, a box or a
    propagation; 1 in 2-D)."""
    e, a = data.episodes, data.actions
    keys = ["unit_id", "case_id", "replicate", "position"]
    slices = pd.Series(dtype=float)
    if len(a) and "prompt" in a.columns:
        p = a[a["is_prompt"].astype(bool)].copy()
        p["z"] = [_prompt_slice(pr) for pr in p["prompt"]]
        slices = p.groupby(keys)["z"].nunique()
    out: dict = {}
    for label, g in e.groupby("annotator", sort=True):
        n_sl = [float(slices.get(tuple(r[k] for k in keys), 0)) for _, r in g.iterrows()]
        accepted = g["accepted"].astype(bool) & ~g["gave_up"].astype(bool)
        out[str(label)] = {
            "dice": round(float(g["final_dice"].mean()), 4),
            "seconds": round(float(g["seconds_total"].mean()), 2),
            "accepted": round(float(accepted.mean()), 4),
            "slices_prompted": round(float(sum(n_sl) / max(1, len(n_sl))), 2),
            "n": int(len(g)),
        }
    return out


class GroupsKind(StudyKind):
    name = "groups"
    analysis_keys = {
        "reference": "arm the others are compared with, paired by case and replicate (default expert_radiologist)",
        "thresholds": "Dice levels of NoC and time-to-Dice (default 0.80, 0.85, 0.90)",
        "max_prompts": "prompt budget of NoC (default 20)",
        "policy": "the policy arm `hiseg-sim eval-policy` compares with the people",
    }
    label_keys = ("reference", "policy")

    def sections(self, data, settings: dict, out: Path) -> tuple[list, dict]:
        return _sections(data, settings, out)

    def print_summary(self, result, echo) -> None:
        super().print_summary(result, echo)
        rep = result[1]
        bar = None if rep is None else rep.headline.get("vs_readers")
        if not bar:
            return
        groups = sorted({g for t in (bar["lidc"], bar["consensus"]) for r in t.values() for g in r} - _BAR_KEYS)
        what = "3-D" if bar["env"] == "3d" else "key-slice"
        for banding, name in (("lidc", "LIDC diameter"), ("consensus", "consensus diameter")):
            echo(f"{what} Dice by size band ({name}) beside the LIDC readers vs the others' consensus:")
            echo(f"{'band':>8} {'readers':>8} " + " ".join(f"{g[:22]:>22}" for g in groups) + "  nodules")
            for b, r in bar[banding].items():
                cells = " ".join(f"{r[g]:>22.3f}" if r.get(g) is not None else f"{'-':>22}" for g in groups)
                readers = f"{r['readers']:.3f}" if r["readers"] is not None else "-"
                echo(f"{b:>8} {readers:>8} {cells}  {r['n']}")


#: The entry point ``groups`` of the group ``hiseg_sim.study_kinds``.
KIND = GroupsKind()
