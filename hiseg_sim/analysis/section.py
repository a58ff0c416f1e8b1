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

__all__ = ["Section", "cluster_ci", "common_settings", "fmt_ci", "ordered", "summary_table", "with_group"]


@dataclass
class Section:
    """A part of a report: a heading, paragraphs (Markdown inline syntax), tables and figures."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    figures: list[tuple[str, Path]] = field(default_factory=list)


def fmt_ci(est, lo, hi, digits: int = 3) -> str:
    """``"0.853 [0.831, 0.874]"`` (``"–"`` for NaN)."""
    if est is None or (isinstance(est, float) and not math.isfinite(est)):
        return "–"
    f = f"{{:.{digits}f}}"
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return f.format(est)
    return f"{f.format(est)} [{f.format(lo)}, {f.format(hi)}]"


def common_settings(settings: dict) -> tuple[int, int]:
    return int(settings.get("n_boot", 2000)), int(settings.get("seed", 0))


def with_group(data) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Episodes and actions with a ``group`` column: the arm, plus the segmenter when there are several."""
    e, a = data.episodes.copy(), data.actions.copy()
    multi = e["segmenter"].nunique() > 1
    for df in (e, a):
        df["group"] = (df["annotator"] + " [" + df["segmenter"].str.rsplit(":", n=1).str[-1] + "]") if multi \
            else df["annotator"]
    return e, a


def summary_table(summ: pd.DataFrame, by: str = "group") -> pd.DataFrame:
    rows = []
    for _, r in summ.iterrows():
        rows.append({by: r[by], "episodes": int(r["n"]), "Dice mean [95% CI]": fmt_ci(r["dice"], r["dice_lo"], r["dice_hi"]),
                     "Dice median": r["dice_median"], "IoU": r["iou"], "HD95 mm (median)": r["hd95_median"],
                     "NSD@1mm": r["nsd"], "seconds [95% CI]": fmt_ci(r["seconds"], r["seconds_lo"], r["seconds_hi"], 1),
                     "prompts": r["prompts"], "accepted": f"{100 * r['accepted']:.0f}%",
                     "stopped unsatisfied": f"{100 * r['gave_up']:.0f}%"})
    return pd.DataFrame(rows)


def ordered(df: pd.DataFrame, col: str) -> pd.DataFrame:
    order = {g: i for i, g in enumerate(P.order_groups(df[col].unique()))}
    return df.sort_values(col, key=lambda s: s.map(order), kind="mergesort").reset_index(drop=True)


def cluster_ci(values, clusters, n_boot, seed):
    return bootstrap_ci(values, clusters, n_boot, seed=seed)
