"""How much practice a newcomer needs: learning curves of people working through cases in order,
and training designs compared by the cases and minutes they take to reach a reference group.

The ``training`` study kind: its ``[analysis]`` settings and its report sections. Every arm of a
sequence study is a design (a group and what a teacher shows it, :mod:`hiseg_sim.annotators.behaviour.teacher`);
the report gives, per arm, the mean Dice and seconds of the first and last ``ENDS`` cases of each
person's sequence, and the cases and minutes (annotation, plus the time spent on worked examples and
tutorials) until the arm's Dice comes within ``margin`` of the reference arm's on the same cases,
with 95 % intervals from a bootstrap over persons. ``headline.json`` holds them under ``arms``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from hiseg_sim.analysis import learning as L
from hiseg_sim.analysis import plots as P
from hiseg_sim.analysis.section import Section, common_settings, fmt_ci
from hiseg_sim.studies.base import StudyKind

#: Cases at each end of a person's sequence whose means the report and headline give.
ENDS = 5
#: The perception parameters drawn over the sequence (what worked examples move).
_TRACKED = ("edge_sd_scale", "p_include_vessel", "p_miss_ggo_rim", "p_pleura_error")

#: What the columns of this kind's tables mean.
DEFINITIONS = {
    f"Dice, first {ENDS} cases": f"mean over persons of each person's mean Dice on the first {ENDS} cases of their "
    "sequence",
    f"Dice, last {ENDS} cases": f"the same on the last {ENDS} cases",
    "Dice gain": f"Dice of the last {ENDS} cases minus that of the first {ENDS}",
    "gain, case mix removed [95% CI]": "the Dice gain with each case's difficulty for the arm taken out: each "
    "episode's Dice less the arm's mean Dice on that case (over every person and position), last cases' mean "
    "minus first cases' per person, with a 95 % bootstrap interval over persons; it does not move when a few "
    "seeded orders end on harder cases, the raw gain does",
    "gain − baseline's [95% CI]": "the arm's Dice gain minus the baseline arm's ([analysis] baseline), paired by "
    "person (person r of both arms meets the same cases), with a 95 % bootstrap interval over persons",
    f"seconds, first {ENDS}": f"mean simulated annotation seconds per case on the first {ENDS} cases (worked "
    "examples not included)",
    f"seconds, last {ENDS}": f"the same on the last {ENDS} cases",
    "feedback": "the arm's training design: what a teacher shows after a case (none, score, worked_example, "
    "worked_example_uninformative), with every=k (after every k-th case), examples=order (which worked example) "
    "and tutorial=n (worked examples before the first case)",
    "cases [95% CI]": "practice cases before the arm's Dice comes within the margin of the reference's on the same "
    "cases (where its fitted exponential learning curve crosses), with a 95 % bootstrap interval over persons",
    "minutes [95% CI]": "simulated minutes until then: annotating those cases, the worked examples shown after them "
    "and a tutorial before the first; same bootstrap draws",
    "learner": "the arm whose practice is measured",
}


def _reach_txt(r: dict, length: int) -> str:
    hi = str(r["hi"]) if r["hi"] is not None else f">{length}"
    lo = str(r["lo"]) if r["lo"] is not None else f">{length}"
    est = str(r["cases"]) if r["cases"] is not None else f"not within {length}"
    return f"{est} [{lo}, {hi}]"


def _minutes_txt(r: dict) -> str:
    if r.get("minutes") is None:
        return "–"
    hi = f"{r['minutes_hi']:.1f}" if r.get("minutes_hi") is not None else "never"
    lo = f"{r['minutes_lo']:.1f}" if r.get("minutes_lo") is not None else "–"
    return f"{r['minutes']:.1f} [{lo}, {hi}]"


def _costs(e: pd.DataFrame, arm: str) -> tuple[pd.DataFrame, pd.Series]:
    """Minutes per person and position (the case and the feedback after it), and minutes before the first case."""
    g = e[e["annotator"] == arm]
    teach = g["teaching_seconds"].fillna(0.0) if "teaching_seconds" in g else 0.0
    cost = (g["seconds_total"] + teach) / 60.0
    per = g.assign(cost=cost).pivot_table(index="replicate", columns="position", values="cost", aggfunc="sum")
    if "tutorial_seconds" in g:
        first = g[g["position"] == g["position"].min()]
        up = first.groupby("replicate")["tutorial_seconds"].sum().fillna(0.0) / 60.0
    else:
        up = pd.Series(0.0, index=per.index)
    return per, up


def _ends(e: pd.DataFrame, arm: str) -> dict:
    """Means over persons of each person's mean Dice and seconds on their first and last ``ENDS`` cases."""
    d, t = L.end_means(e, arm, ENDS, "final_dice").mean(), L.end_means(e, arm, ENDS, "seconds_total").mean()
    return {
        f"dice_first{ENDS}": float(d["first"]),
        f"dice_last{ENDS}": float(d["last"]),
        f"seconds_first{ENDS}": float(t["first"]),
        f"seconds_last{ENDS}": float(t["last"]),
    }


