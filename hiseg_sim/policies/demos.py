"""Demonstrations for behaviour cloning: a simulated person's episodes, recorded as the policy sees them.

:func:`collect_demos` runs an annotator (by default the ``expert_radiologist`` profile) through
the environment with :func:`hiseg_sim.annotators.harness.run_episode` — the same perception step,
time model and seeds as in a study — and records, before each action, the observation as
:func:`~hiseg_sim.policies.spaces.observe` shows it and the action as a grid action
(:func:`~hiseg_sim.policies.spaces.action_from_env`).

Each episode is then cut at its best mask (:func:`best_prefix`): the person's actions up to the
first step with the episode's highest Dice, followed by ``Accept`` on the mask that step left.
That is hindsight relabelling on the training side only, with the score the env's reward is made
of: the policy never sees the ground truth, but it learns to stop where the person's work stopped
paying (with LiteMedSAM, corrective clicks after a good box often lower the Dice). Episodes whose
best Dice is under ``min_dice`` are left out. The return-to-go of every kept step (under the
training reward, time price included) is stored for the critic's warm start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import gymnasium as gym
import numpy as np

from hiseg_sim.env import actions as A
from hiseg_sim.policies.spaces import action_from_env, observe

__all__ = ["Demos", "best_prefix", "collect_demos"]

#: seconds charged for Accept when a cut demonstration appends one (M + K of the default time model)
ACCEPT_SECONDS = 1.55


@dataclass
class Demos:
    """Arrays of one step per row: ``screen`` ``(N, C, S, S)`` uint8, ``state`` ``(N, n)`` float32,
    ``action`` ``(N, 5)`` int64 grid actions, ``ret`` ``(N,)`` float32 return-to-go, ``episode``
    ``(N,)`` int64; ``stats`` summarises the episodes."""

    screen: np.ndarray
    state: np.ndarray
    action: np.ndarray
    ret: np.ndarray
    episode: np.ndarray
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.action.shape[0])

    def save(self, path: str | Path) -> None:
        import json

        np.savez_compressed(
            path,
            screen=self.screen,
            state=self.state,
            action=self.action,
            ret=self.ret,
            episode=self.episode,
            stats=json.dumps(self.stats),
        )

    @classmethod
    def load(cls, path: str | Path) -> Demos:
        import json

        z = np.load(path, allow_pickle=False)
        return cls(z["screen"], z["state"], z["action"], z["ret"], z["episode"], json.loads(str(z["stats"])))


class _Recorder(gym.Wrapper):
    """Keeps ``(observation before, typed action, Dice after, seconds)`` for every step."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.steps: list[tuple] = []
        self.last_obs = None

    def reset(self, *, seed=None, options=None):
        obs, info = self.env.reset(seed=seed, options=options)
        self.steps, self.last_obs = [], obs
        return obs, info

    def step(self, action):
        typed = A.coerce_action(action, self.env.unwrapped.action_space)
        before = self.last_obs
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps.append((before, typed, float(info["dice"]), float(info["seconds"])))
        self.last_obs = obs
        return obs, reward, terminated, truncated, info


def best_prefix(steps: list[tuple], final_obs: dict) -> tuple[list[tuple[dict, object]], float, float]:
    """Cut an episode at its best mask and end it with ``Accept`` (module docstring).

    Args:
        steps: ``(obs before, typed action, Dice after, seconds)`` per step.
        final_obs: the observation after the last step.

    Returns:
        ``(pairs, best_dice, seconds)``: ``(observation, action)`` pairs of the cut episode, its
        final Dice, and its simulated seconds (the appended Accept included).
    """
    if not steps:
        return [], 0.0, 0.0
    dice = np.array([s[2] for s in steps])
    k = int(np.argmax(dice))
    pairs = [(s[0], s[1]) for s in steps[: k + 1]]
    seconds = float(sum(s[3] for s in steps[: k + 1]))
    if isinstance(steps[k][1], A.Accept):  # the person accepted at their best: keep as is
        return pairs, float(dice[k]), seconds
    after = steps[k + 1][0] if k + 1 < len(steps) else final_obs
    pairs.append((after, A.Accept()))
    return pairs, float(dice[k]), seconds + ACCEPT_SECONDS


