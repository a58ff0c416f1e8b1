"""Checks of loaded checkpoints, run by the builders before any weight reaches a network.

A checkpoint with a NaN or an infinite weight loads without complaint and then gives NaN logits,
which threshold to empty masks: every prompt "fails" and nothing says why. The builders
(:mod:`~hiseg_sim.segmenters.litemedsam`, :mod:`~hiseg_sim.segmenters.sam`) call
:func:`check_finite_weights` on the loaded state dict and refuse such a file with a
:class:`~hiseg_sim.segmenters.base.SegmenterError` that names the file and the first bad tensor.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from hiseg_sim.segmenters.base import SegmenterError

__all__ = ["check_finite_weights", "iter_tensors"]


def iter_tensors(state: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """``(dotted name, tensor)`` of every tensor in a (possibly nested) state dict, in its order."""
    if isinstance(state, torch.Tensor):
        yield prefix, state
    elif isinstance(state, Mapping):
        for k, v in state.items():
            yield from iter_tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            yield from iter_tensors(v, f"{prefix}.{i}" if prefix else str(i))


def check_finite_weights(state: Any, path: str | os.PathLike, what: str = "checkpoint") -> None:
    """Raise :class:`SegmenterError` if a floating-point tensor of ``state`` holds NaN or infinity.

    Integer and boolean tensors (counters, index buffers) cannot hold either and are skipped.

    Args:
        state: the loaded state dict (nested dicts and lists are walked).
        path: the file it came from, for the message.
        what: what the file is, e.g. ``"LiteMedSAM checkpoint"``.
    """
    for name, t in iter_tensors(state):
        if not (t.is_floating_point() or t.is_complex()):
            continue
        finite = torch.isfinite(t)
        if bool(finite.all()):
            continue
        n_nan = int(torch.isnan(t).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise SegmenterError(
            f"{what} {path} holds non-finite weights: tensor {name!r} has {n_nan} NaN and "
            f"{n_inf} infinite value(s) of {t.numel()}; the file is corrupt or from a diverged "
            "training run: use another checkpoint"
        )
