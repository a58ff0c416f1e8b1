"""The click and box robots of the literature, exact baselines beside the simulated people.

- :mod:`~hiseg_sim.annotators.robots.points`: next-click rules (RITM, micro-sam, DeepGrow,
  SAM-Med3D, the CVPR 2025 evaluator) as pure functions of a prediction and the ground truth.
- :mod:`~hiseg_sim.annotators.robots.boxes`: box rules (tight, MedSAM's outward push, SAM's noise).
- :mod:`~hiseg_sim.annotators.robots.rules`: the rules run against a segmenter (NoC protocols).
- :mod:`~hiseg_sim.annotators.robots.agents`: the rules as annotators in the envs.

Robots read the ground truth: that is what they are (``reads_ground_truth = True``).
"""
