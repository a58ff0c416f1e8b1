import os
import sys
from pathlib import Path

import numpy as np
import pytest

# The test-stubs plugin (tests/plugins/*.dist-info): the stub segmenter, cases, annotator and episode
# functions are registered by entry points, exactly as a third-party package registers its own. On
# sys.path for this process and its pool workers, on PYTHONPATH for subprocesses and Ray workers.
_ROOT = Path(__file__).resolve().parents[1]
_PLUGINS = str(_ROOT / "tests" / "plugins")
for _p in (_PLUGINS, str(_ROOT)):
    if _p not in sys.path:
        sys.path.insert(0, _p)
os.environ["PYTHONPATH"] = os.pathsep.join(
    [_PLUGINS, str(_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
)


@pytest.fixture(scope="session")
def litemedsam():
    """The real LiteMedSAM, built once per test session (memory cache only)."""
    from hiseg_sim import segmenters

    return segmenters.build("litemedsam")


@pytest.fixture(scope="session")
def disc_slice():
    """A 96x96 lung-window slice in HU with a solid 12-px-radius disc at (x=40, y=50), and its mask."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    img = np.full((96, 96), -850.0, np.float32) + rng.normal(0, 30, (96, 96)).astype(np.float32)
    gt = (yy - 50) ** 2 + (xx - 40) ** 2 < 12**2
    img[gt] = 20.0
    return img, gt
