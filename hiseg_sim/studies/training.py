"""How much practice a newcomer needs: learning curves of people working through cases in order.

The ``training`` study kind: its ``[analysis]`` settings and its report sections."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hiseg_sim.analysis import learning as L
from hiseg_sim.analysis import plots as P
from hiseg_sim.analysis.section import (
    Section,
    common_settings,
)
from hiseg_sim.studies.base import StudyKind


def _reach_txt(r: dict, length: int) -> str:
    hi = str(r["hi"]) if r["hi"] is not None else f">{length}"
    lo = str(r["lo"]) if r["lo"] is not None else f">{length}"
    est = str(r["cases"]) if r["cases"] is not None else f"not within {length}"
    return f"{est} [{lo}, {hi}]"


def _sections(data, settings: dict, out: Path):
    n_boot, seed = common_settings(settings)
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


class TrainingKind(StudyKind):
    name = "training"
    analysis_keys = {"learners": "arms whose practice is measured (default every arm but the reference)",
                     "reference": "the level to reach (default junior_medical_student)",
                     "margin": "Dice within which the learner counts as there (default 0.02)",
                     "window": "smoothing of the curves, in cases (default 5)"}
    label_keys = ("reference",)

    def sections(self, data, settings: dict, out: Path) -> tuple[list, dict]:
        return _sections(data, settings, out)


#: The entry point ``training`` of the group ``hiseg_sim.study_kinds``.
KIND = TrainingKind()