def _perception_curves(e: pd.DataFrame, arms: list[str]) -> pd.DataFrame | None:
    """Mean perception parameters after each case, per arm that records them (arms with a teacher)."""
    if "perception_after" not in e:
        return None
    rows = []
    for arm in arms:
        g = e[(e["annotator"] == arm) & e["perception_after"].notna()]
        if g.empty:
            continue
        vals = pd.DataFrame([json.loads(v) if isinstance(v, str) else v for v in g["perception_after"]], index=g.index)
        d = pd.concat([g[["position"]], vals], axis=1).groupby("position")[list(_TRACKED)].mean()
        rows.append(d.assign(annotator=arm).reset_index())
    return pd.concat(rows, ignore_index=True) if rows else None


def plot_designs(table: pd.DataFrame, percept: pd.DataFrame | None, path: Path, reference: str, length: int) -> Path:
    """Cases and minutes to the reference's level per design (95 % intervals; dashed: the upper end
    lies beyond the sequence), and what worked examples moved: the mean ``edge_sd_scale`` and
    ``p_include_vessel`` after each case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 2 + (percept is not None) * 2
    with plt.rc_context({"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False}):
        fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 0.42 * len(table) + 2.2), squeeze=False)
        axes = list(axes[0])
        y = np.arange(len(table))[::-1]
        panels = (
            ("cases", "lo", "hi", "practice cases", float(length)),
            ("minutes", "minutes_lo", "minutes_hi", "minutes", None),
        )

        def _num(v) -> float:
            return float(v) if v is not None and np.isfinite(v) else np.nan

        for ax, (col, lo, hi, label, cap) in zip(axes[:2], panels):
            finite = pd.to_numeric(table[[col, lo, hi]].stack(), errors="coerce").dropna()
            most = float(finite.max()) if len(finite) else 0.0
            right = cap if cap is not None else 1.15 * most if most > 0 else 1.0
            for yi, (_, r) in zip(y, table.iterrows()):
                if np.isnan(_num(r[col])):
                    # Not reached within the sequence: the interval's lower end, where the
                    # bootstrap puts it, still says how far off the design is.
                    start = _num(r[lo])
                    if not np.isnan(start):
                        ax.plot([start, right], [yi, yi], color="#3288bd", lw=4, alpha=0.2, ls=(0, (2, 1)))
                    note = f"  not within {length} cases" + ("" if np.isnan(start) else f" (95 % CI from {start:.3g})")
                    ax.text(0, yi, note, va="center", fontsize=7.5, color="#666666")
                    continue
                open_end = np.isnan(_num(r[hi]))
                top = right if open_end else r[hi]
                ax.plot(
                    [r[lo], top],
                    [yi, yi],
                    color="#3288bd",
                    lw=4,
                    alpha=0.35,
                    solid_capstyle="butt",
                    ls=(0, (2, 1)) if open_end else "-",
                )
                ax.plot([r[col]], [yi], "o", color="#3288bd", mec="black", mew=0.7, ms=6)
            ax.set_yticks(y, table["arm"] if ax is axes[0] else [""] * len(y))
            ax.set_xlabel(f"{label} until within the margin of {reference}")
            ax.set_xlim(0, right * 1.02)
            ax.grid(axis="x", alpha=0.3)
        axes[0].set_title("Practice cases (● estimate, bar: 95 % CI)")
        axes[1].set_title("Minutes: annotation + worked examples + tutorial")
        if percept is not None:
            colours = plt.get_cmap("tab20").colors
            for ax, col, title in (
                (axes[2], "edge_sd_scale", "edge wander (x radiologist's)"),
                (axes[3], "p_include_vessel", "P(take in an attached vessel)"),
            ):
                for i, (arm, g) in enumerate(percept.groupby("annotator", sort=False)):
                    ax.plot(g["position"] + 1, g[col], lw=1.5, label=arm, color=colours[(2 * i) % 20 + (i >= 10)])
                ax.set_xlabel("case number in the sequence")
                ax.set_title(f"After each case: {title}")
                ax.grid(alpha=0.3)
            axes[2].legend(fontsize=7, frameon=False)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=130, bbox_inches="tight")
        plt.close(fig)
    return path


def _sections(data, settings: dict, out: Path):
    n_boot, seed = common_settings(settings)
    e = data.episodes
    present = set(e["annotator"])
    in_spec = [a.get("label") for a in (getattr(data, "spec", None) or {}).get("annotators", [])]
    arms = [a for a in in_spec if a in present] + sorted(present - set(in_spec))  # the spec's order
    ref = settings.get("reference", "junior_medical_student")
    learners = list(settings.get("learners", [a for a in arms if a != ref]))
    curve_arms = list(settings.get("curves", arms))
    window = int(settings.get("window", 5))
    margin = float(settings.get("margin", 0.02))
    shown = e[e["annotator"].isin(curve_arms)]
    curves = L.learning_curve(shown, "annotator", "final_dice", min(n_boot, 500), seed, window)
    tcurves = L.learning_curve(shown, "annotator", "seconds_total", min(n_boot, 500), seed, window)
    sec = Section("Learning curves", definitions=DEFINITIONS)
    length = int(e["position"].max()) + 1
    persons = e.groupby("annotator")["replicate"].nunique()
    n_p = f"{int(persons.min())}" if persons.min() == persons.max() else f"{int(persons.min())}–{int(persons.max())}"
    sec.paragraphs.append(
        f"Each arm: {n_p} simulated persons, each working "
        f"through {length} cases in a seeded order shared by all arms (person r of every arm meets "
        f"the same case at the same position). Curves are smoothed over {window} cases."
    )
    reaches, headline = [], {"reach": {}, "arms": {}}
    rows, design_rows = [], []
    for lrn in learners:
        if ref not in arms or lrn not in arms:
            continue
        cost, up = _costs(e, lrn)
        r = L.cases_to_reach(e, lrn, ref, margin, window, n_boot, seed, mode="exp", cost=cost, upfront=up)
        st = L.cases_to_reach(e, lrn, ref, margin, window, n_boot, seed, mode="stay")
        fit = L.fit_exponential(L.paired_gap_matrix(e, lrn, ref).mean(axis=0).to_numpy())
        reaches.append(r)
        rows.append(
            {
                "learner": lrn,
                "exponential fit: cases [95% CI]": _reach_txt(r, length),
                "draws never": f"{100 * r['never_share']:.0f}%",
                "fit: gap at start → asymptote (tau cases)": L.fit_text(fit, length),
                "smoothed gap within it to the end from [95% CI]": _reach_txt(st, length),
                "draws never ": f"{100 * st['never_share']:.0f}%",
            }
        )
        design_rows.append(
            {
                "arm": lrn,
                "cases": r["cases"],
                "lo": r["lo"],
                "hi": r["hi"],
                "minutes": r.get("minutes"),
                "minutes_lo": r.get("minutes_lo"),
                "minutes_hi": r.get("minutes_hi"),
            }
        )
        headline["reach"][lrn] = {
            "exp": {k: v for k, v in r.items() if k != "curve"},
            "stay": {k: v for k, v in st.items() if k != "curve"},
            "fit_g0_a_tau": fit,
        }
    if rows:
        sec.tables.append(
            (
                f"Practice cases until the learner's Dice comes within {margin:.2f} of {ref}'s on the same "
                "cases: where a fitted exponential learning curve of the paired gap crosses the margin, and "
                "(stricter) from where the smoothed gap stays within it to the end; intervals and 'never' "
                "(share of draws not getting there within the sequence) from a bootstrap over persons",
                pd.DataFrame(rows),
            )
        )
    baseline = settings.get("baseline")
    first_last = []
    for arm in arms:
        ends = _ends(e, arm)
        reach = headline["reach"].get(arm, {}).get("exp", {})
        headline["arms"][arm] = {
            **ends,
            "cases_to_reference": 0 if arm == ref else reach.get("cases"),
            "cases_to_reference_ci": [0, 0] if arm == ref else [reach.get("lo"), reach.get("hi")],
            "minutes_to_reference": 0.0 if arm == ref else reach.get("minutes"),
            "minutes_to_reference_ci": [0.0, 0.0] if arm == ref else [reach.get("minutes_lo"), reach.get("minutes_hi")],
        }
        g = e[e["annotator"] == arm]
        adj = L.case_adjusted_gain(e, arm, ENDS, "final_dice", n_boot, seed)
        headline["arms"][arm]["gain_case_mix_removed"] = list(adj)
        vs = None
        if baseline in arms and arm != baseline:
            vs = L.gain_difference(e, arm, baseline, ENDS, "final_dice", n_boot, seed)
            headline["arms"][arm]["gain_minus_baseline"] = list(vs)
        first_last.append(
            {
                "arm": arm,
                f"Dice, first {ENDS} cases": ends[f"dice_first{ENDS}"],
                f"Dice, last {ENDS} cases": ends[f"dice_last{ENDS}"],
                "Dice gain": ends[f"dice_last{ENDS}"] - ends[f"dice_first{ENDS}"],
                "gain, case mix removed [95% CI]": fmt_ci(*adj, signed=True),
                "gain − baseline's [95% CI]": "–" if vs is None else fmt_ci(*vs, signed=True),
                f"seconds, first {ENDS}": ends[f"seconds_first{ENDS}"],
                f"seconds, last {ENDS}": ends[f"seconds_last{ENDS}"],
                "feedback": ", ".join(sorted(g["feedback"].unique())),
            }
        )
    sec.tables.append(
        (
            f"Start and end of the sequence per arm: means over persons of the first and last {ENDS} cases "
            "(seconds: annotation only)",
            pd.DataFrame(first_last),
        )
    )
    gaps = (
        pd.concat(
            [
                L.gap_curve(e, lrn, ref, window, min(n_boot, 500), seed)
                for lrn in learners
                if lrn in arms and ref in arms and lrn in curve_arms
            ],
            ignore_index=True,
        )
        if ref in arms and any(lrn in curve_arms for lrn in learners)
        else None
    )
    sec.figures.append(
        (
            f"Learning curves over {length} cases: Dice per case (left), the gap to {ref} on the same "
            "cases with where each learner's fitted learning curve reaches the margin and its 95 % interval "
            "(middle), and simulated seconds per case (right)",
            P.plot_learning(
                curves,
                out / "figures" / "learning_curves.png",
                reaches=[r for r in reaches if r["learner"] in curve_arms],
                gaps=gaps,
                time_curves=tcurves,
                reference=ref,
                margin=margin,
            ),
        )
    )
    sections = [_findings(headline, ref, length, margin, e, baseline), sec]
    if design_rows:
        table = pd.DataFrame(design_rows)
        des = Section("Training designs", definitions=DEFINITIONS)
        des.paragraphs.append(
            f"Per design: the practice cases and the minutes until its Dice comes within {margin:.2f} of {ref}'s on "
            "the same cases (the exponential fit's crossing), with 95 % intervals from a bootstrap over persons. "
            "Minutes count the annotation of the cases before the crossing, the worked examples shown after them "
            "and a tutorial before the first. A worked example teaches only through what it shows: the person "
            "compares it with their own intent on the same image; the uninformative control (a mask of the "
            "example's area centred in the view) shows how much of an effect is the example's content."
        )
        des.tables.append(
            (
                "Cases and minutes to the reference's level per design",
                pd.DataFrame(
                    [
                        {
                            "arm": r["arm"],
                            "cases [95% CI]": _reach_txt({"cases": r["cases"], "lo": r["lo"], "hi": r["hi"]}, length),
                            "minutes [95% CI]": _minutes_txt(r),
                        }
                        for r in design_rows
                    ]
                ),
            )
        )
        percept = _perception_curves(e, learners)
        des.figures.append(
            (
                f"Training designs: practice cases (left) and minutes (second) to {ref}'s level with 95 % "
                "intervals; the mean perception after each case of the arms with a teacher (right)",
                plot_designs(table, percept, out / "figures" / "training_designs.png", ref, length),
            )
        )
        sections.append(des)
    return sections, headline


def _findings(headline: dict, ref: str, length: int, margin: float, e: pd.DataFrame, baseline: str | None) -> Section:
    """Key findings: each design's cases and minutes to the reference, and its gain over the sequence."""
    f = Section("Key findings", lead=True, definitions=DEFINITIONS)
    arms = headline["arms"]
    for arm, r in headline["reach"].items():
        x = r["exp"]
        if x.get("cases") is None:
            f.bullets.append(f"`{arm}` does not come within {margin:.2f} Dice of `{ref}` within {length} cases.")
            continue
        hi = x["hi"] if x["hi"] is not None else f">{length}"
        mins = (
            ""
            if x.get("minutes") is None
            else (
                f", **{x['minutes']:.0f} min** [{x['minutes_lo'] or 0:.0f}, "
                f"{'never' if x.get('minutes_hi') is None else format(x['minutes_hi'], '.0f')}]"
            )
        )
        f.bullets.append(
            f"`{arm}` comes within {margin:.2f} Dice of `{ref}` after **{x['cases']} cases** [{x['lo']}, {hi}]{mins}."
        )
    feedback = e.groupby("annotator")["feedback"].agg(lambda v: set(v))
    gains = {a: v[f"dice_last{ENDS}"] - v[f"dice_first{ENDS}"] for a, v in arms.items()}
    if gains:
        f.bullets.append(
            f"Dice gain from the first {ENDS} to the last {ENDS} cases: "
            + ", ".join(f"`{a}` {g:+.3f}" for a, g in sorted(gains.items(), key=lambda kv: -kv[1]))
            + "."
        )
    adj = {a: v["gain_case_mix_removed"] for a, v in arms.items() if "gain_case_mix_removed" in v}
    if adj:
        f.bullets.append(
            "The same with each case's difficulty for the arm taken out (95 % CI): "
            + ", ".join(f"`{a}` {fmt_ci(*d, signed=True)}" for a, d in sorted(adj.items(), key=lambda kv: -kv[1][0]))
            + "."
        )
    vs = {a: v["gain_minus_baseline"] for a, v in arms.items() if "gain_minus_baseline" in v}
    if vs and baseline:
        f.bullets.append(
            f"Gain minus `{baseline}`'s, paired by person (95 % CI): "
            + ", ".join(f"`{a}` {fmt_ci(*d, signed=True)}" for a, d in sorted(vs.items(), key=lambda kv: -kv[1][0]))
            + "."
        )
    quiet = [a for a in arms if feedback.get(a) == {"none"}]
    if quiet:
        f.bullets.append(
            "Without feedback, seconds per case from the first to the last cases: "
            + ", ".join(
                f"`{a}` {arms[a][f'seconds_first{ENDS}']:.1f} → {arms[a][f'seconds_last{ENDS}']:.1f} s "
                f"({100 * (arms[a][f'seconds_last{ENDS}'] / arms[a][f'seconds_first{ENDS}'] - 1):+.0f} %)"
                for a in quiet
            )
            + "."
        )
    headline["findings"] = [b.replace("**", "").replace("`", "") for b in f.bullets]
    return f


class TrainingKind(StudyKind):
    name = "training"
    analysis_keys = {
        "learners": "arms whose practice is measured (default every arm but the reference)",
        "reference": "the level to reach (default junior_medical_student)",
        "margin": "Dice within which the learner counts as there (default 0.02)",
        "window": "smoothing of the curves, in cases (default 5)",
        "curves": "arms drawn in the learning-curve figure (default every arm)",
        "baseline": "the arm every other arm's Dice gain is compared with, paired by person (e.g. no feedback)",
    }
    label_keys = ("reference", "baseline")

    def sections(self, data, settings: dict, out: Path) -> tuple[list, dict]:
        return _sections(data, settings, out)


#: The entry point ``training`` of the group ``hiseg_sim.study_kinds``.
KIND = TrainingKind()
