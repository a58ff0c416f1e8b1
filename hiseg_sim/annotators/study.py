"""Studies of the annotator models, callable from Python: the group table, learning curves, RITM NoC.

>>> # from hiseg_sim.data.cohort import load_cohort
>>> # rows = group_table(load_cohort("default"), ["expert_radiologist", "non_medical"], seeds=(0, 1))

Each function builds one environment (one segmenter, one embedding cache) and runs annotators
through :func:`hiseg_sim.annotators.harness.run_episode`. A *person* is one seed: a fresh copy of
the annotator that goes through the cases in an order drawn from that seed and learns as it goes,
as a real annotator working through a batch does. The episode seed of a case depends only on the
person's seed and the case (:func:`~hiseg_sim.annotators.harness.episode_seed`), so every group
meets the same viewports and the embedding cache serves them all.
"""

from __future__ import annotations

import copy
from typing import Iterable, Sequence

import numpy as np

from hiseg_sim.annotators.harness import EpisodeResult, episode_seed, make_env, run_episode
from hiseg_sim.annotators.registry import build_annotator

__all__ = ["group_table", "latin_orders", "learning_curves", "plot_learning_curves", "ritm_noc", "summarise", "format_table"]

ENV_2D = "hiseg_sim/NoduleSeg2D-v0"


def _env(cases, env_id: str, segmenter, cache_dir, env_kwargs: dict | None, max_episode_steps: int | None = None):
    kw = dict(env_kwargs or {})
    kw.setdefault("segmenter", segmenter)
    if cache_dir is not None:
        kw.setdefault("cache_dir", cache_dir)
    if cases and not isinstance(cases[0], str):
        kw.setdefault("cases", list(cases))
    if max_episode_steps is not None:
        kw["max_episode_steps"] = max_episode_steps
    return make_env(env_id, **kw)


def _ids(cases) -> list[str]:
    return [c if isinstance(c, str) else c.case_id for c in cases]


def _order(ids: Sequence[str], seed: int, n: int | None = None) -> list[str]:
    """The cases in the order person ``seed`` meets them (cycling through reshuffles when ``n`` is longer)."""
    rng = np.random.default_rng([int(seed), 0x0DE7])
    n = len(ids) if n is None else int(n)
    out: list[str] = []
    while len(out) < n:
        out.extend(ids[i] for i in rng.permutation(len(ids)))
    return out[:n]


def _build(name_or_annotator):
    return build_annotator(name_or_annotator) if isinstance(name_or_annotator, str) else copy.deepcopy(name_or_annotator)


def summarise(results: Sequence[EpisodeResult]) -> dict:
    """One row of the group table from a group's episodes."""
    s = [r.summary for r in results]
    dice = np.array([x["final_dice"] for x in s])
    sec = np.array([x["seconds_total"] for x in s])
    intent = [x["intent_dice"] for x in s if x.get("intent_dice") is not None]
    openings = [x.get("opening") for x in s if x.get("opening")]
    return {
        "annotator": s[0]["annotator"] if s else "",
        "n": len(s),
        "dice_mean": float(dice.mean()),
        "dice_sd": float(dice.std(ddof=1)) if len(s) > 1 else 0.0,
        "dice_median": float(np.median(dice)),
        "seconds_mean": float(sec.mean()),
        "seconds_sd": float(sec.std(ddof=1)) if len(s) > 1 else 0.0,
        "prompts_mean": float(np.mean([x["n_prompts"] for x in s])),
        "actions_mean": float(np.mean([x["n_actions"] for x in s])),
        "accepted": float(np.mean([x["accepted"] for x in s])),
        "gave_up": float(np.mean([x["gave_up"] for x in s])),
        "intent_dice_mean": float(np.mean(intent)) if intent else None,
        "box_opening": float(np.mean([o in ("box", "box_point") for o in openings])) if openings else None,
    }


