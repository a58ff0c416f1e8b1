"""Promptable segmenters behind one interface, built by name.

>>> from hiseg_sim import segmenters
>>> sorted(segmenters.available())
['litemedsam', 'sam_vit_b', 'sam_vit_h', 'sam_vit_l']

``build(name, **kwargs)`` is the only place a checkpoint is read. ``cache_dir=`` (or
``$HISEG_CACHE_DIR``) turns on the shared on-disk embedding cache.
"""

from __future__ import annotations

import os
from typing import Callable

from hiseg_sim.segmenters.base import (
    LUNG_WINDOW,
    Embedding,
    Prediction,
    Prompt,
    PromptError,
    Segmenter,
    SegmenterError,
    window_to_unit,
)
from hiseg_sim.segmenters.cache import CorruptCacheWarning, EmbeddingCache, default_cache_dir

__all__ = [
    "LUNG_WINDOW", "CorruptCacheWarning", "Embedding", "EmbeddingCache", "Prediction", "Prompt", "PromptError",
    "Segmenter", "SegmenterError", "available", "build", "default_cache_dir", "register", "window_to_unit",
]

_REGISTRY: dict[str, Callable[..., Segmenter]] = {}


def register(name: str) -> Callable[[Callable[..., Segmenter]], Callable[..., Segmenter]]:
    """Decorator: make ``builder(**kwargs) -> Segmenter`` available as ``build(name)``."""

    def deco(builder: Callable[..., Segmenter]) -> Callable[..., Segmenter]:
        if name in _REGISTRY:
            raise ValueError(f"segmenter {name!r} is already registered")
        _REGISTRY[name] = builder
        return builder

    return deco


def available() -> list[str]:
    return list(_REGISTRY)


def _make_cache(cache: EmbeddingCache | None, cache_dir: str | os.PathLike | None, max_items: int) -> EmbeddingCache:
    if cache is not None:
        return cache
    if cache_dir is None and os.environ.get("HISEG_CACHE_DIR"):
        cache_dir = os.environ["HISEG_CACHE_DIR"]
    return EmbeddingCache(max_items=max_items, disk_dir=cache_dir)


def build(name: str = "litemedsam", *, checkpoint: str | os.PathLike | None = None, cache: EmbeddingCache | None = None,
          cache_dir: str | os.PathLike | None = None, max_cached: int = 64) -> Segmenter:
    """Build the segmenter registered as ``name``.

    Args:
        name: one of :func:`available`.
        checkpoint: weights file; required for ``sam_vit_*`` unless ``$HISEG_SAM_CHECKPOINT_DIR`` holds it.
        cache: an existing :class:`EmbeddingCache` to share; else one is made from ``cache_dir``.
        cache_dir: on-disk embedding cache directory (default ``$HISEG_CACHE_DIR`` or memory only).
        max_cached: embeddings kept in memory.
    """
    if name not in _REGISTRY:
        raise SegmenterError(f"unknown segmenter {name!r}; available: {', '.join(available())}")
    return _REGISTRY[name](checkpoint=checkpoint, cache=_make_cache(cache, cache_dir, max_cached))


@register("litemedsam")
def _build_litemedsam(checkpoint=None, cache=None) -> Segmenter:
    from hiseg_sim.segmenters.litemedsam import LiteMedSAM

    return LiteMedSAM(checkpoint=checkpoint, cache=cache)


def _sam_builder(model_type: str):
    def builder(checkpoint=None, cache=None) -> Segmenter:
        from hiseg_sim.segmenters.sam import SAM

        return SAM(model_type=model_type, checkpoint=checkpoint, cache=cache)

    return builder


for _t in ("vit_b", "vit_l", "vit_h"):
    register(f"sam_{_t}")(_sam_builder(_t))
