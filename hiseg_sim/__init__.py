"""hiseg-sim: simulated people annotating lung nodules on CT with Segment Anything models.

Layers (each usable on its own): :mod:`hiseg_sim.data` (cases), :mod:`hiseg_sim.segmenters`
(promptable models), :mod:`hiseg_sim.metrics`, :mod:`hiseg_sim.env` (Gymnasium environments).
Importing the package registers the environments, so ``gym.make("hiseg_sim/NoduleSeg2D-v0")``
works after ``import hiseg_sim``. Heavy dependencies (torch) load only when a model is built.
"""

__version__ = "0.1.0"

from hiseg_sim.env import register_envs as _register_envs

_register_envs()
