"""Run any annotator in the nodule environments: one episode, or a sweep like SB3's ``evaluate_policy``.

The harness is the only place on a simulated person's side where the ground truth is read, and
it reads it for one thing: the *perception step*. Before the episode, the case's ground truth in
the viewport goes through the person's perception model
(:func:`hiseg_sim.annotators.behaviour.perception.intended_mask` with their
:class:`~hiseg_sim.annotators.behaviour.perception.PerceptionParams`) and comes out as their intent, their
own noisy idea of the nodule. The annotator receives :class:`~hiseg_sim.annotators.base.Knowledge`
(image, pixel size, intent; no ground truth). Only an annotator that declares
``reads_ground_truth = True`` (a click robot) receives
:class:`~hiseg_sim.annotators.base.RobotKnowledge`, which adds ``gt``.

Seeds: ``seed`` fixes everything. The env is reset with it; the perception draw and the
annotator's own generator come from ``numpy.random.SeedSequence([seed, crc32(case_id), ...])``, so
the same ``(case, seed)`` gives the same trace whatever ran before, while the annotator's memory
(learning across cases) is the only thing that carries from one episode to the next.

Episode records follow the trace schema of :mod:`hiseg_sim.env.trace` (the keys
:class:`~hiseg_sim.env.wrappers.TraceRecorder` writes, plus ``iou``), with ``perceived_quality``
filled in from the annotator (how good the mask in that step's observation looked to it).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from hiseg_sim.annotators.base import Annotator, Feedback, Knowledge, RobotKnowledge
from hiseg_sim.annotators.behaviour.difficulty import case_error_params, case_log_difficulty
from hiseg_sim.annotators.behaviour.perception import case_difficulty, intended_mask
from hiseg_sim.env.actions import coerce_action
from hiseg_sim.env.trace import step_record
from hiseg_sim.env.viewport import AIR_HU, crop2d
from hiseg_sim.metrics import dice as _dice
from hiseg_sim.seeding import episode_streams, person_episode_seed

__all__ = ["DICE_LEVELS", "EpisodeResult", "evaluate", "make_env", "make_knowledge", "run_episode"]

#: Dice levels of ``summary["time_to_dice"]``.
DICE_LEVELS = (0.7, 0.8, 0.85, 0.9)


@dataclass
class EpisodeResult:
    """One episode: ``trace`` (one dict per action) and ``summary`` (one dict).

    ``summary`` keys: ``case_id``, ``annotator``, ``seed``, ``final_dice``, ``final_iou``,
    ``n_actions``, ``n_prompts``, ``seconds_total``, ``accepted`` (ended by Accept),
    ``gave_up`` (accepted because patience or time ran out), ``truncated`` (the env's step limit),
    ``dice_after_k`` (Dice after each action), ``seconds_after_k``, ``time_to_dice`` (dict:
    Dice level -> seconds when first reached, None if never), ``intent_dice`` (Dice of the
    annotator's intent against the ground truth in the viewport; None without intent),
    ``perceived_quality`` (last), ``opening`` and ``prompt_types`` (behaviour models), ``env``.
    """

    trace: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def _viewport_hu(u) -> np.ndarray:
    """The viewport slab in HU, ``(n_slices, S, S)`` (as the env shows it, padded with air)."""
    vp, case, S = u.viewport, u.case, u.size
    return np.stack([crop2d(case.volume_hu[vp.z0 + i], vp.y0, vp.x0, S, fill=AIR_HU) for i in range(vp.n_slices)])


def make_knowledge(
    env: gym.Env, annotator: Any, rng: np.random.Generator | None = None, intent: np.ndarray | None = None
) -> Knowledge:
    """What ``annotator`` may know of the case the env was just reset on.

    The perception step: when the annotator has ``perception_params()`` (a behaviour model), its
    intent is drawn from the ground truth in the viewport with those parameters and ``rng``;
    the case's difficulty is shared by everyone on the case (keyed by its id). ``intent`` given
    (``bool``, the viewport's shape: ``(S, S)`` in 2-D, ``(n_slices, S, S)`` in 3-D) replaces the
    perception step: a recorded person's outline, or a test's. Click robots
    (``reads_ground_truth``) get :class:`RobotKnowledge` with the ground truth.
    """
    u = env.unwrapped
    three_d = bool(u.three_d)
    image = _viewport_hu(u)
    sp = tuple(float(s) for s in u.case.spacing_zyx)
    spacing = sp if three_d else sp[1:]
    ref = u.scoring_reference()  # the perception step / robots only
    gt = ref if three_d else ref[0]
    start = u.current_slice
    params = annotator.perception_params()
    if intent is not None:
        intent = np.array(intent, bool)
        if intent.shape != np.shape(gt):
            raise ValueError(f"intent has shape {intent.shape}; the viewport's is {np.shape(gt)}")
    elif params is not None:
        if rng is None:
            raise ValueError("the perception step needs an rng")
        img = image if three_d else image[0]
        intent = intended_mask(
            gt,
            spacing,
            case_error_params(params, u.case),  # semantic errors as likely as this nodule's features make them
            rng,
            image_hu=img,
            difficulty_z=case_difficulty(key=u.case.case_id),
            difficulty_log=case_log_difficulty(u.case.meta),  # 0 until a difficulty model is saved
        )
    kw = dict(
        case_id=u.case.case_id,
        image_hu=image if three_d else image[0],
        spacing_mm=spacing,
        intent=intent,
        three_d=three_d,
        start_slice=start,
        extra={"viewport": u.viewport.to_dict()},
    )
    if annotator.reads_ground_truth:
        return RobotKnowledge(gt=np.array(gt, bool), **kw)
    return Knowledge(**kw)


def _time_to(levels: Sequence[float], dice: Sequence[float], seconds: Sequence[float]) -> dict:
    out = {}
    for lv in levels:
        hit = [s for d, s in zip(dice, seconds) if d >= lv]
        out[f"{lv:.2f}"] = float(hit[0]) if hit else None
    return out


def _find_case(u, case_id: str):
    for c in u.cases:
        if c.case_id == case_id:
            return c
    raise ValueError(f"case {case_id!r} is not among the env's {len(u.cases)} case(s)")


def run_episode(
    env: gym.Env,
    annotator: Annotator,
    *,
    case_id: str,
    seed: int,
    feedback: bool = False,
    options: dict | None = None,
    intent: np.ndarray | None = None,
) -> EpisodeResult:
    """Run ``annotator`` on ``case_id`` until it accepts or the env truncates.

    Args:
        env: a NoduleSeg env (``gym.make`` output, wrappers allowed; a ``TraceRecorder`` in the
            stack gets the perceived quality of each step).
        annotator: an :class:`~hiseg_sim.annotators.base.Annotator` (its hooks say what it
            needs: ``perception_params()`` for the perception step, ``time_model_for`` for its
            group's time model, passed to the env as ``options["time_model"]``).
        case_id: the case to reset on.
        seed: fixes the env's draws, the perception draw and the annotator's generator.
        feedback: pass :class:`Feedback` with the scored Dice and seconds to ``end_case``
            (a teacher showing the score); else ``end_case(None)``.
        options: more reset options (e.g. ``viewport``, ``start_slice``).
        intent: the annotator's intent given explicitly (skips the perception step; see
            :func:`make_knowledge`).

    Returns:
        :class:`EpisodeResult`.
    """
    u = env.unwrapped
    opts = dict(options or {})
    opts["case_id"] = case_id
    if not isinstance(annotator, Annotator):
        raise TypeError(
            f"{type(annotator).__name__} is not an annotator: subclass "
            "hiseg_sim.annotators.base.Annotator and implement act(obs, info)"
        )
    if "time_model" not in opts:
        case = _find_case(u, case_id)
        tm = annotator.time_model_for(tuple(case.spacing_zyx[1:]), u.time_model)
        if tm is not None:
            opts["time_model"] = tm
    obs, info = env.reset(seed=int(seed), options=opts)
    rng_perc, rng_agent = episode_streams(seed, case_id)
    knowledge = make_knowledge(env, annotator, rng_perc, intent=intent)
    annotator.begin_case(knowledge, rng_agent)
    set_q: Callable | None = None
    try:
        set_q = env.get_wrapper_attr("set_perceived_quality")
    except AttributeError:
        set_q = None
    ctx = {
        "env": u.env_id,
        "case": info["case_id"],
        "annotator": annotator.name,
        "seed": int(seed),
        "viewport": info["viewport"],
        "start_slice": int(info["viewport"]["z0"]) + int(info.get("slice", 0)),
    }
    trace: list[dict] = []
    terminated = truncated = False
    while not (terminated or truncated):
        action = annotator.act(obs, info)
        q = annotator.perceived_quality
        if trace:
            trace[-1]["perceived_quality"] = None if q is None else float(q)
            if set_q is not None and q is not None:
                set_q(q)
        typed = coerce_action(action, u.action_space)
        obs, reward, terminated, truncated, info = env.step(action)
        rec = step_record(ctx, len(trace) + 1, typed, u.last_prompt, reward, terminated, truncated, info, with_iou=True)
        trace.append(rec)
    if trace and trace[-1]["action"]["kind"] == "accept":
        q = annotator.perceived_quality
        trace[-1]["perceived_quality"] = None if q is None else float(q)
    dice_k = [r["dice"] for r in trace]
    sec_k = [r["seconds_total"] for r in trace]
    extra = dict(annotator.episode_info())
    ref = u.scoring_reference()
    gt = ref if knowledge.three_d else ref[0]
    summary = {
        "env": u.env_id,
        "case_id": case_id,
        "annotator": annotator.name,
        "seed": int(seed),
        "final_dice": float(info["dice"]),
        "final_iou": float(info["iou"]),
        "n_actions": len(trace),
        "n_prompts": int(info["n_prompts"]),
        "seconds_total": float(info["seconds_total"]),
        "accepted": bool(terminated),
        "gave_up": bool(extra.pop("gave_up", False)),
        "truncated": bool(truncated),
        "dice_after_k": dice_k,
        "seconds_after_k": sec_k,
        "time_to_dice": _time_to(DICE_LEVELS, dice_k, sec_k),
        "intent_dice": None if knowledge.intent is None else _dice(np.asarray(knowledge.intent, bool), gt),
        "perceived_quality": annotator.perceived_quality,
    }
    summary.update(extra)
    fb = Feedback(dice=float(info["dice"]), seconds=float(info["seconds_total"])) if feedback else None
    annotator.end_case(fb)
    return EpisodeResult(trace=trace, summary=summary)


def make_env(env_id: str = "hiseg_sim/NoduleSeg2D-v0", **kwargs) -> gym.Env:
    """``gym.make(env_id, **kwargs)`` after registering the ids."""
    import hiseg_sim  # noqa: F401  (registers the ids)

    return gym.make(env_id, **kwargs)


def evaluate(
    annotator: Annotator,
    env_or_id: gym.Env | str,
    cases: Iterable,
    seeds: Sequence[int] = (0,),
    feedback: bool = False,
    progress: bool = False,
    fresh_per_seed: bool = True,
    env_kwargs: dict | None = None,
) -> list[EpisodeResult]:
    """Run ``annotator`` over ``cases`` for each seed, like SB3's ``evaluate_policy``; any Annotator.

    Args:
        annotator: the annotator (kept as given; with ``fresh_per_seed`` each seed runs on a deep
            copy, a new person who goes through the cases in order and learns as they go).
        env_or_id: an env, or an env id made with ``env_kwargs`` (``cases=`` defaults to the
            case objects given, when they are :class:`~hiseg_sim.data.case.Case`).
        cases: case ids, or :class:`~hiseg_sim.data.case.Case` objects.
        seeds: one pass over the cases per seed; the episode of case ``c`` for seed ``s`` uses
            :func:`hiseg_sim.seeding.person_episode_seed` ``(s, c)`` (independent of the order, so every group meets the same
            viewports and the embedding cache serves them all).
        feedback: give the scored Dice back after each case (:class:`Feedback`).
        progress: print one line per episode.
        fresh_per_seed: a new copy of the annotator per seed (else one annotator learns across all).
    """
    cases = list(cases)
    ids = [c if isinstance(c, str) else c.case_id for c in cases]
    own = isinstance(env_or_id, str)
    if own:
        kw = dict(env_kwargs or {})
        if "cases" not in kw and cases and not isinstance(cases[0], str):
            kw["cases"] = cases
        env = make_env(env_or_id, **kw)
    else:
        env = env_or_id
    out: list[EpisodeResult] = []
    try:
        for s in seeds:
            agent = copy.deepcopy(annotator) if fresh_per_seed else annotator
            for i, cid in enumerate(ids):
                res = run_episode(env, agent, case_id=cid, seed=person_episode_seed(s, cid), feedback=feedback)
                res.summary["person_seed"] = int(s)
                res.summary["order"] = i
                out.append(res)
                if progress:
                    sm = res.summary
                    print(
                        f"[{annotator.name}] seed {s} {i + 1}/{len(ids)} {cid}: dice {sm['final_dice']:.3f} "
                        f"{sm['seconds_total']:.1f}s {sm['n_actions']} actions",
                        flush=True,
                    )
    finally:
        if own:
            env.close()
    return out
