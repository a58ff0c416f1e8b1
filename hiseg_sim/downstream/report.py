"""Markdown report and figures of the downstream study (``runs/<name>/downstream.md``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "write_report",
    "rebuild_report",
    "example_sets",
    "save_examples",
    "load_examples",
    "plot_downstream",
    "plot_curve",
    "plot_examples",
]

_COLORS = {"gt": "#333333", "expert": "#1f77b4", "crowd": "#2ca02c", "novice": "#d62728", "specialist": "#9467bd"}


def plot_downstream(
    table: pd.DataFrame, per_case: pd.DataFrame, lq: pd.DataFrame, path: Path, three_d: bool = False
) -> Path:
    """Left: holdout test Dice per arm (cases as dots, mean and 95 % interval). Right: label Dice vs ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(table["arm"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    rng = np.random.default_rng(0)
    for i, arm in enumerate(arms):
        d = per_case[per_case["arm"] == arm]["dice"].to_numpy()
        a1.scatter(i + rng.uniform(-0.18, 0.18, d.size), d, s=10, alpha=0.35, color=_COLORS.get(arm, "k"))
        r = table[table["arm"] == arm].iloc[0]
        a1.errorbar(
            i + 0.3,
            r["dice"],
            yerr=[[r["dice"] - r["lo"]], [r["hi"] - r["dice"]]],
            fmt="o",
            color=_COLORS.get(arm, "k"),
            capsize=4,
            ms=7,
        )
        a1.text(i + 0.36, r["dice"], f"{r['dice']:.3f}", va="center", fontsize=8)
    a1.set_xticks(
        range(len(arms)), [t.replace(" + ", "\n+ ").replace(" pseudo", "\npseudo") for t in table["title"]], fontsize=8
    )
    a1.set_ylabel("test Dice (holdout, per case)")
    a1.set_ylim(0, 1.02)
    a1.set_title("Same net, same seeds, different training labels", fontsize=10)
    a1.grid(axis="y", alpha=0.3)
    q = lq.groupby("arm")["dice"].agg(["mean", "std"]).reindex(arms)
    a2.bar(range(len(arms)), q["mean"], color=[_COLORS.get(a, "k") for a in arms], alpha=0.8)
    for i, v in enumerate(q["mean"]):
        a2.text(i, v + 0.01, f"{v:.3f}", ha="center", fontsize=8)
    a2.set_xticks(range(len(arms)), arms, fontsize=8)
    a2.set_ylim(0, 1.08)
    a2.set_ylabel(f"label Dice vs ground truth (training {'volumes' if three_d else 'key slices'})")
    a2.set_title("Quality of the training labels", fontsize=10)
    a2.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curve(curve: pd.DataFrame, ref: dict, path: Path) -> Path:
    """Specialist Dice (prompted segmenter, and the specialist alone) against labelled cases, log2 axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.6, 4.2))
    styles = {
        "final_dice": ("specialist → LiteMedSAM (env-scored)", "#9467bd", "o-"),
        "proposal_dice": ("specialist net alone", "#8c564b", "s--"),
    }
    for what, (lab, col, st) in styles.items():
        c = curve[curve["what"] == what].sort_values("n_labelled")
        if c.empty:
            continue
        ax.plot(c["n_labelled"], c["dice"], st, color=col, label=lab)
        ax.fill_between(c["n_labelled"], c["lo"], c["hi"], color=col, alpha=0.15)
    for (name, v), col in zip(ref.items(), ("#1f77b4", "#2ca02c", "#d62728")):
        ax.axhline(v, color=col, ls=":", lw=1.2, label=f"{name} + SAM ({v:.3f})")
    ax.set_xscale("log", base=2)
    ns = sorted(curve["n_labelled"].unique())
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("labelled cases the specialist was trained on")
    ax.set_ylabel("Dice on the other training-cohort cases")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    ax.set_title("Specialist annotator vs its number of labelled cases (95 % CI)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def example_sets(sets: dict, n: int = 4) -> dict:
    """The ``n`` training cases the labels figure shows (spread over nodule sizes from the 30th
    percentile up), as label sets of their own (small enough to keep beside the report)."""
    from hiseg_sim.downstream.labels import LabelSet

    area = sets["gt"].targets.sum((1, 2))
    # rows holding ground truth (volume labels have nodule-free slices too)
    cand = np.flatnonzero(area > 0) if (area > 0).any() else np.arange(len(area))
    order = cand[np.argsort(area[cand], kind="stable")]
    idx = order[np.linspace(len(order) * 0.3, len(order) - 1, n).astype(int)]
    return {
        k: LabelSet(k, [ls.case_ids[i] for i in idx], ls.images[idx], ls.targets[idx], ls.weights[idx])
        for k, ls in sets.items()
    }


def save_examples(ex: dict, path: Path) -> Path:
    """Write :func:`example_sets` to ``path`` (``.npz``)."""
    arrs = {f"{k}__{f}": getattr(ls, f) for k, ls in ex.items() for f in ("images", "targets", "weights")}
    np.savez_compressed(path, arms=np.array(list(ex)), case_ids=np.array(next(iter(ex.values())).case_ids), **arrs)
    return Path(path)


def load_examples(path: Path) -> dict:
    """Inverse of :func:`save_examples`."""
    from hiseg_sim.downstream.labels import LabelSet

    z = np.load(path)
    ids = [str(i) for i in z["case_ids"]]
    return {str(k): LabelSet(str(k), ids, z[f"{k}__images"], z[f"{k}__targets"], z[f"{k}__weights"]) for k in z["arms"]}


def plot_examples(sets: dict, path: Path, n: int = 4) -> Path:
    """A few training cases: image, ground truth, each arm's label; the specialist's weight map.
    ``sets``: label sets (all the cases: ``n`` are picked by :func:`example_sets`; or already picked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hiseg_sim.segmenters.base import window_to_unit

    sets = sets if len(sets["gt"].case_ids) == n else example_sets(sets, n)
    names = list(sets)
    gt = sets["gt"]
    idx = range(n)
    cols = names + (["specialist weights"] if "specialist" in sets else [])
    fig, axes = plt.subplots(n, len(cols), figsize=(1.9 * len(cols), 1.9 * n))
    for r, i in enumerate(idx):
        img = window_to_unit(gt.images[i])
        for c, name in enumerate(cols):
            ax = axes[r, c]
            if name == "specialist weights":
                ax.imshow(sets["specialist"].weights[i], cmap="magma", vmin=0, vmax=1)
            else:
                ax.imshow(img, cmap="gray")
                col = "yellow" if name == "gt" else _COLORS.get(name, "c")
                ax.contour(sets[name].targets[i] > 0.5, levels=[0.5], colors=[col], linewidths=1.2)
                if name != "gt":
                    ax.contour(gt.targets[i] > 0.5, levels=[0.5], colors=["yellow"], linewidths=0.6, linestyles="--")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
        axes[r, 0].set_ylabel(gt.case_ids[i], fontsize=7)
    fig.suptitle(
        "Training labels (solid) against ground truth (yellow dashed); pseudo-label weights (dark = down-weighted)",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(
    run_dir: Path, summary: dict, per_case: pd.DataFrame, lq: pd.DataFrame, curve: pd.DataFrame, sets: dict
) -> Path:
    """``downstream.md`` with the (a)–(e) table, the gap, the specialist curve, runtimes and the figures."""
    run_dir = Path(run_dir)
    table = pd.DataFrame(summary["table"])
    figs = [
        plot_downstream(table, per_case, lq, run_dir / "downstream_dice.png", summary.get("scored") == "3d"),
        plot_examples(sets, run_dir / "downstream_labels.png"),
    ]
    st = summary["settings"]
    people = {r["annotator"]: r["mean"] for r in summary["annotators"]}
    ref = {k: people[st["arms"][k]] for k in ("expert", "crowd", "novice") if st["arms"].get(k) in people}
    if len(curve):
        figs.append(plot_curve(curve, ref, run_dir / "specialist_curve.png"))
    lqm = summary["label_quality"]
    src = summary.get("train_source") or {}
    if src.get("source"):
        where = f"from `{src['source']}` {src.get('kwargs') or ''} (calibration split only)"
    else:
        where = f"of the {src.get('cohort', 'default')} cohort (calibration split)"
    tc = summary.get("train_config") or {}
    net = (
        f"TinyUNet (base {tc.get('base', 8)}{', centre prior' if tc.get('prior') else ''}), batch "
        f"{tc.get('batch', 8)}, {tc.get('patch_px', 64)}-px patches, flips/rotations/shifts"
        f"{', HU jitter ' + format(tc['jitter_hu'], 'g') if tc.get('jitter_hu') else ''}"
    )
    three_d = summary.get("scored") == "3d"
    if three_d:
        intro = (
            f"The annotators outlined whole nodules (3-D env); the labels are volumes. Training: "
            f"{summary['train_cases']} cases {where}, every slice of each case's volume "
            f"({summary.get('train_slices', '?')} slices), 96-px crops; the same 2-D {net} "
            "(nnU-Net's 2d configuration: trained on every slice of the volume labels), "
            f"BCE + soft Dice, {st['train_steps']} steps, seeds {st['seeds']}. Test: "
            f"{summary['test_cases']} holdout cases ({summary['test_slices']} slices), each volume predicted slice "
            "by slice, the slices stacked, and scored in 3-D against the whole case's ground truth (Dice, NSD at "
            "1 mm, relative volume error), averaged over the seeds; intervals: 95 % percentile bootstrap over test "
            f"cases ({st['n_boot']} draws); differences paired by case. Label Dice and area ratio are per training "
            "case, in 3-D; annotation seconds are simulated seconds per nodule of the episodes the labels come from."
        )
        head = (
            "| arm | label Dice vs GT (train) | label volume / GT volume (median) | annotation s / nodule | test Dice "
            "| 95 % CI | test NSD@1mm | test abs volume error | Δ vs (a) | 95 % CI of Δ | p (boot) "
            "| test cases missed (Dice < 0.1) |"
        )
        rule = "|---|---|---|---|---|---|---|---|---|---|---|---|"
    else:
        intro = (
            f"Training: {summary['train_cases']} cases {where}, key slice, 96-px crops; the same {net}, "
            f"BCE + soft Dice, {st['train_steps']} steps, seeds {st['seeds']}. Test: "
            f"{summary['test_cases']} holdout cases ({summary['test_slices']} slices: key slice ± "
            f"{st['test_neighbours']}), ground truth. Dice per test case = mean over its slices and the seeds; "
            f"intervals: 95 % percentile bootstrap over test cases ({st['n_boot']} draws); differences paired by case."
        )
        head = (
            "| arm | label Dice vs GT (train) | label area / GT area (median) | test Dice | 95 % CI | Δ vs (a) "
            "| 95 % CI of Δ | p (boot) | test cases missed (Dice < 0.1) |"
        )
        rule = "|---|---|---|---|---|---|---|---|---|"
    L = [f"# Downstream study `{summary['study']}`", "", intro, "", head, rule]
    area, miss = summary.get("label_area_ratio", {}), summary.get("test_misses", {})
    secs = summary.get("annotation_seconds", {})
    for _, r in table.iterrows():
        d = (
            ""
            if r["arm"] == "gt"
            else f"{r['diff_vs_gt']:+.3f} | [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}] | {r['p_boot']:.3f}"
        )
        if three_d:
            sec = secs.get(r["arm"])
            L.append(
                f"| {r['title']} | {lqm.get(r['arm'], float('nan')):.3f} | {area.get(r['arm'], float('nan')):.2f} | "
                + ("–" if sec is None else f"{sec:.1f}")
                + f" | {r['dice']:.3f} | [{r['lo']:.3f}, {r['hi']:.3f}] | {r['nsd']:.3f} | "
                f"{100 * r['abs_volume_error']:.1f}% | "
                + (d if d else "– | – | –")
                + f" | {miss.get(r['arm'], float('nan')):.0%} |"
            )
            continue
        L.append(
            f"| {r['title']} | {lqm.get(r['arm'], float('nan')):.3f} | {area.get(r['arm'], float('nan')):.2f} | "
            f"{r['dice']:.3f} | [{r['lo']:.3f}, {r['hi']:.3f}] | "
            + (d if d else "– | – | –")
            + f" | {miss.get(r['arm'], float('nan')):.0%} |"
        )
    sam = table[table["arm"].isin(["expert", "crowd", "novice"])]
    if len(sam):
        worse = (sam["diff_vs_gt"] < 0).sum()
        sig = (sam["diff_hi"] < 0).sum()
        L += [
            "",
            f"**Direction check** (arXiv 2403.15218: nnU-Net trained on SAM masks is worse than on ground truth, "
            f"p < 0.001 on every dataset): here {worse} of {len(sam)} SAM-label arms train a worse net than ground "
            f"truth; {sig} of {len(sam)} with the paired 95 % interval entirely below 0. Gaps (arm − GT): "
            + ", ".join(
                f"{r['arm']} {r['diff_vs_gt']:+.3f} [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}]"
                for _, r in sam.iterrows()
            )
            + ".",
        ]
    if len(curve):
        L += [
            "",
            "## Specialist annotator against its labelled cases",
            "",
            "Dice on the study's training cases it was not trained on (env-scored: ground truth outside the "
            "viewport counts as missed). Its labelled cases are drawn from the default cohort.",
            "",
            "| labelled cases | specialist → LiteMedSAM | 95 % CI | specialist alone | 95 % CI | cases | mean rounds |",
            "|---|---|---|---|---|---|---|",
        ]
        for n, g in curve.groupby("n_labelled"):
            f = g[g["what"] == "final_dice"].iloc[0]
            p = g[g["what"] == "proposal_dice"].iloc[0]
            L.append(
                f"| {n} | {f['dice']:.3f} | [{f['lo']:.3f}, {f['hi']:.3f}] | {p['dice']:.3f} | "
                f"[{p['lo']:.3f}, {p['hi']:.3f}] | {f['n_cases']} | {f['rounds']:.2f} |"
            )
        L += [
            "",
            "People on the same cases (mean env-scored Dice of one episode): "
            + ", ".join(f"{k} {v:.3f}" for k, v in sorted(people.items()))
            + ".",
        ]
    tm = summary["timings_s"]
    L += [
        "",
        "## Runtime",
        "",
        f"On {summary['cpu_count']} CPU cores (shared with other jobs while measured): specialists trained "
        f"{tm.get('specialists_s', 0):.0f} s (0 when cached), annotation episodes {tm.get('annotation_s', 0):.0f} s, "
        f"downstream training and testing {tm.get('downstream_training_s', 0):.0f} s "
        f"({len(summary['train_runs'])} runs, {st['train_workers']} processes × 1 thread), total {tm.get('total_s', 0):.0f} s.",
        "",
        "## Figures",
        "",
    ]
    L += [f"![{p.stem}]({p.name})" for p in figs]
    path = run_dir / "downstream.md"
    path.write_text("\n".join(L) + "\n")
    return path


def rebuild_report(run_dir) -> Path:
    """Write ``downstream.md`` and its figures again from what the run kept (``downstream.json``,
    ``downstream_per_case.csv``, ``downstream_label_quality.csv``, ``downstream_examples.npz``);
    nothing is retrained. Behind ``hiseg-sim report runs/<downstream study>``."""
    run_dir = Path(run_dir)
    need = ["downstream.json", "downstream_per_case.csv", "downstream_label_quality.csv", "downstream_examples.npz"]
    missing = [n for n in need if not (run_dir / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{run_dir}: no {', '.join(missing)}; run the study first "
            "(hiseg-sim run experiments/<study>.toml writes them)"
        )
    import json

    summary = json.loads((run_dir / "downstream.json").read_text())
    return write_report(
        run_dir,
        summary,
        pd.read_csv(run_dir / "downstream_per_case.csv"),
        pd.read_csv(run_dir / "downstream_label_quality.csv"),
        pd.DataFrame(summary.get("curve", [])),
        load_examples(run_dir / "downstream_examples.npz"),
    )
