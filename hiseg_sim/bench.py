"""What the environment adds to a decoder call: ``hiseg-sim bench --json``.

:func:`run_bench` drives a vector environment (4 workers by default) with prompt actions only
(a box, then clicks near the viewport centre, episodes of ``episode_steps`` actions) and, inside
each worker, times every ``env.step`` that decoded and, right after it, the raw
``segmenter.decode`` of the very same prompt on the same cached embedding. Both are timed in the
same process under the same load, so their ratio is what the environment costs on top of the
model. It also counts encoder runs over all workers against the distinct slices touched: with the
shared on-disk cache and its per-key lock, every slice is encoded exactly once.

Targets: ``ratio <= 1.15`` and ``encoder_calls == slices`` (with a fresh cache; with a
warm ``cache_dir`` fewer encoder calls than slices are expected).
"""

from __future__ import annotations

import functools
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence

import gymnasium as gym
import numpy as np

__all__ = ["StepTimer", "full_bench", "run_bench"]


class StepTimer(gym.Wrapper):
    """Time each ``step`` that decoded, then the raw decoder on the same prompt and embedding.

    :meth:`bench_samples` returns ``[(step_seconds, decode_seconds), ...]``.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._samples: list[tuple[float, float]] = []

    def step(self, action):
        t0 = time.perf_counter()
        out = self.env.step(action)
        dt = time.perf_counter() - t0
        u = self.env.unwrapped
        if u.last_decode is not None:
            emb, prompt = u.last_decode
            t1 = time.perf_counter()
            u.segmenter.decode(emb, prompt)
            self._samples.append((dt, time.perf_counter() - t1))
        return out

    def bench_samples(self) -> list[tuple[float, float]]:
        return list(self._samples)


def _prompt_actions(rng: np.random.Generator, size: int, t: int) -> np.ndarray:
    """Action ``t`` of an episode: a box around the centre first, then clicks near the centre."""
    c = size // 2
    if t == 0:
        r0, r1 = rng.integers(size // 10, size // 4, size=2)
        return np.array([2, c - r0, c - r1, c + r1, c + r0], np.int64)
    kind = int(rng.integers(0, 2))
    x, y = np.clip(c + rng.integers(-size // 6, size // 6 + 1, size=2), 0, size - 1)
    return np.array([kind, x, y, 0, 0], np.int64)


def run_bench(
    n_envs: int = 4,
    n_steps: int = 40,
    cases: Sequence | Callable | None = None,
    segmenter="litemedsam",
    cache_dir: str | None = None,
    env_id: str = "hiseg_sim/NoduleSeg2D-v0",
    seed: int = 0,
    mode: str = "async",
    torch_threads: int | str | None = "auto",
    episode_steps: int = 10,
    n_cases: int | None = 8,
    env_kwargs: dict | None = None,
) -> dict:
    """Median ``env.step`` vs raw decoder time over a vector env, and encoder calls vs slices.

    Args:
        n_envs: sub-environments (worker processes in ``"async"`` mode).
        n_steps: vector steps (each steps every sub-environment once).
        cases: the cases, or a callable returning them (default: the first ``n_cases`` of the
            default cohort, loaded in each worker).
        segmenter: registry name (or a Segmenter object, copied into each worker).
        cache_dir: shared embedding cache; default a fresh temporary directory, removed after.
        env_id: ``"hiseg_sim/NoduleSeg2D-v0"`` (every step decodes) or the 3-D id.
        seed: seeds the resets and the actions.
        mode: ``"async"`` or ``"sync"``.
        torch_threads: per-worker torch threads (``"auto"``: cores / workers).
        episode_steps: actions per episode (the time limit of the bench).
        n_cases: cases of the default cohort to use when ``cases`` is None (None: all).
        env_kwargs: more arguments for ``gym.make``.

    Returns:
        ``{"env_step_ms", "decoder_ms", "ratio", "encoder_calls", "slices", ...}``: medians in
        milliseconds over all decoding steps of all workers, their ratio, encoder runs summed over
        workers, distinct slices (embedding keys) touched; plus ``samples``, ``n_envs``,
        ``env_id``, ``segmenter``, ``mode``, ``torch_threads`` and ``wall_s``.
    """
    import hiseg_sim  # noqa: F401  (registers the ids)
    from hiseg_sim.env.vector import make_vec_env, vector_encoder_stats

    if cases is None:
        from hiseg_sim.data.cohort import load_cohort

        cases = functools.partial(load_cohort, "default", limit=n_cases)
    tmp = None
    if cache_dir is None:
        tmp = cache_dir = tempfile.mkdtemp(prefix="hiseg-bench-cache-")
    t_start = time.perf_counter()
    vec = None
    try:
        vec = make_vec_env(
            env_id,
            n_envs,
            mode,
            cache_dir=cache_dir,
            segmenter=segmenter,
            torch_threads=torch_threads,
            wrappers=(StepTimer,),
            cases=cases,
            max_episode_steps=episode_steps,
            **(env_kwargs or {}),
        )
        size = int(vec.single_action_space.nvec[1])
        rng = np.random.default_rng(seed)
        vec.reset(seed=seed)
        t_ep = np.zeros(n_envs, np.int64)
        for _ in range(n_steps):
            acts = np.stack([_prompt_actions(rng, size, int(t)) for t in t_ep])
            _, _, term, trunc, _ = vec.step(acts)
            done = np.logical_or(term, trunc)
            # Gymnasium's next-step autoreset: the step after an episode's end is a reset.
            t_ep = np.where(done, -1, t_ep) + 1
        samples = [s for per_env in vec.call("bench_samples") for s in per_env]
        enc = vector_encoder_stats(vec)
    finally:
        if vec is not None:
            vec.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if not samples:
        raise RuntimeError("no decoding step was timed; increase n_steps")
    arr = np.array(samples)
    step_ms, dec_ms = float(np.median(arr[:, 0]) * 1e3), float(np.median(arr[:, 1]) * 1e3)
    if torch_threads == "auto" and mode == "async":
        from hiseg_sim.segmenters import threads_for

        torch_threads = threads_for(workers=n_envs)
    return {
        "env_step_ms": round(step_ms, 3),
        "decoder_ms": round(dec_ms, 3),
        "ratio": round(step_ms / dec_ms, 4),
        "encoder_calls": int(enc["encoder_calls"]),
        "slices": int(enc["slices"]),
        "samples": int(arr.shape[0]),
        "n_envs": int(n_envs),
        "env_id": env_id,
        "segmenter": segmenter if isinstance(segmenter, str) else getattr(segmenter, "name", type(segmenter).__name__),
        "mode": mode,
        "torch_threads": torch_threads,
        "wall_s": round(time.perf_counter() - t_start, 2),
    }


def _build_with_runtime(name: str, runtime: str, **kwargs):
    """Picklable segmenter factory for vector-env workers: ``build(name, runtime=runtime)``."""
    from hiseg_sim import segmenters

    return segmenters.build(name, runtime=runtime, **kwargs)


def full_bench(
    n_envs: int = 4,
    n_steps: int = 40,
    segmenter: str = "litemedsam",
    n_cases: int = 8,
    decoder_samples: int = 40,
    seed: int = 0,
    progress: bool = False,
) -> dict:
    """Everything ``hiseg-sim bench --json`` reports, measured in one run.

    1. A ``n_envs``-worker vector env on the default runtime with a fresh shared cache:
       ``env_step_ms``, ``decoder_ms``, ``ratio``, ``encoder_calls``, ``slices``.
    2. The decoder alone on both runtimes, the counted FLOPs of one decode and this machine's
       matmul rate: ``eager_decoder_ms``, ``onnx_decoder_ms``, ``limit_ms``.
    3. One env (2 threads, no contention from other workers) on the ONNX and on the eager path,
       back to back on the now warm cache: ``single_env`` with both step times and the ratios
       the targets are stated in (ONNX step ≤ 1.6 × ``limit_ms`` and ≤ 0.65 × eager step).
    """
    from hiseg_sim.segmenters.perf import decoder_bench

    def say(msg: str) -> None:
        if progress:
            import sys

            print(msg, file=sys.stderr, flush=True)

    cache = tempfile.mkdtemp(prefix="hiseg-bench-cache-")
    try:
        say(f"[1/3] {n_envs}-worker vector env, fresh embedding cache ...")
        vec = run_bench(
            n_envs=n_envs, n_steps=n_steps, segmenter=segmenter, cache_dir=cache, seed=seed, n_cases=n_cases
        )
        say("[2/3] decoder alone, torch vs ONNX Runtime, FLOPs and matmul rate ...")
        dec = decoder_bench(segmenter, n=decoder_samples)
        single = {}
        for rt in ("onnx", "torch"):
            say(f"[3/3] one env, runtime={rt} ...")
            r = run_bench(
                n_envs=1,
                n_steps=n_steps,
                mode="sync",
                cache_dir=cache,
                seed=seed,
                n_cases=n_cases,
                segmenter=functools.partial(_build_with_runtime, segmenter, rt),
                torch_threads=None,
            )
            single[f"{rt}_env_step_ms"] = r["env_step_ms"]
            single[f"{rt}_decoder_ms"] = r["decoder_ms"]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    single["onnx_vs_limit"] = round(single["onnx_env_step_ms"] / dec["limit_ms"], 3)
    single["onnx_vs_eager"] = round(single["onnx_env_step_ms"] / single["torch_env_step_ms"], 3)
    return {
        "env_step_ms": vec["env_step_ms"],
        "decoder_ms": vec["decoder_ms"],
        "ratio": vec["ratio"],
        "encoder_calls": vec["encoder_calls"],
        "slices": vec["slices"],
        "runtime": dec["runtime"],
        "eager_decoder_ms": dec["eager_decoder_ms"],
        "onnx_decoder_ms": dec["onnx_decoder_ms"],
        "limit_ms": dec["limit_ms"],
        "flops": dec["flops"],
        "matmul_gflops": dec["matmul_gflops"],
        "single_env": single,
        "vector_env": {k: vec[k] for k in ("n_envs", "mode", "torch_threads", "samples", "wall_s")},
    }


def cohort_parity(
    segmenter_name: str = "litemedsam",
    n_cases: int | None = None,
    steps: int = 8,
    seed: int = 0,
    env_id: str = "hiseg_sim/NoduleSeg2D-v0",
) -> dict:
    """ONNX vs torch on every prompt of a default-cohort sweep through the environment.

    Each case gets one episode of ``steps`` actions (a jittered box around the viewport centre,
    then positive and negative clicks near it, as ``hiseg_sim.bench`` drives it); the environment
    builds each prompt (accumulated clicks, the previous mask fed back) and decodes it with ONNX
    Runtime; the same prompt on the same embedding is decoded again with PyTorch (decoder parity),
    and on the slice encoded by PyTorch too (the whole chain, for models whose ONNX runtime also
    runs the encoder).

    Returns ``{"prompts", "cases", "max_abs_logit_diff", "pct_identical_pixels",
    "min_pct_identical_one_prompt", "chain_max_abs_logit_diff", "chain_pct_identical_pixels"}``.
    """
    import hiseg_sim  # noqa: F401  (registers the ids)
    from hiseg_sim import segmenters
    from hiseg_sim.data.cohort import load_cohort
    from hiseg_sim.segmenters.perf import _max_diff

    seg = segmenters.build(segmenter_name, runtime="onnx")
    if seg.runtime != "onnx":
        raise RuntimeError("cohort_parity needs onnxruntime (pip install 'hiseg-sim[onnx]')")
    eager = segmenters.build(segmenter_name, runtime="torch", cache=segmenters.EmbeddingCache())
    slices: dict[str, tuple] = {}
    onnx_encode = seg.encode

    def recording_encode(image_hu, window=segmenters.LUNG_WINDOW):
        emb = onnx_encode(image_hu, window)
        slices[emb.key] = (np.array(image_hu, copy=True), window)
        return emb

    seg.encode = recording_encode  # this diagnostic's own segmenter: remember which slice each key is
    chain_worst, chain_same = 0.0, 0
    cases = load_cohort("default", limit=n_cases)
    env = gym.make(env_id, cases=cases, segmenter=seg, max_episode_steps=steps + 1)
    u = env.unwrapped
    rng = np.random.default_rng(seed)
    worst, same, total, n, min_frac = 0.0, 0, 0, 0, 1.0
    for i in range(len(cases)):
        env.reset(seed=seed + i, options={"case_index": i})
        size = int(env.action_space.nvec[1])
        c = size // 2
        for t in range(steps):
            if t == 0:
                r0, r1 = rng.integers(size // 10, size // 4, size=2)
                action = np.array([2, c - r0, c - r1, c + r1, c + r0], np.int64)
            else:
                x, y = np.clip(c + rng.integers(-size // 6, size // 6 + 1, size=2), 0, size - 1)
                action = np.array([int(rng.integers(0, 2)), x, y, 0, 0], np.int64)
            seg.set_runtime("onnx")
            env.step(action)
            if u.last_decode is None:
                continue
            emb, prompt = u.last_decode
            a = seg.decode(emb, prompt)
            seg.set_runtime("torch")
            b = seg.decode(emb, prompt)
            worst = max(worst, _max_diff(a, b))
            k = int((a.mask == b.mask).sum())
            same, total, n = same + k, total + a.mask.size, n + 1
            min_frac = min(min_frac, k / a.mask.size)
            e = eager.decode(eager.encode(*slices[emb.key]), prompt)
            chain_worst = max(chain_worst, float(np.abs(a.logits - e.logits).max()))
            chain_same += int((a.mask == e.mask).sum())
    seg.set_runtime("onnx")
    env.close()
    return {
        "prompts": n,
        "cases": len(cases),
        "max_abs_logit_diff": float(f"{worst:.3g}"),
        "pct_identical_pixels": round(100.0 * same / max(1, total), 4),
        "min_pct_identical_one_prompt": round(100.0 * min_frac, 4),
        "chain_max_abs_logit_diff": float(f"{chain_worst:.3g}"),
        "chain_pct_identical_pixels": round(100.0 * chain_same / max(1, total), 4),
    }