def group_table(cases: Iterable, profiles: Sequence, seeds: Sequence[int] = (0, 1, 2), *, env_id: str = ENV_2D,
                segmenter="litemedsam", cache_dir: str | None = None, feedback: bool = False,
                env_kwargs: dict | None = None, progress: bool = False,
                results: dict | None = None) -> list[dict]:
    """Dice, time and prompts per annotator group (profiles and robots alike).

    Args:
        cases: :class:`~hiseg_sim.data.case.Case` objects (or ids of cases the env loads itself).
        profiles: annotator names (profiles or robots) or Annotator objects.
        seeds: one simulated person per seed, working through all cases in a seed-drawn order.
        env_id, segmenter, cache_dir, env_kwargs: the environment.
        feedback: a teacher shows the Dice after each case (default: no).
        progress: print one line per group.
        results: if a dict is given, the EpisodeResults of each group are stored in it by name.

    Returns:
        One dict per group (:func:`summarise`): ``annotator``, ``n``, ``dice_mean``, ``dice_sd``,
        ``dice_median``, ``seconds_mean``, ``seconds_sd``, ``prompts_mean``, ``actions_mean``,
        ``accepted``, ``gave_up``, ``intent_dice_mean``, ``box_opening``.
    """
    cases = list(cases)
    ids = _ids(cases)
    env = _env(cases, env_id, segmenter, cache_dir, env_kwargs)
    rows = []
    try:
        for prof in profiles:
            proto = _build(prof)
            episodes: list[EpisodeResult] = []
            for s in seeds:
                person = copy.deepcopy(proto)
                for i, cid in enumerate(_order(ids, s)):
                    r = run_episode(env, person, case_id=cid, seed=episode_seed(s, cid), feedback=feedback)
                    r.summary.update(person_seed=int(s), order=i)
                    episodes.append(r)
            row = summarise(episodes)
            rows.append(row)
            if results is not None:
                results[row["annotator"]] = episodes
            if progress:
                print(format_table([row], header=False), flush=True)
    finally:
        env.close()
    return rows


def format_table(rows: Sequence[dict], header: bool = True) -> str:
    """The group table as aligned text."""
    lines = []
    if header:
        lines.append(f"{'annotator':24s} {'n':>4s} {'Dice mean ± sd':>16s} {'median':>7s} {'seconds':>14s} "
                     f"{'prompts':>7s} {'actions':>7s} {'intent':>6s} {'box 1st':>7s} {'gave up':>7s}")
    for r in rows:
        intent = "" if r.get("intent_dice_mean") is None else f"{r['intent_dice_mean']:.3f}"
        box = "" if r.get("box_opening") is None else f"{r['box_opening']:.2f}"
        lines.append(f"{r['annotator']:24s} {r['n']:4d} {r['dice_mean']:8.3f} ± {r['dice_sd']:.3f} "
                     f"{r['dice_median']:7.3f} {r['seconds_mean']:6.1f} ± {r['seconds_sd']:5.1f} "
                     f"{r['prompts_mean']:7.2f} {r['actions_mean']:7.2f} {intent:>6s} {box:>7s} {r['gave_up']:7.2f}")
    return "\n".join(lines)


def latin_orders(ids: Sequence[str], n_persons: int, n_cases: int, seed: int = 0) -> list[list[str]]:
    """Counterbalanced case sequences: ``n_cases`` cases drawn once (with ``seed``), and person ``p``
    meets them rotated by ``p`` (a Latin square: with ``n_persons`` a multiple of ``n_cases``, every
    case appears equally often at every position, so how hard the cases are cannot masquerade as
    learning)."""
    rng = np.random.default_rng([int(seed), 0x1A71])
    if n_cases > len(ids):
        raise ValueError(f"n_cases = {n_cases} but only {len(ids)} cases")
    base = [ids[i] for i in rng.permutation(len(ids))[:n_cases]]
    return [[base[(p + i) % n_cases] for i in range(n_cases)] for p in range(int(n_persons))]


