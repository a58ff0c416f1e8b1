"""Vector environments whose workers share one on-disk embedding cache.

Gymnasium's ``SyncVectorEnv`` and ``AsyncVectorEnv`` (and SB3's ``SubprocVecEnv``) work with the
registered ids directly. :func:`make_vec_env` adds what makes them cheap:

- async workers get the same ``cache_dir`` (default :func:`hiseg_sim.segmenters.default_cache_dir`),
  and :func:`hiseg_sim.env.encoding.encode_once` locks each embedding key, so a slice is encoded
  once across all workers;
- sync sub-environments share one segmenter object (one memory cache, one model);
- ``torch_threads`` caps each worker's intra-op threads (default ``"auto"``: the rule of
  :mod:`hiseg_sim.segmenters.threads`, cores // workers, or ``$HISEG_THREADS``), so four workers
  on two cores do not fight over them.

>>> # vec = make_vec_env("hiseg_sim/NoduleSeg2D-v0", num_envs=4, cases=cases, cache_dir="/tmp/emb")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import gymnasium as gym

__all__ = ["EnvFactory", "make_vec_env", "vector_encoder_stats"]


class EnvFactory:
    """A picklable ``() -> gym.Env`` that sets the worker's threads, makes the env and wraps it.

    Args:
        env_id: a registered id.
        wrappers: callables ``env -> env`` applied in order.
        threads: intra-op threads for this process (:func:`hiseg_sim.segmenters.set_threads`);
            ``"auto"`` applies the package's rule for ``workers`` processes; ``None`` leaves them.
        workers: processes sharing the cores (for ``"auto"``).
        **kwargs: passed to ``gym.make``.
    """

    def __init__(
        self,
        env_id: str,
        wrappers: Sequence[Callable] = (),
        threads: int | str | None = None,
        workers: int = 1,
        **kwargs,
    ):
        self.env_id, self.wrappers, self.threads, self.workers, self.kwargs = (
            env_id,
            tuple(wrappers),
            threads,
            workers,
            kwargs,
        )

    def __call__(self) -> gym.Env:
        import hiseg_sim  # noqa: F401  (registers the ids in a fresh worker)

        if self.threads is not None:
            _set_threads(None if self.threads == "auto" else int(self.threads), self.workers)
        env = gym.make(self.env_id, **self.kwargs)
        for w in self.wrappers:
            env = w(env)
        return env


def _set_threads(n: int | None, workers: int) -> int:
    try:
        from hiseg_sim.segmenters import set_threads
    except ImportError:  # pragma: no cover - older segmenters package
        import torch

        n = n if n is not None else max(1, (os.cpu_count() or 1) // max(1, workers))
        torch.set_num_threads(n)
        return n
    return set_threads(n, workers=workers)


def make_vec_env(
    env_id: str = "hiseg_sim/NoduleSeg2D-v0",
    num_envs: int = 4,
    mode: str = "async",
    *,
    cache_dir: str | os.PathLike | None = None,
    segmenter="litemedsam",
    torch_threads: int | str | None = "auto",
    wrappers: Sequence[Callable] = (),
    context: str | None = None,
    **env_kwargs,
) -> gym.vector.VectorEnv:
    """A ``SyncVectorEnv`` (``mode="sync"``) or ``AsyncVectorEnv`` (``mode="async"``) of ``num_envs`` envs.

    Args:
        env_id: a registered id.
        num_envs: sub-environments (workers in async mode).
        mode: ``"sync"`` or ``"async"``.
        cache_dir: shared on-disk embedding cache; async mode defaults to
            :func:`~hiseg_sim.segmenters.default_cache_dir`.
        segmenter: a registry name (built in each worker) or a Segmenter (shared in sync mode,
            copied into each worker in async mode, where its cache gets ``cache_dir`` as disk store).
        torch_threads: per-worker intra-op threads in async mode; ``"auto"`` = cores // workers (at
            least 1; ``$HISEG_THREADS`` wins); ``None`` leaves torch's default.
        wrappers: applied to each sub-environment, in order.
        context: multiprocessing start method for async mode (``None``: the platform's default).
        **env_kwargs: passed to ``gym.make`` (``cases=``, ``time_penalty=`` ...).
    """
    if mode not in ("sync", "async"):
        raise ValueError(f"mode must be 'sync' or 'async'; got {mode!r}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1; got {num_envs}")
    if mode == "async":
        if cache_dir is None and isinstance(segmenter, str):
            from hiseg_sim.segmenters import default_cache_dir

            cache_dir = default_cache_dir()
        fns = [
            EnvFactory(
                env_id,
                wrappers,
                torch_threads,
                num_envs,
                segmenter=segmenter,
                cache_dir=None if cache_dir is None else str(cache_dir),
                **env_kwargs,
            )
            for _ in range(num_envs)
        ]
        return gym.vector.AsyncVectorEnv(fns, context=context)
    if isinstance(segmenter, str):
        from hiseg_sim import segmenters

        segmenter = segmenters.build(segmenter, cache_dir=cache_dir)
    fns = [
        EnvFactory(env_id, wrappers, None, 1, segmenter=segmenter, cache_dir=cache_dir, **env_kwargs)
        for _ in range(num_envs)
    ]
    return gym.vector.SyncVectorEnv(fns)


def vector_encoder_stats(vec) -> dict:
    """``{"encoder_calls": int, "slices": int}`` over all sub-environments of a vector env.

    ``encoder_calls`` sums the encoder runs of each distinct segmenter (sub-environments sharing
    one are counted once); ``slices`` counts distinct embedding keys touched (slices encoded or
    loaded from the cache).
    """
    stats = vec.call("encoder_stats")
    seen, calls, keys = set(), 0, set()
    for s in stats:
        ident = (s.get("pid"), s.get("segmenter_id"))
        if ident not in seen:
            seen.add(ident)
            calls += int(s["encoder_calls"])
        keys.update(s["keys"])
    return {"encoder_calls": calls, "slices": len(keys)}
