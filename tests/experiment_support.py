"""Test helpers for the experiment runner: tiny synthetic cases, a stub segmenter factory, a stub
annotator and stub episode functions. All named as stubs: they are not models of anything.

Names the study specs in the tests use, registered by the test-stubs plugin in ``tests/plugins``
(entry points, as any plugin package registers its own; ``tests/conftest.py`` puts it on the path):

- ``stub_study_cases`` (``synthetic_study_cases``) — case source (6 small volumes)
- ``stub_env`` (``tests.env_support.EnvStubSegmenter``) — segmenter (TEST STUB)
- ``stub_box`` (``StubBoxAnnotator``) — annotator (TEST STUB, looks at the image only)
- ``stub`` (``stub_episode``) — episode function (TEST STUB of the harness's run_episode)
- ``stub_slow`` (``slow_stub_episode``) — the same, ``$HISEG_STUB_DELAY_S`` slower (the kill test)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hiseg_sim.annotators.base import Annotator
from hiseg_sim.env import Accept, BoxAction, PointAction
from tests.env_support import synthetic_case

__all__ = ["synthetic_study_cases", "StubBoxAnnotator", "stub_episode", "slow_stub_episode", "stub_spec_dict"]


@lru_cache(maxsize=4)
def _cases(n: int):
    out = []
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        centre = (20 + int(rng.integers(0, 8)), 30 + int(rng.integers(0, 30)), 30 + int(rng.integers(0, 30)))
        radius = float(rng.choice([2.5, 4.0, 6.0, 11.0]))
        c = synthetic_case(f"synth-{i:02d}", centre, radius, seed=i)
        c.meta.update(texture=int(rng.choice([1, 3, 5])), n_readers=0)
        out.append(c)
    return tuple(out)


def synthetic_study_cases(n: int = 6):
    """``n`` small synthetic cases (48 x 96 x 96) with a texture rating in their meta."""
    return list(_cases(int(n)))


class StubBoxAnnotator(Annotator):
    """TEST STUB annotator: a box around the viewport centre (half-size drawn from ``rng``), then a
    positive click at the centre, then accept. Reads only the observation."""

    reads_ground_truth = False

    def __init__(self, name: str = "stub-box", half_px: tuple[int, int] = (6, 18), clicks: int = 1):
        self.name = name
        self.half_px = tuple(half_px)
        self.clicks = int(clicks)
        self.cases_seen = 0

    def begin_case(self, knowledge, rng: np.random.Generator) -> None:
        self.rng = rng
        self.t = 0

    def act(self, obs, info):
        S = obs["image"].shape[-1]
        c = S // 2
        self.t += 1
        if self.t == 1:
            h = int(self.rng.integers(self.half_px[0], self.half_px[1] + 1))
            return BoxAction(max(c - h, 0), max(c - h, 0), min(c + h, S - 1), min(c + h, S - 1))
        if self.t <= 1 + self.clicks:
            dx, dy = self.rng.integers(-3, 4, size=2)
            return PointAction(int(c + dx), int(c + dy), True)
        return Accept()

    def end_case(self, feedback) -> None:
        self.cases_seen += 1
        self.last_feedback = (
            "none"
            if feedback is None
            else ("worked_example" if getattr(feedback, "expert_mask", None) is not None else "score")
        )

    def episode_info(self) -> dict:
        return {"cases_seen": self.cases_seen, "last_feedback": getattr(self, "last_feedback", "none")}


@dataclass
class StubResult:
    trace: list
    summary: dict


def stub_episode(env, annotator, *, case_id, seed, feedback="none"):
    """TEST STUB of ``harness.run_episode``: reset with the seed, act until done, summarise."""
    obs, info = env.reset(seed=seed, options={"case_id": case_id})
    annotator.begin_case(None, np.random.default_rng(seed))
    trace, done, n_prompts = [], False, 0
    while not done:
        a = annotator.act(obs, info)
        obs, reward, term, trunc, info = env.step(a)
        done = term or trunc
        p = env.unwrapped.last_prompt
        n_prompts += p is not None
        trace.append(
            {
                "step": len(trace) + 1,
                "action": {"kind": type(a).__name__.lower()},
                "prompt": p,
                "seconds": info["seconds"],
                "seconds_total": info["seconds_total"],
                "dice": info["dice"],
                "iou_pred": info["iou_pred"],
                "invalid_action": info["invalid_action"],
                "reward": float(reward),
                "terminated": bool(term),
                "truncated": bool(trunc),
                "perceived_quality": None,
            }
        )
    summary = {
        "case_id": case_id,
        "annotator": annotator.name,
        "seed": seed,
        "final_dice": info["dice"],
        "final_iou": info["dice"] / (2 - info["dice"]),
        "n_actions": len(trace),
        "n_prompts": n_prompts,
        "seconds_total": info["seconds_total"],
        "accepted": bool(term),
        "gave_up": False,
        "cases_seen": annotator.cases_seen,
    }
    annotator.end_case(None if feedback == "none" else {"dice": info["dice"]})
    return StubResult(trace, summary)


def slow_stub_episode(env, annotator, *, case_id, seed, feedback="none"):
    """:func:`stub_episode`, ``$HISEG_STUB_DELAY_S`` seconds slower (so a test can kill a run midway
    while the same spec runs at full speed elsewhere)."""
    time.sleep(float(os.environ.get("HISEG_STUB_DELAY_S", "0")))
    return stub_episode(env, annotator, case_id=case_id, seed=seed, feedback=feedback)


def stub_spec_dict(
    name: str = "stub_study",
    n_cases: int = 6,
    replicates: int = 2,
    episode_fn: str | None = None,
    design: str = "crossed",
    length: int | None = None,
) -> dict:
    """A study spec (as parsed TOML) over the synthetic cases with the stub segmenter and annotators."""
    run = {"replicates": replicates, "design": design, "episode_fn": episode_fn or "stub"}
    if length is not None:
        run["length"] = length
    return {
        "study": {"name": name, "seed": 7, "kind": "groups"},
        "cases": {"source": "stub_study_cases", "kwargs": {"n": n_cases}},
        "segmenters": {"names": ["stub_env"]},
        "annotators": [
            {"name": "stub_box", "label": "tight", "overrides": {"half_px": [6, 10]}},
            {"name": "stub_box", "label": "loose", "overrides": {"half_px": [14, 22], "clicks": 2}},
        ],
        "run": run,
    }
