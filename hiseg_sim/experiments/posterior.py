"""Posterior draws stored in a fitted profile, and one simulated person's parameters drawn from them.

``hiseg-sim fit-profile`` writes a profile TOML in the format of ``agents/profiles`` (loadable as an
annotator by its path). Each fitted parameter keeps ``value`` and ``source`` and adds a ``note``
holding the joint posterior draws::

    accept_threshold = {value = 0.87, source = "calibration: fitted ...", note = "posterior draws: 0.861 0.874 ..."}

Draw ``i`` of every parameter belongs to the same joint draw, so a person made from index ``i``
keeps the posterior's correlations. The note is plain text read as numbers; nothing in the file
is executed. A study arm with ``posterior = true`` gives each simulated person (replicate) one
joint draw (:func:`posterior_overrides`).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import numpy as np
import tomllib

__all__ = ["DRAWS_PREFIX", "PosteriorError", "posterior_draws", "posterior_overrides"]

#: How a ``note`` holding draws begins.
DRAWS_PREFIX = "posterior draws:"


class PosteriorError(ValueError):
    """A profile without (readable) posterior draws."""


def posterior_draws(path: str | Path) -> dict[str, np.ndarray]:
    """``{"section.key": draws}`` of a fitted profile; every array has the same length.

    Raises:
        PosteriorError: the file is missing, is not TOML, holds no draws, or draws of unequal length.
    """
    p = Path(path)
    if not p.is_file():
        raise PosteriorError(f"{p}: no such profile file (posterior draws come from `hiseg-sim fit-profile --out`)")
    try:
        data = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise PosteriorError(f"{p}: not valid TOML: {exc}") from None
    out: dict[str, np.ndarray] = {}
    for section, table in data.items():
        if not isinstance(table, dict):
            continue
        for key, entry in table.items():
            note = entry.get("note") if isinstance(entry, dict) else None
            if isinstance(note, str) and note.startswith(DRAWS_PREFIX):
                try:
                    out[f"{section}.{key}"] = np.array(note[len(DRAWS_PREFIX) :].split(), float)
                except ValueError:
                    raise PosteriorError(f"{p}: {section}.{key}: the posterior draws are not numbers") from None
    if not out:
        raise PosteriorError(
            f"{p}: holds no posterior draws; `posterior = true` needs a profile written by `hiseg-sim fit-profile`"
        )
    sizes = {v.size for v in out.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise PosteriorError(f"{p}: the parameters hold different numbers of posterior draws {sorted(sizes)}")
    return out


def _int_fields() -> set[str]:
    from hiseg_sim.annotators.behaviour.profiles import SECTIONS

    return {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in fields(cls) if f.type in (int, "int")}


def posterior_overrides(path: str | Path, replicate: int, seed: int = 0) -> dict:
    """The parameters of simulated person ``replicate``: one joint posterior draw, picked by a seeded
    permutation of the draws (persons 0, 1, ... get distinct draws while there are draws left)."""
    draws = posterior_draws(path)
    n = next(iter(draws.values())).size
    order = np.random.default_rng(np.random.SeedSequence([int(seed), 0x9057])).permutation(n)
    i = int(order[int(replicate) % n])
    ints = _int_fields()
    return {k: (int(round(float(v[i]))) if k in ints else float(v[i])) for k, v in draws.items()}
