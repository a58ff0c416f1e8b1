"""Gymnasium environments: prompt a segmenter on CT nodules, scored against ground truth, timed.

>>> import gymnasium as gym, hiseg_sim
>>> sorted(i for i in gym.registry if i.startswith("hiseg_sim/"))
['hiseg_sim/NoduleSeg2D-v0', 'hiseg_sim/NoduleSeg3D-v0']

``import hiseg_sim`` registers the ids (Gymnasium 1.x reads no plugin entry points). The classes,
wrappers and helpers below load lazily, so importing the package does not import torch.

>>> from hiseg_sim.env import PointAction, BoxAction, Undo, Accept       # typed actions
>>> from hiseg_sim.env import TraceRecorder, EpisodeStatistics, replay   # wrappers, replay
>>> from hiseg_sim.env import make_vec_env                               # shared-cache vector envs
>>> from hiseg_sim.env import EnvArgumentError, InvalidActionError      # documented errors

Modules: :mod:`~hiseg_sim.env.actions` (action space and typed actions),
:mod:`~hiseg_sim.env.observation`, :mod:`~hiseg_sim.env.viewport`, :mod:`~hiseg_sim.env.scoring`,
:mod:`~hiseg_sim.env.state` (slice states, bad-action codes), :mod:`~hiseg_sim.env.encoding`
(encode once across processes), :mod:`~hiseg_sim.env.validation` (bounds of the arguments and
reset options), :mod:`~hiseg_sim.env.core` (shared shell), :mod:`~hiseg_sim.env.nodule2d`,
:mod:`~hiseg_sim.env.nodule3d`, :mod:`~hiseg_sim.env.render`, :mod:`~hiseg_sim.env.wrappers`
(trace recorder, episode statistics), :mod:`~hiseg_sim.env.trace` (trace files, replay),
:mod:`~hiseg_sim.env.vector` (vector envs sharing the embedding cache).
"""

from __future__ import annotations

from hiseg_sim.env.actions import (
    Accept,
    Action,
    ActionTypeError,
    BoxAction,
    InvalidActionError,
    Kind,
    NextSlice,
    PointAction,
    PrevSlice,
    Propagate,
    Undo,
)
from hiseg_sim.env.validation import EnvArgumentError, EnvArgumentTypeError

__all__ = [
    "ENV_IDS",
    "INVALID_CODES",
    "Accept",
    "Action",
    "ActionTypeError",
    "BoxAction",
    "EnvArgumentError",
    "EnvArgumentTypeError",
    "EpisodeStatistics",
    "InvalidActionError",
    "Kind",
    "NextSlice",
    "NoduleSeg2DEnv",
    "NoduleSeg3DEnv",
    "PointAction",
    "PrevSlice",
    "Propagate",
    "ResetNeeded",
    "TraceRecorder",
    "Undo",
    "make_vec_env",
    "read_trace",
    "register_envs",
    "replay",
]

#: id → (entry point, max_episode_steps). 20 steps in 2-D: the click budget of the RITM / NoC
#: protocol (Sofiiuk et al. 2022); 200 in 3-D: about ten actions per slice of a 30-mm nodule.
#: The ids are registered without Gymnasium's passive env checker: in Gymnasium 1.4 a first
#: ``reset`` that raises (refused options) leaves that wrapper without data, and the next ``step``
#: then fails inside it with a ``TypeError``. ``tests/test_env.py`` runs the full ``check_env``.
ENV_IDS: dict[str, tuple[str, int]] = {
    "hiseg_sim/NoduleSeg2D-v0": ("hiseg_sim.env.nodule2d:NoduleSeg2DEnv", 20),
    "hiseg_sim/NoduleSeg3D-v0": ("hiseg_sim.env.nodule3d:NoduleSeg3DEnv", 200),
}


def register_envs() -> None:
    """Register the environment ids with Gymnasium; safe to call more than once."""
    import gymnasium as gym

    for env_id, (entry_point, max_steps) in ENV_IDS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point=entry_point,
                max_episode_steps=max_steps,
                nondeterministic=False,
                disable_env_checker=True,
            )


_LAZY = {
    "NoduleSeg2DEnv": "hiseg_sim.env.nodule2d",
    "NoduleSeg3DEnv": "hiseg_sim.env.nodule3d",
    "TraceRecorder": "hiseg_sim.env.wrappers",
    "EpisodeStatistics": "hiseg_sim.env.wrappers",
    "replay": "hiseg_sim.env.trace",
    "read_trace": "hiseg_sim.env.trace",
    "make_vec_env": "hiseg_sim.env.vector",
    "INVALID_CODES": "hiseg_sim.env.state",
    "ResetNeeded": "hiseg_sim.env.state",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hiseg_sim.env' has no attribute {name!r}")
