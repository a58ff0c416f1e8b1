"""Annotators: behaviour models of people, and the literature's click robots beside them.

>>> from hiseg_sim.annotators import available_annotators, build_annotator, run_episode, evaluate

- :mod:`~hiseg_sim.annotators.base`: the one protocol for everything that acts (Knowledge
  without ground truth; RobotKnowledge for robots only).
- :mod:`~hiseg_sim.annotators.registry`: annotators by name (profiles in ``agents/profiles`` and robots).
- :mod:`~hiseg_sim.annotators.harness`: ``run_episode`` (the perception step happens there) and ``evaluate``.
- The behaviour model: :mod:`~hiseg_sim.annotators.behaviour.person` over
  :mod:`~hiseg_sim.annotators.behaviour.strategy`, :mod:`~hiseg_sim.annotators.behaviour.execution`,
  :mod:`~hiseg_sim.annotators.behaviour.judgement`, :mod:`~hiseg_sim.annotators.behaviour.learning`, with
  :mod:`~hiseg_sim.annotators.behaviour.perception` and :mod:`~hiseg_sim.annotators.behaviour.profiles`.
- Robots: :mod:`~hiseg_sim.annotators.robots` (rules as pure functions, and as agents). Robots read the
  ground truth — that is what they are.
"""

from .base import Annotator, Feedback, Knowledge, RobotKnowledge, SB3PolicyAdapter
from .harness import EpisodeResult, evaluate, run_episode
from .registry import available_annotators, build_annotator, load_profile
from .robots.rules import (
    Click,
    clicks_to_sam,
    deepgrow_click,
    gt_box,
    medsam_box,
    medsegfm_click,
    microsam_clicks,
    noc,
    noc_metric,
    ritm_click,
    run_click_protocol,
    sam_noisy_box,
    sammed3d_click,
)

__all__ = [
    "Annotator",
    "Click",
    "EpisodeResult",
    "Feedback",
    "Knowledge",
    "RobotKnowledge",
    "SB3PolicyAdapter",
    "available_annotators",
    "build_annotator",
    "clicks_to_sam",
    "deepgrow_click",
    "evaluate",
    "gt_box",
    "load_profile",
    "medsam_box",
    "medsegfm_click",
    "microsam_clicks",
    "noc",
    "noc_metric",
    "ritm_click",
    "run_click_protocol",
    "run_episode",
    "sam_noisy_box",
    "sammed3d_click",
]
