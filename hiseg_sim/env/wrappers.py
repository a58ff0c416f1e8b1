"""Wrappers: record the episode trace, and add episode statistics to ``info``.

Both keep the environment itself free of bookkeeping: statistics, time limits and observation
changes live in wrappers, as in Gymnasium.
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Any

import gymnasium as gym

from hiseg_sim.env.actions import coerce_action
from hiseg_sim.env.trace import step_record, write_trace

__all__ = ["EpisodeStatistics", "TraceRecorder"]


class TraceRecorder(gym.Wrapper):
    """Record one JSON object per action, in the schema of :mod:`hiseg_sim.env.trace`.

    Records are kept in :attr:`records` and, with ``path``, appended to a JSON-lines file at the
    next ``reset``, at :meth:`flush` and at ``close``. An annotator model states how good
    the mask looks to it with :meth:`set_perceived_quality` after the step (the env itself writes
    ``None``).

    Args:
        env: a NoduleSeg environment (wrapped or not).
        path: JSON-lines file to append to, or ``None`` to keep records in memory only.
        annotator: the name written in every record (a profile, a robot, ``"policy"``).
        keep_in_memory: keep every record in :attr:`records` (else only the unwritten ones).

    >>> # env = TraceRecorder(gym.make("hiseg_sim/NoduleSeg2D-v0", cases=cases), "runs/t.jsonl", "expert")
    """

    def __init__(
        self,
        env: gym.Env,
        path: str | os.PathLike | None = None,
        annotator: str = "policy",
        keep_in_memory: bool = True,
    ):
        super().__init__(env)
        self.path = path
        self.annotator = annotator
        self.keep_in_memory = keep_in_memory
        self.records: list[dict] = []
        self._pending: list[dict] = []
        self._episode = -1
        self._ctx: dict = {}
        self._step = 0

    def reset(self, *, seed=None, options=None):
        self.flush()
        obs, info = self.env.reset(seed=seed, options=options)
        self._episode += 1
        u: Any = self.env.unwrapped
        vp = info["viewport"]
        start = vp["z0"] + int(info.get("slice", 0))
        self._ctx = {
            "env": u.env_id,
            "case": info["case_id"],
            "annotator": self.annotator,
            "episode": self._episode,
            "seed": seed,
            "viewport": vp,
            "start_slice": start,
        }
        self._step = 0
        return obs, info

    def step(self, action):
        u: Any = self.env.unwrapped
        typed = coerce_action(action, u.action_space)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._step += 1
        rec = step_record(self._ctx, self._step, typed, u.last_prompt, float(reward), terminated, truncated, info)
        if self.keep_in_memory:
            self.records.append(rec)
        self._pending.append(rec)
        return obs, reward, terminated, truncated, info

    def set_perceived_quality(self, quality: float | None) -> None:
        """Set ``perceived_quality`` of the last record (call after ``step``, before the next ``reset``)."""
        if not self._pending:
            raise RuntimeError("no unwritten action record: call this after step() and before the next reset()")
        self._pending[-1]["perceived_quality"] = None if quality is None else float(quality)

    def flush(self) -> None:
        """Append the unwritten records to ``path`` (no-op without a path)."""
        if self.path and self._pending:
            write_trace(self._pending, self.path)
        self._pending = []

    def close(self):
        self.flush()
        super().close()


class EpisodeStatistics(gym.Wrapper):
    """At the end of an episode, add ``info["episode"]`` with its statistics.

    ``info["episode"]`` keys:

    - ``"r"`` (float): return (sum of rewards).
    - ``"l"`` (int): length in actions.
    - ``"t"`` (float): wall-clock seconds of the episode.
    - ``"dice"`` (float): final Dice.
    - ``"seconds"`` (float): simulated seconds of the episode.
    - ``"n_prompts"`` (int): prompts decoded.
    - ``"n_invalid"`` (int): actions flagged in ``info["invalid_action"]``.
    - ``"accepted"`` (bool): ended by ``Accept`` (else truncated).

    ``"r"``, ``"l"`` and ``"t"`` mean what they mean in Gymnasium's ``RecordEpisodeStatistics`` and
    SB3's ``Monitor``. The last ``buffer_length`` episodes are kept in :attr:`history`.
    """

    def __init__(self, env: gym.Env, buffer_length: int = 100):
        super().__init__(env)
        self.history: deque = deque(maxlen=buffer_length)
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._ret, self._len, self._invalid, self._t0 = 0.0, 0, 0, time.perf_counter()

    def reset(self, *, seed=None, options=None):
        self._reset_counters()
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._ret += float(reward)
        self._len += 1
        self._invalid += bool(info.get("invalid_action"))
        if terminated or truncated:
            stats = {
                "r": self._ret,
                "l": self._len,
                "t": time.perf_counter() - self._t0,
                "dice": float(info["dice"]),
                "seconds": float(info["seconds_total"]),
                "n_prompts": int(info["n_prompts"]),
                "n_invalid": self._invalid,
                "accepted": bool(terminated),
            }
            info = dict(info, episode=stats)
            self.history.append(stats)
        return obs, reward, terminated, truncated, info