def learning_curves(profiles: Sequence, cases: Iterable, n_cases: int = 20, seeds: Sequence[int] = tuple(range(20)),
                    *, feedback: bool = True, design: str = "latin", env_id: str = ENV_2D, segmenter="litemedsam",
                    cache_dir: str | None = None, env_kwargs: dict | None = None, progress: bool = False) -> dict:
    """Each group's Dice, time and prompt choices over a sequence of cases (trial and error).

    For each group and seed, a fresh person annotates ``n_cases`` cases with a teacher's feedback
    after each (``feedback=True``). ``design="latin"`` (default): the persons' sequences are
    rotations of one draw of ``n_cases`` cases (:func:`latin_orders`; use as many seeds as cases,
    or a multiple, for full balance); ``"random"``: each person meets the cases in its own
    seed-drawn order. Every group meets the same sequences, so groups can be compared case by case.

    Returns:
        ``{"n_cases", "seeds", "feedback", "profiles": {name: {"dice", "seconds", "actions",
        "box_opening", "value_box", "value_point"}}}``; each entry a list (one per seed) of
        lists (one per case position). ``value_*`` are the person's values before the case.
    """
    cases = list(cases)
    ids = _ids(cases)
    env = _env(cases, env_id, segmenter, cache_dir, env_kwargs)
    if design not in ("latin", "random"):
        raise ValueError(f"design must be 'latin' or 'random'; got {design!r}")
    seeds = [int(s) for s in seeds]
    if design == "latin":
        orders = dict(zip(seeds, latin_orders(ids, len(seeds), n_cases)))
    else:
        orders = {s: _order(ids, s, n_cases) for s in seeds}
    out: dict = {"n_cases": int(n_cases), "seeds": seeds, "feedback": bool(feedback), "design": design,
                 "orders": orders, "profiles": {}}
    try:
        for prof in profiles:
            proto = _build(prof)
            rec = {k: [] for k in ("dice", "seconds", "actions", "box_opening", "value_box", "value_point")}
            for s in seeds:
                person = copy.deepcopy(proto)
                row = {k: [] for k in rec}
                for cid in orders[s]:
                    r = run_episode(env, person, case_id=cid, seed=episode_seed(s, cid), feedback=feedback)
                    sm = r.summary
                    row["dice"].append(sm["final_dice"])
                    row["seconds"].append(sm["seconds_total"])
                    row["actions"].append(sm["n_actions"])
                    row["box_opening"].append(float(sm.get("opening") in ("box", "box_point")))
                    vb = sm.get("values_before") or {}
                    row["value_box"].append(vb.get("box"))
                    row["value_point"].append(vb.get("point"))
                for k in rec:
                    rec[k].append(row[k])
                if progress:
                    print(f"[{proto.name}] person {s}: dice {np.mean(row['dice']):.3f}, "
                          f"first 5 {np.mean(row['dice'][:5]):.3f}, last 5 {np.mean(row['dice'][-5:]):.3f}", flush=True)
            out["profiles"][proto.name] = rec
    finally:
        env.close()
    return out


