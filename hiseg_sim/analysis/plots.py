"""Figures of a study (matplotlib, Agg): each function draws one PNG and returns its path.

Colours are fixed per group (:func:`group_colours`): the six people groups from light to dark in
order of training, robots in greys and browns, so a group has the same colour in every figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "PEOPLE_ORDER",
    "order_groups",
    "group_colours",
    "plot_dice_vs_time",
    "plot_distributions",
    "plot_strata",
    "plot_reach_curves",
    "plot_crowd",
    "plot_learning",
]

#: Profile groups in order of training (least first).
PEOPLE_ORDER = (
    "non_medical",
    "non_medical_trained",
    "crowd_worker",
    "junior_medical_student",
    "trainee_resident",
    "expert_radiologist",
)
_PEOPLE_COLOURS = ("#fdae61", "#f46d43", "#d53e4f", "#66c2a5", "#3288bd", "#5e4fa2")
_OTHER_COLOURS = (
    "#4d4d4d",
    "#8c510a",
    "#e6ab02",
    "#c51b7d",
    "#01665e",
    "#66a61e",
    "#7570b3",
    "#a6761d",
    "#1b9e77",
    "#e7298a",
    "#999999",
    "#2166ac",
)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _base(label: str) -> str:
    """The profile a label belongs to (``"non_medical+score"`` → ``"non_medical"``)."""
    for p in sorted(PEOPLE_ORDER, key=len, reverse=True):
        if label == p or label.startswith(p + "+") or label.startswith(p + "@") or label.startswith(p + "."):
            return p
    return label


def order_groups(labels: Sequence[str]) -> list[str]:
    """People groups in training order first, then the rest (robots, baselines) alphabetically."""
    labels = list(dict.fromkeys(labels))

    def key(lab):
        b = _base(lab)
        return (0, PEOPLE_ORDER.index(b), lab) if b in PEOPLE_ORDER else (1, 0, lab)

    return sorted(labels, key=key)


#: fixed colours of the prompting protocols of the prompt_protocols study
PROTOCOL_COLOURS = {"box_only": "#3288bd", "box_then_points": "#66a61e", "points_only": "#f46d43", "default": "#4d4d4d"}


def group_colours(labels: Sequence[str]) -> dict[str, str]:
    out, i = {}, 0
    for lab in order_groups(labels):
        if lab in PROTOCOL_COLOURS:
            out[lab] = PROTOCOL_COLOURS[lab]
            continue
        b = _base(lab)
        if b in PEOPLE_ORDER and b not in out.values() and lab == b:
            out[lab] = _PEOPLE_COLOURS[PEOPLE_ORDER.index(b)]
        else:
            out[lab] = _OTHER_COLOURS[i % len(_OTHER_COLOURS)]
            i += 1
    return out


def is_person(label: str) -> bool:
    return _base(label) in PEOPLE_ORDER


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_dice_vs_time(
    curves: pd.DataFrame,
    path,
    by: str = "annotator",
    title: str = "",
    split_people: bool = True,
    facet: str | None = None,
) -> Path:
    """Mean Dice against simulated seconds per group with 95 % bands.

    Panels: one per ``facet`` value if given, else people and robots side by side
    (``split_people``), else one.
    """
    plt = _plt()
    groups = order_groups(curves[by].unique())
    colours = group_colours(groups)
    if facet is not None:
        panels = [(str(f), groups, curves[curves[facet] == f]) for f in order_groups(curves[facet].unique())]
    elif split_people:
        panels = [
            ("people (behaviour models)", [g for g in groups if is_person(g)], curves),
            ("robots and baselines", [g for g in groups if not is_person(g)], curves),
        ]
    else:
        panels = [("", groups, curves)]
    panels = [p for p in panels if p[1]]
    ncol = 2 if len(panels) == 4 else min(len(panels), 3)
    nrow = int(np.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.4 * ncol, 3.9 * nrow), squeeze=False, sharey=True)
    tmax = float(curves["t"].max())
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (name, gs, sub) in zip(axes.flat, panels):
        for g in gs:
            c = sub[sub[by] == g]
            if c.empty:
                continue
            ax.plot(c["t"], c["dice"], color=colours[g], lw=1.8, label=g)
            ax.fill_between(c["t"], c["lo"], c["hi"], color=colours[g], alpha=0.10, lw=0)
        ax.set_xlim(0, tmax)
        ax.set_ylim(0, 1)
        ax.set_xlabel("simulated seconds since the case opened")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if facet is None:
            n_lab = len(ax.get_legend_handles_labels()[1])
            ax.legend(
                fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=min(3, max(1, n_lab)), frameon=False
            )
    for row in axes:
        row[0].set_ylabel("mean Dice (95 % CI over cases)")
    fig.suptitle(title or "Dice against simulated annotation time", fontsize=11)
    fig.tight_layout()
    if facet is not None:
        h, lab = axes.flat[0].get_legend_handles_labels()
        fig.legend(h, lab, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(lab), fontsize=8.5, frameon=False)
    return _save(fig, path)


def plot_distributions(
    episodes: pd.DataFrame, summary: pd.DataFrame, path, by: str = "annotator", title: str = ""
) -> Path:
    """Per group: final Dice (box + points), and seconds per nodule and prompts (means with 95 % CI)."""
    plt = _plt()
    groups = order_groups(summary[by].tolist())
    colours = group_colours(groups)
    fig, axes = plt.subplots(
        1, 3, figsize=(13, 0.42 * len(groups) + 1.8), sharey=True, gridspec_kw={"width_ratios": [2.2, 1.2, 1.0]}
    )
    ypos = np.arange(len(groups))[::-1]
    rng = np.random.default_rng(0)
    ax = axes[0]
    data = [episodes.loc[episodes[by] == g, "final_dice"].to_numpy() for g in groups]
    kw = dict(positions=ypos, widths=0.6, showfliers=False, patch_artist=True, medianprops={"color": "black"})
    try:
        bp = ax.boxplot(data, orientation="horizontal", **kw)  # matplotlib >= 3.10
    except TypeError:
        bp = ax.boxplot(data, vert=False, **kw)
    for patch, g in zip(bp["boxes"], groups):
        patch.set_facecolor(colours[g])
        patch.set_alpha(0.35)
    for y, g, d in zip(ypos, groups, data):
        ax.scatter(d, y + rng.uniform(-0.22, 0.22, d.size), s=6, color=colours[g], alpha=0.6, lw=0)
        s = summary[summary[by] == g].iloc[0]
        ax.plot([s["dice"]], [y], marker="D", color="black", ms=4, zorder=5)
    ax.set_yticks(ypos)
    ax.set_yticklabels(groups)
    ax.set_xlim(-0.02, 1.0)
    ax.set_xlabel("final Dice per episode (box: quartiles; ◆ mean)")
    ax.grid(axis="x", alpha=0.3)
    for ax, col, lab in (
        (axes[1], "seconds", "simulated seconds per nodule"),
        (axes[2], "prompts", "prompts per nodule"),
    ):
        for y, g in zip(ypos, groups):
            s = summary[summary[by] == g].iloc[0]
            ax.barh(y, s[col], color=colours[g], alpha=0.75, height=0.6)
            end = s[col]
            if col == "seconds" and np.isfinite(s["seconds_lo"]):
                ax.plot([s["seconds_lo"], s["seconds_hi"]], [y, y], color="black", lw=1)
                end = max(end, s["seconds_hi"])
            ax.text(end, y, f" {s[col]:.1f}", va="center", fontsize=7.5)
        ax.set_xlabel(lab)
        ax.grid(axis="x", alpha=0.3)
        # with one case there is no interval (NaN): the bars alone set the axis
        tops = [summary[col].to_numpy(float)] + ([summary["seconds_hi"].to_numpy(float)] if col == "seconds" else [])
        top = float(np.nanmax(np.concatenate(tops))) if np.isfinite(np.concatenate(tops)).any() else 1.0
        ax.set_xlim(0, top * 1.22 + 1e-9)
    fig.suptitle(title or "Quality and effort per group", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_strata(
    episodes: pd.DataFrame, path, by: str = "annotator", value: str = "final_dice", title: str = ""
) -> Path:
    """Heat maps of mean ``value`` per group x size band and per group x texture group."""
    from hiseg_sim.analysis.metrics import SIZE_BANDS, TEXTURE_GROUPS

    plt = _plt()
    groups = order_groups(episodes[by].unique())
    fig, axes = plt.subplots(1, 2, figsize=(10, 0.38 * len(groups) + 1.9), sharey=True)
    for ax, col, order, name in (
        (axes[0], "size_band", SIZE_BANDS, "size band (mm)"),
        (axes[1], "texture_group", TEXTURE_GROUPS, "texture"),
    ):
        cols = [c for c in order if c in set(episodes[col])]
        t = episodes.pivot_table(index=by, columns=col, values=value, aggfunc="mean").reindex(
            index=groups, columns=cols
        )
        n = episodes.groupby(col)["case_id"].nunique().reindex(cols)
        im = ax.imshow(t.to_numpy(dtype=float), cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
        for i in range(t.shape[0]):
            for j in range(t.shape[1]):
                v = t.iat[i, j]
                if np.isfinite(v):
                    ax.text(
                        j, i, f"{v:.2f}", ha="center", va="center", fontsize=7.5, color="white" if v < 0.6 else "black"
                    )
        ax.set_xticks(range(len(cols)))
        ax.set_xticklabels([f"{c}\nn={int(n[c])}" for c in cols])
        ax.set_xlabel(f"{name} (n = nodules)")
        ax.set_yticks(range(len(groups)))
        ax.set_yticklabels(groups)
        ax.spines[:].set_visible(False)
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"mean {value.replace('_', ' ')}")
    fig.suptitle(title or "Dice by nodule size and texture", fontsize=11)
    return _save(fig, path)


def plot_reach_curves(
    reach: pd.DataFrame, path, threshold: float, by: str = "annotator", facet: str | None = None, title: str = ""
) -> Path:
    """NoC curves: share of episodes at Dice >= ``threshold`` after k prompts, one line per group
    (one panel per ``facet`` value if given). The k axis ends where the last curve stops changing."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    facets = [None] if facet is None else P_order(reach[facet])
    groups = order_groups(reach[by].unique())
    colours = group_colours(groups)
    last = 1
    for _, c in reach.groupby([by] + ([facet] if facet else [])):
        ch = np.flatnonzero(np.diff(c.sort_values("k")["share"].to_numpy()) != 0)
        if ch.size:
            last = max(last, int(c["k"].min()) + int(ch[-1]) + 1)
    kmax = min(float(reach["k"].max()), last + 2)
    ncol = 2 if len(facets) == 4 else min(len(facets), 3)
    nrow = int(np.ceil(len(facets) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.3 * ncol + 2.2, 3.6 * nrow), squeeze=False, sharey=True)
    for ax in axes.flat[len(facets) :]:
        ax.axis("off")
    for ax, f in zip(axes.flat, facets):
        sub = reach if f is None else reach[reach[facet] == f]
        for i, g in enumerate(groups):
            c = sub[sub[by] == g].sort_values("k")
            if c.empty:
                continue
            ax.step(
                c["k"],
                c["share"] + (i - len(groups) / 2) * 0.004,
                where="post",
                color=colours[g],
                lw=1.8,
                label=g,
                ls="-" if is_person(g) or by == "protocol" else "--",
            )
        ax.set_xlabel("prompts given (k)")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlim(0, kmax)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if f is not None:
            ax.set_title(str(f))
    for row in axes:
        row[0].set_ylabel(f"share of episodes with Dice ≥ {threshold:.2f}")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in list(axes.flat)[1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.suptitle(title or f"NoC curves: prompts to Dice ≥ {threshold:.2f}", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def P_order(values) -> list:
    return order_groups(pd.unique(pd.Series(values)))


def plot_crowd(
    curve: pd.DataFrame,
    path,
    reference: dict | None = None,
    targets: Sequence[float] = (),
    title: str = "",
    worker: str = "crowd worker",
    saturation: dict | None = None,
) -> Path:
    """Fused Dice against workers per nodule (majority, STAPLE) and against total seconds, with the
    one-expert reference as a band / point and, if given, where STAPLE saturates
    (``saturation`` from :func:`hiseg_sim.analysis.crowd.saturation_k`)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    styles = {"majority": ("#d53e4f", "o", "majority vote (ties → background)"), "staple": ("#3288bd", "s", "STAPLE")}
    for m, g in curve.groupby("method"):
        colour, marker, lab = styles.get(m, ("grey", "^", m))
        g = g.sort_values("k")
        axes[0].plot(g["k"], g["dice"], color=colour, marker=marker, lw=1.8, label=lab)
        axes[0].fill_between(g["k"], g["lo"], g["hi"], color=colour, alpha=0.13, lw=0)
        axes[1].plot(g["seconds"], g["dice"], color=colour, marker=marker, lw=1.8, label=lab)
        for _, r in g.iterrows():
            axes[1].annotate(
                f"{int(r['k'])}",
                (r["seconds"], r["dice"]),
                textcoords="offset points",
                xytext=(4, -10 if m == "majority" else 5),
                fontsize=7,
                color=colour,
            )
    if reference is not None:
        axes[0].axhspan(reference["lo"], reference["hi"], color="#5e4fa2", alpha=0.08, lw=0)
        axes[0].axhline(
            reference["dice"], color="#5e4fa2", ls="--", lw=1.3, label=f"one {reference['arm']} (95 % CI band)"
        )
        axes[1].errorbar(
            [reference["seconds"]],
            [reference["dice"]],
            yerr=[[reference["dice"] - reference["lo"]], [reference["hi"] - reference["dice"]]],
            color="#5e4fa2",
            marker="*",
            ms=12,
            lw=1.2,
            ls="none",
            label=f"one {reference['arm']}",
        )
    if saturation is not None and saturation.get("k_share") is not None:
        k = saturation["k_share"]
        axes[0].axvline(k, color="#3288bd", lw=0.9, ls=":")
        axes[0].text(
            k,
            0.04,
            f"STAPLE: 90 % of its gain\nby k = {k} ",
            fontsize=7.5,
            color="#3288bd",
            va="bottom",
            ha="right",
            transform=axes[0].get_xaxis_transform(),
        )
    for ax in axes:
        x1 = ax.get_xlim()[1]
        for t in targets:
            ax.axhline(t, color="grey", lw=0.8, ls=":")
            ax.text(x1, t, f"{t:.2f} ", va="bottom", ha="right", fontsize=7, color="grey")
    axes[0].set_xlabel(f"{worker}s per nodule (k)")
    axes[0].set_xticks(sorted(curve["k"].unique()))
    axes[0].set_ylabel("Dice of the fused mask (mean over nodules, 95 % CI)")
    axes[1].set_xlabel("total simulated seconds per nodule (labels: k workers)")
    axes[1].set_ylabel("Dice of the fused mask")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    fig.suptitle(title or "Crowd fusion: quality against workers and cost", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def plot_learning(
    curves: pd.DataFrame,
    path,
    value: str = "final_dice",
    by: str = "annotator",
    reaches: Sequence[dict] = (),
    gaps: pd.DataFrame | None = None,
    time_curves: pd.DataFrame | None = None,
    reference: str | None = None,
    margin: float = 0.02,
    title: str = "",
) -> Path:
    """Learning curves per arm (smoothed Dice per case number, 95 % band over persons); the paired
    gap of each learner to the reference with the ``-margin`` line and where each first reaches it
    (``reaches`` from :func:`hiseg_sim.analysis.learning.cases_to_reach`); seconds per case."""
    plt = _plt()
    arms = list(dict.fromkeys(curves[by]))
    if reference in arms:
        arms = [reference] + [a for a in arms if a != reference]
    palette = ("#5e4fa2", "#d53e4f", "#f46d43", "#e6ab02", "#66a61e", "#3288bd", "#8c510a", "#4d4d4d")
    colours = {a: ("#222222" if a == reference else palette[(i + 1) % len(palette)]) for i, a in enumerate(arms)}
    panels = 1 + (gaps is not None) + (time_curves is not None)
    fig, axes = plt.subplots(1, panels, figsize=(5.4 * panels, 4.4), squeeze=False)
    axes = list(axes[0])
    ax = axes.pop(0)
    for a in arms:
        c = curves[curves[by] == a]
        ax.plot(
            c["case_number"],
            c[value],
            color=colours[a],
            lw=2.2 if a == reference else 1.6,
            label=a,
            ls="--" if a == reference else "-",
        )
        ax.fill_between(c["case_number"], c["lo"], c["hi"], color=colours[a], alpha=0.08, lw=0)
    ax.set_xlabel("case number in the sequence")
    ax.set_ylabel(f"{value.replace('_', ' ')} (smoothed; band: 95 % CI over persons)")
    ax.set_title("Dice per case")
    ax.grid(alpha=0.3)
    if gaps is not None:
        ax = axes.pop(0)
        ax.axhline(0, color="#222222", lw=1, ls="--")
        ax.axhspan(-margin, 0, color="grey", alpha=0.12, lw=0)
        ax.text(1, -margin, f" within {margin:.2f} of {reference}", fontsize=7, va="top", color="grey")
        for lrn, g in gaps.groupby("learner", sort=False):
            ax.plot(g["case_number"], g["gap"], color=colours.get(lrn, "grey"), lw=1.3, alpha=0.8)
            if "fit" in g and np.isfinite(g["fit"]).any():
                ax.plot(g["case_number"], g["fit"], color=colours.get(lrn, "grey"), lw=2.2, ls=(0, (4, 2)))
            ax.fill_between(g["case_number"], g["lo"], g["hi"], color=colours.get(lrn, "grey"), alpha=0.10, lw=0)
        for r in reaches:
            if r.get("cases") is None:
                continue
            x = r["cases"] + 1
            row = gaps[(gaps["learner"] == r["learner"]) & (gaps["case_number"] == x)]
            y = (
                float(row["fit"].iloc[0])
                if "fit" in row and np.isfinite(row["fit"].iloc[0])
                else float(row["gap"].iloc[0])
            )
            hi = (r["hi"] + 1) if r.get("hi") is not None else gaps["case_number"].max()
            ax.plot(
                [r["lo"] + 1, hi],
                [y, y],
                color=colours.get(r["learner"], "grey"),
                lw=4,
                alpha=0.35,
                solid_capstyle="butt",
            )
            ax.plot([x], [y], marker="o", ms=7, color=colours.get(r["learner"], "grey"), mec="black", mew=0.8)
        ax.set_xlabel("case number in the sequence")
        ax.set_ylabel(f"Dice gap to {reference} on the same cases (smoothed)")
        ax.set_title("Paired gap (thin: smoothed, dashed: exponential fit);\n● fit reaches the margin, bar: 95 % CI")
        ax.grid(alpha=0.3)
    if time_curves is not None:
        ax = axes.pop(0)
        for a in arms:
            c = time_curves[time_curves[by] == a]
            ax.plot(
                c["case_number"],
                c["seconds_total"],
                color=colours[a],
                lw=2.2 if a == reference else 1.6,
                ls="--" if a == reference else "-",
            )
            ax.fill_between(c["case_number"], c["lo"], c["hi"], color=colours[a], alpha=0.08, lw=0)
        ax.set_xlabel("case number in the sequence")
        ax.set_ylabel("simulated seconds per case (smoothed)")
        ax.set_title("Time per case")
        ax.grid(alpha=0.3)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(5, len(labels)),
        fontsize=8.5,
        frameon=False,
    )
    fig.suptitle(title or "Learning curves", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)
