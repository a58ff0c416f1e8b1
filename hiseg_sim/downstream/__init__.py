"""Automatic annotators and what labels cost downstream.

- :mod:`~hiseg_sim.downstream.unet`: a CPU-sized 2-D U-Net (the specialist and the downstream model),
  optionally with a centre-prior channel (the viewport is centred on a detection).
- :mod:`~hiseg_sim.downstream.training`: seeded training with pixel weights; Dice against ground truth.
- :mod:`~hiseg_sim.downstream.specialist`: the SemiSAM+-style annotator (``specialist_sam`` in the
  annotator registry): the net's proposal → box and RITM-rule points for the frozen segmenter,
  rounds kept for an uncertainty map.
- :mod:`~hiseg_sim.downstream.pseudo`: spread across prompt rounds → pixel weights.
- :mod:`~hiseg_sim.downstream.slices`, :mod:`~hiseg_sim.downstream.labels`: 2-D crops, and label
  sets (ground truth, expert, STAPLE crowd, novice, specialist) read back from a study's rows: key
  slices of a 2-D study, every slice of the volume labels of a 3-D one.
- :mod:`~hiseg_sim.downstream.pool`: more calibration-split training phantoms (``train_pool.json``),
  a ``[cases] source`` for the study.
- :mod:`~hiseg_sim.downstream.study`, :mod:`~hiseg_sim.downstream.report`: the
  ``kind = "downstream"`` study behind ``hiseg-sim run experiments/downstream.toml``.
"""
