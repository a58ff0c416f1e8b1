"""The simulated person: perception → strategy → execution → judgement → stop, and learning.

- :mod:`~hiseg_sim.annotators.behaviour.person`: :class:`BehaviourAnnotator`, the parts put together.
- :mod:`~hiseg_sim.annotators.behaviour.perception` (and
  :mod:`~hiseg_sim.annotators.behaviour.perception_errors`): where the person thinks the nodule and
  its edge are (their intent), fitted to LIDC readers by
  :mod:`~hiseg_sim.annotators.behaviour.calibration`.
- :mod:`~hiseg_sim.annotators.behaviour.strategy`, :mod:`~hiseg_sim.annotators.behaviour.execution`,
  :mod:`~hiseg_sim.annotators.behaviour.judgement`, :mod:`~hiseg_sim.annotators.behaviour.learning`.
- :mod:`~hiseg_sim.annotators.behaviour.examples`: what a worked example shows a person (their intent
  beside the expert's outline); :mod:`~hiseg_sim.annotators.behaviour.teacher`: the training designs
  of a study (what a teacher shows after which case).
- :mod:`~hiseg_sim.annotators.behaviour.profiles`: a group's parameters, read from
  ``agents/profiles/<group>.toml``.

The seconds each action costs are charged by the env with the group's
:class:`~hiseg_sim.timing.TimeModel`; :mod:`hiseg_sim.timing` stays below the env because the env,
not the person, is what charges time (a policy or a robot is charged by the same model).
"""

from hiseg_sim.annotators.behaviour.person import BehaviourAnnotator

__all__ = ["BehaviourAnnotator"]
