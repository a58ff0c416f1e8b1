"""Model cards of saved policies (``model_card.json`` and ``model_card.md``) and the training-curve plot.

Besides what was trained on what and how it did, the JSON card holds the two sections a policy is
loaded from (:mod:`hiseg_sim.policies.store`): ``architecture``, everything needed to rebuild the
network (:func:`hiseg_sim.policies.network.describe_policy`), and ``weights``, the file of tensors
(``policy.pt``), its SHA-256, and its tensor and parameter counts.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = [
    "CARD_JSON",
    "CARD_MD",
    "add_evaluation",
    "card_markdown",
    "evaluations",
    "plot_training_curve",
    "read_card",
    "write_card",
]

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def card_markdown(card: dict) -> str:
    """The card as Markdown: what was trained on what, how long, and how it did."""
    tr = card.get("training", {})
    demo = card.get("demonstrations") or {}
    lines = [
        f"# Policy `{card['name']}`",
        "",
        f"- kind: {card['kind']}",
        f"- environment: `{card['env_id']}` (grid {card['grid']} cells per side, step budget {card['max_episode_steps']})",
        f"- training cohort: `{card['cohort']}`; segmenter: `{card['segmenter']}`",
        "- sees: "
        + (
            f"the image, its mask and prompts, and the intent of a `{card['perception']}` "
            "(that profile's perception step: its eye, the policy's hand)"
            if card.get("perception")
            else "the image, its mask and prompts (no intent: it must find the nodule itself)"
        ),
        f"- reward: {card['reward']}",
        *_network_lines(card),
        f"- PPO steps: {card['steps']}; seed: {card['seeds'].get('train')}",
        f"- training wall time: {tr.get('wall_s')} s on {tr.get('cores')} cores "
        f"(demonstrations {tr.get('demos_s', 0)} s, behaviour cloning {tr.get('bc_s', 0)} s, PPO {tr.get('ppo_s', 0)} s; "
        f"{tr.get('n_envs')} envs, {tr.get('vec')})",
    ]
    if demo:
        lines.append(
            f"- demonstrations: {demo.get('kept')} of {demo.get('episodes')} episodes of "
            f"`{demo.get('annotator')}` ({demo.get('samples')} steps), cut at their best mask: person Dice "
            f"{_fmt(demo.get('person_dice_mean'))} in {_fmt(demo.get('person_seconds_mean'))} s -> "
            f"{_fmt(demo.get('cut_dice_mean'))} in {_fmt(demo.get('cut_seconds_mean'))} s"
            + (f"; collecting them took {demo['wall_s']} s" if demo.get("wall_s") else "")
            + (f"; loaded from `{demo['loaded_from']}`" if demo.get("loaded_from") else "")
        )
    last = tr.get("last_rollout")
    if last:
        lines.append(
            f"- last PPO rollouts (training cohort, sampled actions): Dice {_fmt(last['dice'])}, "
            f"{_fmt(last['seconds'])} s, return {_fmt(last['return'])}"
        )
    lines += ["", "## Evaluation", ""]
    evs = evaluations(card)
    if not evs:
        lines.append(f"Not evaluated yet: run `hiseg-sim eval-policy {card['name']}` (experiments/policy_eval.toml).")
    for i, ev in enumerate(evs):
        if i:
            lines.append("")
        lines += _evaluation_lines(ev, heading=len(evs) > 1)
    if card.get("notes"):
        lines += ["", "## Notes", "", card["notes"]]
    return "\n".join(lines) + "\n"


def _evaluation_lines(ev: dict, heading: bool) -> list[str]:
    when = f", {ev['evaluated']}" if ev.get("evaluated") else ""
    lines = [f"### `{ev.get('study')}`", ""] if heading else []
    lines.append(
        f"Study `{ev.get('study')}` on cohort `{ev.get('cohort')}` ({ev.get('episodes')} episodes{when}); "
        f"95 % intervals are cluster bootstraps over cases, paired on (case, replicate)."
    )
    lines.append("")
    lines.append("| arm | episodes | Dice | 95 % CI | seconds | 95 % CI |")
    lines.append("|---|---|---|---|---|---|")
    for r in ev.get("arms", []):
        lines.append(
            f"| {r['annotator']} | {r['n']} | {r['dice']:.3f} | {r['dice_lo']:.3f}–{r['dice_hi']:.3f} | "
            f"{r['seconds']:.1f} | {r['seconds_lo']:.1f}–{r['seconds_hi']:.1f} |"
        )
    t_star = ev.get("t_star")
    if ev.get("paired"):
        lines += [
            "",
            f"Paired differences (policy − arm); `dice@t*` is the Dice at t* = {t_star:.1f} s, the "
            "policy's median episode time, read from each episode's Dice-vs-time step function:",
            "",
            "| arm | measure | difference | 95 % CI | pairs |",
            "|---|---|---|---|---|",
        ]
        for p in ev["paired"]:
            lines.append(
                f"| {p['b']} | {p['measure']} | {p['diff']:+.3f} | {p['lo']:+.3f} – {p['hi']:+.3f} | {p['n_pairs']} |"
            )
    if ev.get("plot"):
        lines += ["", f"Plot: `{ev['plot']}`"]
    return lines


def evaluations(card: dict) -> list[dict]:
    """Every evaluation a card holds, one per study, in the order they were first run.

    ``evaluations`` maps study name to its latest result; a card written before there could be more
    than one holds its single result under ``evaluation``."""
    evs = card.get("evaluations")
    if isinstance(evs, dict) and evs:
        return [ev for ev in evs.values() if isinstance(ev, dict)]
    ev = card.get("evaluation")
    return [ev] if isinstance(ev, dict) and ev else []


def _network_lines(card: dict) -> list[str]:
    arch, w = card.get("architecture"), card.get("weights")
    if not arch or not w:
        return []
    scr, st = arch["observation_space"]["screen"]["shape"], arch["observation_space"]["state"]["shape"]
    kw = ", ".join(f"{k}={v}" for k, v in arch["features_extractor_kwargs"].items())
    network = (
        f"- network: `{arch['policy_class']}` over `{arch['features_extractor']}({kw})`, heads "
        f"{arch['net_arch']}, on a {'x'.join(map(str, scr))} screen and {st[0]} state values; actions "
        f"MultiDiscrete {arch['action_space']['nvec']}"
    )
    weights = (
        f"- weights: `{w['file']}` ({w['parameters']} parameters, {w['tensors']} state-dict entries; "
        f"sha256 {w['sha256']})"
    )
    return [network, weights]


def read_card(policy_dir: str | Path) -> dict:
    """The JSON card of a policy directory (a one-line error when it is not a JSON object)."""
    path = Path(policy_dir) / CARD_JSON
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{path}: not a readable JSON model card ({exc}); restore it from the policy's source"
        ) from exc
    if not isinstance(card, dict):
        raise ValueError(f"{path}: the model card must be a JSON object; got {type(card).__name__}")
    return card


def write_card(out_dir: str | Path, card: dict) -> None:
    out = Path(out_dir)
    (out / CARD_JSON).write_text(json.dumps(card, indent=1, default=str) + "\n")
    (out / CARD_MD).write_text(card_markdown(card))


def add_evaluation(policy_dir: str | Path, evaluation: dict) -> dict:
    """Put ``evaluation`` into a saved policy's card (both files), beside the other studies' results;
    returns the card. A study evaluated again replaces its own earlier result only. ``evaluation``
    stays the latest one, for readers of a single result."""
    import datetime as dt

    d = Path(policy_dir)
    card = read_card(d)
    evaluation = {**evaluation, "evaluated": dt.date.today().isoformat()}
    evs = {str(ev.get("study")): ev for ev in evaluations(card)}
    evs[str(evaluation.get("study"))] = evaluation
    card["evaluations"] = evs
    card["evaluation"] = evaluation
    write_card(d, card)
    return card


def plot_training_curve(curve: list[dict], path: str | Path, title: str = "", demonstrator: str | None = None) -> Path:
    """Behaviour cloning (loss, held-out kind accuracy and corner error per epoch; from
    ``demonstrator``'s traces) and PPO (episode Dice, simulated seconds and return per rollout,
    means over the last 32 episodes); a phase that did not run gets no panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bc = [r for r in curve if r["phase"] == "bc"]
    ppo = [r for r in curve if r["phase"] == "ppo"]
    n = int(bool(bc)) + int(bool(ppo)) or 1
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n + 0.5, 4), squeeze=False)
    axes = list(axes[0])
    ax = axes[0]
    if bc:
        ep = [r["epoch"] for r in bc]
        ax.plot(ep, [r["nll"] for r in bc], label="train NLL (kind + used coords)", color="tab:blue")
        ax.set_xlabel("behaviour-cloning epoch")
        ax.set_ylabel("negative log-likelihood")
        ax2 = ax.twinx()
        ax2.plot(ep, [r["val_kind_acc"] for r in bc], color="tab:green", label="held-out kind accuracy")
        ax2.plot(
            ep,
            [r["val_box_err_cells"] / 10 for r in bc],
            color="tab:red",
            ls="--",
            label="held-out box corner error (cells / 10)",
        )
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("accuracy / error")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper right")
        ax.set_title(f"behaviour cloning from {demonstrator or 'demonstration'} traces", fontsize=10)
    elif not ppo:
        ax.text(0.5, 0.5, "no training steps", ha="center", va="center", transform=ax.transAxes)
    ax = axes[-1]
    if ppo:
        x = [r["timesteps"] for r in ppo]
        ax.plot(x, [r["dice"] for r in ppo], label="episode Dice", color="tab:blue")
        ax.plot(x, [r["return"] for r in ppo], label="episode return (Dice − price × s)", color="tab:purple")
        ax.set_ylim(0, 1)
        ax.set_xlabel("PPO environment steps")
        ax.set_ylabel("Dice / return")
        ax2 = ax.twinx()
        ax2.plot(x, [r["seconds"] for r in ppo], color="tab:orange", ls="--", label="simulated seconds")
        ax2.set_ylabel("simulated seconds per episode")
        ax2.set_ylim(bottom=0)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower right")
        ax.set_title("PPO fine-tuning (training cohort, sampled actions)", fontsize=10)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
