"""Look at cases: a grid PNG of each case's key slice in a display window, gt contoured.

>>> render_slices(cases, "runs/phantom_gallery.png")   # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

__all__ = ["render_slices"]


def render_slices(
    cases: Sequence,
    path,
    window: tuple[float, float] = (-600.0, 1500.0),
    ncols: int = 4,
    slice_index: str | int = "key",
    contour: bool = True,
    dpi: int = 110,
) -> Path:
    """Save a grid PNG of one slice per case (``"key"``: ``case.key_slice``, ``"mid"``: the middle
    of the volume, or an index) in ``window = (level, width)`` HU, with the gt contour in yellow.

    Uses matplotlib's Agg backend (no display needed); returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    cases = list(cases)
    if not cases:
        raise ValueError("render_slices needs at least one case")
    level, width = window
    ncols = max(1, min(ncols, len(cases)))
    nrows = math.ceil(len(cases) / ncols)
    fig = Figure(figsize=(3.2 * ncols, 3.5 * nrows))
    for i, case in enumerate(cases):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        z = case.key_slice if slice_index == "key" else case.shape[0] // 2 if slice_index == "mid" else int(slice_index)
        ax.imshow(
            case.volume_hu[z], cmap="gray", vmin=level - width / 2, vmax=level + width / 2, interpolation="nearest"
        )
        if contour and case.gt[z].any():
            ax.contour(case.gt[z].astype(float), levels=[0.5], colors="yellow", linewidths=0.6)
        m = case.meta
        flags = "".join(s for s, k in (("J", "juxtapleural"), ("V", "vessel_attached"), ("C", "calcified")) if m.get(k))
        d = m.get("diameter_mm")
        ax.set_title(
            f"{case.case_id}\nT{m.get('texture', '?')} {'' if d is None else f'{d:.0f}mm '}{flags} z={z}", fontsize=7
        )
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close("all")
    return out
