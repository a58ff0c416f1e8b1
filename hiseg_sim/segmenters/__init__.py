"""Promptable segmenters behind one interface, built by name.

>>> from hiseg_sim import segmenters
>>> sorted(segmenters.available())
['litemedsam', 'sam_vit_b', 'sam_vit_h', 'sam_vit_l']

``build(name, **kwargs)`` is the only place a checkpoint is read. ``cache_dir=`` (or
``$HISEG_CACHE_DIR``) turns on the shared on-disk embedding cache. ``runtime=`` picks what runs the
prompt decoder of the SAM family: ``"onnx"`` (ONNX Runtime), ``"torch"``, or ``"auto"`` (ONNX
Runtime when it imports; see :mod:`hiseg_sim.segmenters.sam_family`); ``encoder=`` (or
``$HISEG_ENCODER``) what runs the image encoder (:data:`ENCODERS`). Threads per process follow
:func:`set_threads` (rule in :mod:`hiseg_sim.segmenters.threads`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from hiseg_sim.registry import Registry, RegistryError
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
from hiseg_sim.segmenters.cache import CacheWriteWarning, CorruptCacheWarning, EmbeddingCache, default_cache_dir
from hiseg_sim.segmenters.sam_family import ENCODERS, RUNTIMES, RuntimeFallbackWarning
from hiseg_sim.segmenters.threads import get_threads, set_threads, threads_for

__all__ = [
    "LUNG_WINDOW",
    "CacheWriteWarning",
    "CorruptCacheWarning",
    "ENCODERS",
    "Embedding",
    "EmbeddingCache",
    "Prediction",
    "Prompt",
    "PromptError",
    "RUNTIMES",
    "RuntimeFallbackWarning",
    "SEGMENTERS",
    "Segmenter",
    "SegmenterError",
    "available",
    "build",
    "default_cache_dir",
    "get_threads",
    "register",
    "set_threads",
    "threads_for",
    "window_to_unit",
]

#: Segmenters by name: entry points of the group ``hiseg_sim.segmenters`` (hiseg-sim's own are in
#: :mod:`hiseg_sim.segmenters.builtin`), plus any added with :func:`register`.
SEGMENTERS: Registry[Callable[..., Segmenter]] = Registry("segmenters", "segmenter")


def register(name: str) -> Callable[[Callable[..., Segmenter]], Callable[..., Segmenter]]:
    """Decorator: make ``builder(**kwargs) -> Segmenter`` available as ``build(name)`` in this process
    (a package makes it available everywhere with an entry point in ``hiseg_sim.segmenters``)."""

    def deco(builder: Callable[..., Segmenter]) -> Callable[..., Segmenter]:
        try:
            SEGMENTERS.register(name, builder)
        except RegistryError as exc:
            raise ValueError(str(exc)) from None
        return builder

    return deco


def available() -> list[str]:
    return SEGMENTERS.names()


def _make_cache(cache: EmbeddingCache | None, cache_dir: str | os.PathLike | None, max_items: int) -> EmbeddingCache:
    if cache is not None:
        return cache
    if cache_dir is None and os.environ.get("HISEG_CACHE_DIR"):
        cache_dir = os.environ["HISEG_CACHE_DIR"]
    return EmbeddingCache(max_items=max_items, disk_dir=cache_dir)


def build(
    name: str = "litemedsam",
    *,
    checkpoint: str | os.PathLike | None = None,
    cache: EmbeddingCache | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_cached: int = 64,
    runtime: str = "auto",
    onnx_dir: str | os.PathLike | None = None,
    encoder: str | None = None,
) -> Segmenter:
    """Build the segmenter registered as ``name``.

    Args:
        name: one of :func:`available`.
        checkpoint: weights file; required for ``sam_vit_*`` unless ``$HISEG_SAM_CHECKPOINT_DIR`` holds it.
        cache: an existing :class:`EmbeddingCache` to share; else one is made from ``cache_dir``.
        cache_dir: on-disk embedding cache directory (default ``$HISEG_CACHE_DIR`` or memory only).
        max_cached: embeddings kept in memory.
        runtime: ``"auto"`` (default), ``"onnx"`` or ``"torch"``: what runs the prompt decoder.
            Without ``onnxruntime`` the SAM family falls back to ``"torch"`` with one warning.
        onnx_dir: cache of exported decoders (default ``$HISEG_CACHE_DIR/onnx`` or ``~/.cache/hiseg-sim/onnx``).
        encoder: what runs the image encoder, one of :data:`ENCODERS` (default ``$HISEG_ENCODER``,
            else ``"auto"``); SAM family only.

    ``$HISEG_THREADS``, if set, is applied here (see :func:`set_threads`).
    """
    if name not in SEGMENTERS:
        raise SegmenterError(SEGMENTERS.unknown_message(name))
    if runtime not in RUNTIMES:
        raise SegmenterError(f"unknown runtime {runtime!r}; one of {', '.join(RUNTIMES)}")
    if encoder is not None and encoder not in ENCODERS:
        raise SegmenterError(f"unknown encoder {encoder!r}; one of {', '.join(ENCODERS)}")
    from hiseg_sim.segmenters.threads import apply_env

    apply_env()
    builder = SEGMENTERS.get(name)
    kwargs: dict = {"checkpoint": checkpoint, "cache": _make_cache(cache, cache_dir, max_cached)}
    params = inspect.signature(builder).parameters
    if "runtime" in params:
        kwargs.update(runtime=runtime, onnx_dir=onnx_dir)
    elif runtime == "onnx":
        raise SegmenterError(f"segmenter {name!r} has no ONNX runtime; use runtime='torch' or 'auto'")
    seg = builder(**kwargs)
    if encoder is not None and encoder != "auto":
        set_encoder = getattr(seg, "set_encoder", None)
        if set_encoder is None:
            raise SegmenterError(f"segmenter {name!r} has one image encoder; leave encoder= out")
        set_encoder(encoder)
    return seg
