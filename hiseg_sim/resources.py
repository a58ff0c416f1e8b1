"""Where the data shipped with hiseg-sim lives: the source tree in a checkout, or the copy that the
wheel bundles under ``hiseg_sim/_bundled`` (see ``[tool.hatch.build.targets.wheel.force-include]``)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["shipped_path"]

_PKG = Path(__file__).resolve().parent


def shipped_path(*parts: str) -> Path:
    """``<repo>/<parts>`` if it exists, else ``hiseg_sim/_bundled/<parts>`` if that exists, else the
    source-tree path (so an error message names where the file was expected).

    >>> shipped_path("experiments").name
    'experiments'
    """
    for base in (_PKG.parent, _PKG / "_bundled"):
        cand = base.joinpath(*parts)
        if cand.exists():
            return cand
    return _PKG.parent.joinpath(*parts)