def _running(x: np.ndarray, w: int) -> np.ndarray:
    if w <= 1:
        return x
    k = np.ones(w) / w
    pad = np.pad(x, (w // 2, w - 1 - w // 2), mode="edge")
    return np.convolve(pad, k, mode="valid")


def plot_learning_curves(result: dict, path, smooth: int = 3, title: str | None = None,
                         reference: str | None = "expert_radiologist") -> str:
    """Plot :func:`learning_curves` output to ``path`` (PNG), six panels over the case sequence:
    Dice, seconds, actions, share of box openings, the person's value of a box minus a click, and
    (when ``reference`` is among the groups) each group's Dice minus the reference group's Dice on
    the same case (each person seed meets the same cases in the same order in every group, so this
    takes out how hard each case is).

    Lines are the mean over persons (seeds) at each case position, smoothed by a running mean of
    ``smooth`` cases; bands are ± one standard error over persons.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    profiles = result["profiles"]
    ref = profiles.get(reference) if reference else None
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5), constrained_layout=True)
    panels = [("dice", "Dice against ground truth", axes[0, 0]),
              ("seconds", "Seconds per nodule", axes[0, 1]),
              ("actions", "Actions per nodule", axes[0, 2]),
              ("box_opening", "Share of cases opened with a box", axes[1, 0]),
              ("value_gap", "The person's value of a box minus a click", axes[1, 1]),
              ("ref_gap", f"Dice minus {reference}'s on the same case" if ref else "", axes[1, 2])]
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, (name, rec) in enumerate(profiles.items()):
        c = colours[j % len(colours)]
        for key, label, ax in panels:
            if key == "value_gap":
                arr = np.array(rec["value_box"], float) - np.array(rec["value_point"], float)
            elif key == "ref_gap":
                if ref is None:
                    ax.axis("off")
                    continue
                arr = np.array(rec["dice"], float) - np.array(ref["dice"], float)
            else:
                arr = np.array(rec[key], float)
            x = np.arange(1, arr.shape[1] + 1)
            m = _running(np.nanmean(arr, axis=0), smooth)
            se = _running(np.nanstd(arr, axis=0, ddof=1) / np.sqrt(arr.shape[0]), smooth) if arr.shape[0] > 1 else 0 * m
            ax.plot(x, m, color=c, lw=2, label=name)
            ax.fill_between(x, m - se, m + se, color=c, alpha=0.15)
            ax.set_title(label)
            ax.set_xlabel("case number in the sequence")
            ax.grid(alpha=0.3)
    for ax in (axes[1, 1], axes[1, 2]):
        ax.axhline(0, color="k", lw=0.8)
    axes[1, 0].set_ylim(-0.05, 1.05)
    axes[0, 0].legend(loc="lower right")
    fb = "with" if result.get("feedback") else "without"
    how = ("the same cases, rotated per person (Latin square)" if result.get("design") == "latin"
           else "each person in its own order")
    fig.suptitle(title or f"Trial and error over {result['n_cases']} cases, {fb} the teacher's Dice after each case: "
                 f"{len(result['seeds'])} simulated persons per group, {how}; running mean of {smooth}, band ± 1 SE")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def ritm_noc(cases: Iterable, seeds: Sequence[int] = (0,), thresholds=(0.85, 0.90), *, env_id: str = ENV_2D,
             segmenter="litemedsam", cache_dir: str | None = None, env_kwargs: dict | None = None,
             max_clicks: int = 20, initial_box: bool = False) -> dict:
    """RITM's NoC@85/NoC@90 in the env: the RITM robot clicks until IoU 0.90 or 20 clicks.

    The IoU after each click is the env's (against the ground truth of the whole key slice).
    With ``initial_box`` the robot first gives the ground-truth box (not counted as a click; a
    case whose box alone reaches a threshold has NoC 0 there), as box-first protocols do.

    Returns ``{"noc": {0.85: {"noc", "over_max"}, 0.9: {...}}, "n", "per_case": [{case_id, seed,
    ious, box_iou}], "final_iou_mean", "iou_after": {1: .., 5: .., 10: .., 20: ..}}`` (mean IoU
    after k clicks; an episode that stopped earlier keeps its last IoU).
    """
    from hiseg_sim.annotators.robots import noc

    cases = list(cases)
    ids = _ids(cases)
    env = _env(cases, env_id, segmenter, cache_dir, env_kwargs, max_episode_steps=max_clicks + 2)
    per_case = []
    try:
        for s in seeds:
            for cid in ids:
                agent = build_annotator("robot_ritm", target_iou=max(thresholds), max_clicks=max_clicks,
                                        initial_box=initial_box)
                r = run_episode(env, agent, case_id=cid, seed=episode_seed(s, cid))
                ious = [t["iou"] for t in r.trace if t["action"]["kind"] == "point"]
                box_iou = r.trace[0]["iou"] if initial_box else None
                per_case.append({"case_id": cid, "seed": int(s), "ious": ious, "box_iou": box_iou})
    finally:
        env.close()
    res: dict = {}
    for thr in thresholds:
        scores = np.array([0 if (p["box_iou"] is not None and p["box_iou"] >= thr) else noc(p["ious"], thr, max_clicks)
                           for p in per_case])
        res[float(thr)] = {"noc": float(scores.mean()), "over_max": int((scores == max_clicks).sum())}

    def after(k: int) -> float:
        vals = [(p["ious"][min(k, len(p["ious"])) - 1] if p["ious"] else (p["box_iou"] or 0.0)) for p in per_case]
        return float(np.mean(vals))

    return {"noc": res, "n": len(per_case), "per_case": per_case, "initial_box": bool(initial_box),
            "final_iou_mean": float(np.mean([p["ious"][-1] if p["ious"] else (p["box_iou"] or 0.0) for p in per_case])),
            "iou_after": {k: after(k) for k in (1, 5, 10, max_clicks)}}