def collect_demos(
    env: gym.Env,
    annotator_name: str,
    case_ids: list[str],
    episodes: int,
    *,
    seed: int = 0,
    grid: int = 48,
    time_penalty: float = 0.0,
    min_dice: float = 0.5,
    progress: bool = False,
) -> Demos:
    """Run ``annotator_name`` for ``episodes`` episodes on ``env`` and return the cut demonstrations.

    Cases are taken in order, round after round; each round is a fresh person (a new annotator
    from the registry) and uses episode seeds :func:`~hiseg_sim.seeding.person_episode_seed`
    ``(seed + round, case)``, so the viewports differ between rounds. A progress bar shows on
    stderr (``progress=True`` prints one line per episode instead).
    """
    from hiseg_sim.annotators.harness import run_episode
    from hiseg_sim.annotators.registry import build_annotator
    from hiseg_sim.progress import progress_iter
    from hiseg_sim.seeding import person_episode_seed

    u = env.unwrapped
    size, three_d = int(u.size), bool(u.three_d)
    max_steps = int(env.spec.max_episode_steps) if env.spec is not None and env.spec.max_episode_steps else 20
    rec = _Recorder(env)
    screens, states, acts, rets, eps = [], [], [], [], []
    raw_dice, raw_sec, cut_dice, cut_sec, kept = [], [], [], [], 0
    agent = None
    t0 = time.perf_counter()
    for i in progress_iter(
        range(int(episodes)), desc=f"demonstrations ({annotator_name})", unit="episode", enabled=not progress
    ):
        rnd, cid = divmod(i, len(case_ids))
        if cid == 0 or agent is None:
            agent = build_annotator(annotator_name)
        case_id = case_ids[cid]
        res = run_episode(rec, agent, case_id=case_id, seed=person_episode_seed(seed + rnd, case_id))
        raw_dice.append(res.summary["final_dice"])
        raw_sec.append(res.summary["seconds_total"])
        pairs, best, secs = best_prefix(rec.steps, rec.last_obs)
        if progress:
            print(
                f"[demos] {i + 1}/{episodes} {case_id}: dice {res.summary['final_dice']:.3f} -> cut {best:.3f}, "
                f"{len(rec.steps)} -> {len(pairs)} actions",
                flush=True,
            )
        if best < min_dice or not pairs:
            continue
        kept += 1
        cut_dice.append(best)
        cut_sec.append(secs)
        # return-to-go under the training reward: Dice still to gain minus the price of the time left
        step_secs = [s[3] for s in rec.steps[: len(pairs)]]
        if len(step_secs) < len(pairs):
            step_secs.append(ACCEPT_SECONDS)
        dice_before = [0.0] + [s[2] for s in rec.steps[: len(pairs) - 1]]
        left = np.cumsum(step_secs[::-1])[::-1]
        for j, (obs, act) in enumerate(pairs):
            v = observe(obs, max_steps, three_d)
            screens.append(v["screen"])
            states.append(v["state"])
            acts.append(action_from_env(act, grid, size))
            rets.append(best - dice_before[j] - time_penalty * float(left[j]))
            eps.append(i)
    n_state = 8 if three_d else 5
    stats = {
        "annotator": annotator_name,
        "episodes": int(episodes),
        "kept": kept,
        "samples": len(acts),
        "min_dice": min_dice,
        "person_dice_mean": float(np.mean(raw_dice)) if raw_dice else None,
        "person_seconds_mean": float(np.mean(raw_sec)) if raw_sec else None,
        "cut_dice_mean": float(np.mean(cut_dice)) if cut_dice else None,
        "cut_seconds_mean": float(np.mean(cut_sec)) if cut_sec else None,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    if not acts:
        return Demos(
            np.zeros((0, 5, size, size), np.uint8),
            np.zeros((0, n_state), np.float32),
            np.zeros((0, 5), np.int64),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
            stats,
        )
    return Demos(
        np.stack(screens),
        np.stack(states).astype(np.float32),
        np.stack(acts),
        np.asarray(rets, np.float32),
        np.asarray(eps, np.int64),
        stats,
    )
