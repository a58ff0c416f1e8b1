"""A part of a report, and the helpers every kind of study's report sections share.

A study kind (:mod:`hiseg_sim.studies`) turns a run's tables into a list of :class:`Section` and a
headline dict; :mod:`hiseg_sim.analysis.report` renders them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from hiseg_sim.analysis import plots as P
from hiseg_sim.analysis.stats import bootstrap_ci

__all__ = [
    "COLUMN_DEFINITIONS",
    "Section",
    "cluster_ci",
    "column_definition",
    "common_settings",
    "fmt_ci",
    "ordered",
    "significance",
    "summary_table",
    "with_group",
]


@dataclass
class Section:
    """A part of a report: a heading, paragraphs and bullets (Markdown inline syntax), figures and tables.

    Rendered in the order paragraphs, bullets, notes (paragraphs after the bullets), figures, tables.

    Attributes:
        lead: the report opens with this section (a kind's key findings), before every other.
        tables: ``(caption, table)`` or ``(caption, table, name)``; ``name`` is the file name of
            its CSV under ``tables/`` (default: the caption's first words).
        definitions: column → what it means, for the columns of this section's tables that the
            shared glossary (:data:`COLUMN_DEFINITIONS`) does not cover or that mean something
            else here.
    """

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)
    bullets: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lead: bool = False
    definitions: dict[str, str] = field(default_factory=dict)


#: What the columns of the reports' tables mean: an exact column name or a regular expression
#: (matched in full) → its definition. A kind's :attr:`Section.definitions` add to these.
COLUMN_DEFINITIONS: dict[str, str] = {
    "group": "the arm: a group of simulated people (a profile), a robot or a baseline; with several segmenters, "
    "the segmenter in brackets",
    "annotator": "the arm (see group)",
    "arm": "the arm (see group)",
    "episodes": "episodes of the arm: one person (or robot) on one nodule",
    "Dice mean [95% CI]": "mean final Dice of the accepted mask against the reference (LIDC reader consensus) on "
    "the scored slice(s), with its 95 % bootstrap interval over cases",
    "Dice [95% CI]": "mean final Dice against the reference, with its 95 % bootstrap interval over cases",
    "Dice median": "median final Dice over the arm's episodes",
    "IoU": "mean final intersection over union (Jaccard) with the reference",
    "HD95 mm (median)": "median 95th-percentile Hausdorff distance between mask and reference outlines, mm "
    "(undefined for an empty mask)",
    "NSD@1mm": "mean normalised surface Dice at 1 mm tolerance: the share of both outlines within 1 mm of the other",
    "seconds [95% CI]": "mean simulated seconds per nodule (time model of the person or robot), with its 95 % "
    "bootstrap interval over cases",
    "seconds": "mean simulated seconds per nodule",
    "prompts": "mean prompts per nodule that reached the model (boxes, clicks, propagations; not undo or accept)",
    "accepted": "share of episodes the annotator ended by accepting a mask (the rest hit the environment's step "
    "limit); it includes those stopped unsatisfied",
    "stopped unsatisfied": "share of episodes the person accepted before the mask looked good enough to them: "
    "their patience, time budget or hope of improving ran out, and they kept the best mask "
    "they had (robots: 0)",
    r"ΔDice vs (.+) \[95% CI\]": "mean paired difference in final Dice, this arm minus the reference arm, on the "
    "same case and replicate, with its 95 % bootstrap interval over cases",
    r"Δseconds vs (.+) \[95% CI\]": "mean paired difference in simulated seconds per nodule, this arm minus the "
    "reference arm (negative: faster), with its 95 % bootstrap interval",
    "p (bootstrap)": "two-sided bootstrap p-value of the Dice difference (not adjusted for comparing several arms)",
    "significant": "whether the 95 % interval of the difference excludes 0 (not adjusted for comparing several arms)",
    "Dice significant": "whether the 95 % interval of the Dice difference excludes 0",
    "seconds significant": "whether the 95 % interval of the seconds difference excludes 0",
    "pairs": "paired episodes (same case and replicate) behind a difference",
    r"<6|6-10|10-20|>=20": "mean final Dice on nodules of this diameter band (mm)",
    "ground-glass|part-solid|solid": "mean final Dice on nodules of this texture (LIDC texture rating 1-2 ground "
    "glass, 3 part-solid, 4-5 solid)",
    r"noc@(\d+) mean": "NoC: mean number of prompts until the Dice first reaches the level (0.80 for noc@80); an "
    "episode that never gets there within the prompt budget counts as the budget (RITM's rule)",
    r"noc@(\d+) never": "episodes that never reached the level within the prompt budget",
    r"Dice after (\d+)": "mean Dice right after the k-th prompt, over all episodes; an episode that ended before "
    "its k-th prompt counts with its final Dice",
    r"still prompting after (\d+)": "share of episodes that gave a k-th prompt (the rest had ended and count with "
    "their final Dice)",
    r"t@(\d+) median s": "median simulated seconds until the Dice first reaches the level, over the episodes "
    "that reach it",
    r"t@(\d+) reached": "share of episodes whose Dice reaches the level at some point",
    "AUC [95% CI]": "area under the Dice-time curve divided by the time window (the longest episode), so 1.0 is a "
    "perfect mask from the first second; 95 % interval over cases",
}


def column_definition(column: str, extra: dict[str, str] | None = None) -> str | None:
    """The definition of a table column: from ``extra`` first, then :data:`COLUMN_DEFINITIONS`."""
    import re

    for table in (extra or {}), COLUMN_DEFINITIONS:
        if column in table:
            return table[column]
        for pattern, meaning in table.items():
            try:
                if re.fullmatch(pattern, column):
                    return meaning
            except re.error:
                continue
    return None


def significance(lo, hi) -> str:
    """``"yes"`` if a 95 % interval excludes 0, ``"no"`` if it holds 0, ``"–"`` if there is none."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return "–"
    return "yes" if lo > 0 or hi < 0 else "no"


def fmt_ci(est, lo, hi, digits: int = 3, signed: bool = False) -> str:
    """``"0.853 [0.831, 0.874]"`` (``"–"`` for NaN); ``signed``: ``"+0.016 [-0.021, +0.052]"`` for a difference."""
    if est is None or (isinstance(est, float) and not math.isfinite(est)):
        return "–"
    spec = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"

    def f(v) -> str:  # a value that rounds to zero is written without a sign's minus ("-0.0")
        return spec.format(0.0 if round(float(v), digits) == 0 else v)

    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f(est)
    return f"{f(est)} [{f(lo)}, {f(hi)}]"


def common_settings(settings: dict) -> tuple[int, int]:
    return int(settings.get("n_boot", 2000)), int(settings.get("seed", 0))


def with_group(data) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Episodes and actions with a ``group`` column: the arm, plus the segmenter when there are several."""
    e, a = data.episodes.copy(), data.actions.copy()
    multi = e["segmenter"].nunique() > 1
    for df in (e, a):
        df["group"] = (
            (df["annotator"] + " [" + df["segmenter"].str.rsplit(":", n=1).str[-1] + "]") if multi else df["annotator"]
        )
    return e, a


def summary_table(summ: pd.DataFrame, by: str = "group") -> pd.DataFrame:
    rows = []
    for _, r in summ.iterrows():
        rows.append(
            {
                by: r[by],
                "episodes": int(r["n"]),
                "Dice mean [95% CI]": fmt_ci(r["dice"], r["dice_lo"], r["dice_hi"]),
                "Dice median": r["dice_median"],
                "IoU": r["iou"],
                "HD95 mm (median)": r["hd95_median"],
                "NSD@1mm": r["nsd"],
                "seconds [95% CI]": fmt_ci(r["seconds"], r["seconds_lo"], r["seconds_hi"], 1),
                "prompts": r["prompts"],
                "accepted": f"{100 * r['accepted']:.0f}%",
                "stopped unsatisfied": f"{100 * r['gave_up']:.0f}%",
            }
        )
    return pd.DataFrame(rows)


def add_volume_error_column(tab: pd.DataFrame, e: pd.DataFrame, cases: pd.DataFrame, groups: pd.Series) -> pd.Series:
    """Insert "abs volume error" (mean over a group's episodes of ``|V_mask - V_gt| / V_gt``, whole
    case) after ``NSD@1mm`` in a :func:`summary_table`; return the per-group means (fractions)."""
    from hiseg_sim.analysis.metrics import episode_volume_errors

    ve = episode_volume_errors(e, cases).groupby(groups).agg(lambda v: v.abs().mean())
    tab.insert(
        tab.columns.get_loc("NSD@1mm") + 1,
        "abs volume error",
        [f"{100 * ve.get(g, float('nan')):.1f}%" for g in tab[tab.columns[0]]],
    )
    return ve


def ordered(df: pd.DataFrame, col: str) -> pd.DataFrame:
    order = {g: i for i, g in enumerate(P.order_groups(df[col].unique()))}
    return df.sort_values(col, key=lambda s: s.map(order), kind="mergesort").reset_index(drop=True)


def cluster_ci(values, clusters, n_boot, seed):
    return bootstrap_ci(values, clusters, n_boot, seed=seed)
