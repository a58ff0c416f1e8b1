"""Executors side by side on one sweep: wall time, speed-up over serial, and whether the rows agree.

>>> from hiseg_sim.experiments.compare import compare_executors
>>> res = compare_executors("demo", ["serial", "process"], out_root="runs/bench")   # doctest: +SKIP
>>> res["speedup"]["process"], res["identical"]["process"]                           # doctest: +SKIP

Each executor runs the same spec from scratch into ``out_root/<executor>-<i>/`` with the same
embedding cache. ``warmup=True`` first runs the sweep once serially so every slice is in the
cache (the timings then measure the episodes, not the encoder). With ``rounds > 1`` the executors
alternate (serial, process, …, serial, process, …) so a change in the machine's load hits all of
them; the load average is recorded around each run, because on a shared machine it is part of
the result.

``efficiency`` sets each pool beside one thread: its throughput over ``workers`` x the
throughput of ``"serial:1"`` (the serial executor on one intra-op thread), on the same sweep.

:func:`ray_two_node_run` runs a study on a local Ray cluster of two one-CPU nodes on this machine
(``ray.cluster_utils.Cluster``) and checks its rows against a reference run; :func:`floor_run`
runs a study from a cold embedding cache on the process pool and sets its wall time beside its
compute floor, measured in the same run by the workers' own segmenters:
``floor = (distinct slices x encoder s/slice + decodes x decoder s/decode) / workers``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pandas as pd

from hiseg_sim.experiments.runner import run_study
from hiseg_sim.experiments.spec import StudySpec, load_spec

__all__ = ["compare_executors", "floor_run", "ray_two_node_run", "same_rows"]


def same_rows(a, b) -> bool:
    """Whether two runs have exactly the same episode and action rows."""
    try:
        pd.testing.assert_frame_equal(
            a.episodes.reset_index(drop=True), b.episodes.reset_index(drop=True), check_exact=True
        )
        pd.testing.assert_frame_equal(
            a.actions.reset_index(drop=True), b.actions.reset_index(drop=True), check_exact=True
        )
    except AssertionError:
        return False
    return True


def compare_executors(
    spec: StudySpec | str,
    executors=("serial", "process"),
    out_root: str | os.PathLike = "runs/bench",
    workers: int | None = None,
    cache_dir: str | None = None,
    rounds: int = 1,
    warmup: bool = True,
    progress: bool = False,
) -> dict:
    """Run ``spec`` on each executor (``rounds`` times, alternating) and compare.

    Returns ``{"runs": [{"executor", "round", "wall_s", "loadavg_before", "loadavg_after",
    "episodes"}], "median_s": {executor: s}, "speedup": {executor: serial median / its median},
    "speedup_vs_one_thread": {executor: "serial:1" median / its median} (None without "serial:1"),
    "efficiency": {executor: speedup_vs_one_thread / its workers} (None without "serial:1"),
    "identical": {executor: rows equal to the first executor's}, "cores": n, "episodes": n}``.

    An executor may be given as ``"name:threads"`` (e.g. ``"serial:1"``: one intra-op thread)
    to compare thread settings too.
    """
    if not isinstance(spec, StudySpec):
        spec = load_spec(spec)
    root = Path(out_root)
    if warmup:
        run_study(spec, root / "warmup", executor="serial", cache_dir=cache_dir, fresh=True, progress=progress)
    runs: list = []
    data: dict = {}
    last_data: dict = {}
    for r in range(int(rounds)):
        for ex in executors:
            name, _, th = ex.partition(":")
            before = list(os.getloadavg())
            t0 = time.perf_counter()
            d = run_study(
                spec,
                root / f"{name}{'-t' + th if th else ''}-{r}",
                executor=name,
                workers=workers,
                cache_dir=cache_dir,
                fresh=True,
                progress=progress,
                threads=int(th) if th else None,
            )
            wall = time.perf_counter() - t0
            runs.append(
                {
                    "executor": ex,
                    "round": r,
                    "wall_s": round(wall, 2),
                    "loadavg_before": [round(v, 2) for v in before],
                    "loadavg_after": [round(v, 2) for v in os.getloadavg()],
                    "episodes": len(d.episodes),
                    "workers": d.meta["sessions"][-1]["workers"],
                }
            )
            data.setdefault(ex, d)
            last_data[ex] = d
    df = pd.DataFrame(runs)
    med = df.groupby("executor")["wall_s"].median().to_dict()
    base = med.get("serial", next(iter(med.values())))
    from hiseg_sim.experiments.executors import available_cores

    one = {ex: med["serial:1"] / s for ex, s in med.items()} if "serial:1" in med else None
    n_workers = df.groupby("executor")["workers"].max().to_dict()
    return {
        "runs": runs,
        "median_s": med,
        "speedup": {ex: (base / s if base else float("nan")) for ex, s in med.items()},
        "speedup_vs_one_thread": one,
        "efficiency": ({ex: v / max(1, int(n_workers[ex])) for ex, v in one.items()} if one else None),
        "identical": {ex: same_rows(data[executors[0]], d) for ex, d in data.items()},
        "cores": available_cores(),
        "episodes": int(len(next(iter(data.values())).episodes)),
    }


def ray_two_node_run(
    spec: StudySpec | str,
    reference,
    out_dir: str | os.PathLike,
    cache_dir: str | None = None,
    nodes: int = 2,
    cpus_per_node: int = 1,
    progress: bool = False,
) -> dict:
    """Run ``spec`` on a local Ray cluster of ``nodes`` nodes of ``cpus_per_node`` CPUs each
    (``ray.cluster_utils.Cluster``, every node a raylet of its own on this machine) and compare
    its rows with ``reference`` (a :class:`~hiseg_sim.experiments.storage.RunData`).

    Returns ``{"identical", "nodes", "nodes_used", "wall_s", "episodes"}``; ``nodes_used`` is how
    many nodes ran at least one unit. Refused if this process is already connected to Ray.
    """
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        raise RuntimeError("ray_two_node_run starts its own cluster: call ray.shutdown() first")
    # node processes (and so their workers) inherit this environment: put the driver's import
    # path on it, as run_ray does for a local ray.init
    old_pp = os.environ.get("PYTHONPATH")
    paths = [os.getcwd()] + [p for p in sys.path if p and os.path.isdir(p)]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths + ([old_pp] if old_pp else [])))
    cluster = None
    try:
        cluster = Cluster(
            initialize_head=True,
            head_node_args={"num_cpus": cpus_per_node, "include_dashboard": False},
            shutdown_at_exit=True,
        )
        for _ in range(int(nodes) - 1):
            cluster.add_node(num_cpus=cpus_per_node)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        alive = [n for n in ray.nodes() if n.get("Alive")]
        t0 = time.perf_counter()
        d = run_study(spec, out_dir, executor="ray", cache_dir=cache_dir, fresh=True, progress=progress)
        wall = time.perf_counter() - t0
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if old_pp is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old_pp
    session = d.meta["sessions"][-1]
    return {
        "identical": same_rows(reference, d),
        "nodes": len(alive),
        "nodes_used": session.get("nodes_used"),
        "wall_s": round(wall, 2),
        "episodes": int(len(d.episodes)),
    }


def floor_run(
    spec: StudySpec | str,
    out_dir: str | os.PathLike,
    workers: int | None = None,
    pre_encode: bool | str = True,
    progress: bool = False,
) -> dict:
    """Run ``spec`` on the process pool from a cold (new, temporary) embedding cache and set its
    wall time beside its compute floor (see the module docstring).

    The encoder and decoder seconds per call are the workers' own, measured in this run (so the
    same load and threads as the wall time); ``slices`` are the distinct embeddings the episodes
    used, ``encoded`` how many the workers computed (pre-encoded slices no episode looked at
    included; ``encoded_by_episodes`` of them outside the plan), ``stored`` how many embeddings the
    cache holds at the end (``encoded`` when no slice was encoded twice). Returns ``{"wall_s",
    "floor_s", "floor_ratio", "slices", "encoded", "encoded_by_episodes", "stored", "decodes",
    "encoder_s_per_slice", "decoder_ms", "workers", "pre_encode", "loadavg_before", "loadavg_after",
    "episodes"}``.
    """
    import shutil
    import tempfile

    from hiseg_sim.experiments.executors import available_cores

    cache = tempfile.mkdtemp(prefix="hiseg-floor-cache-")
    before = [round(v, 2) for v in os.getloadavg()]
    try:
        t0 = time.perf_counter()
        d = run_study(
            spec,
            out_dir,
            executor="process",
            workers=workers,
            cache_dir=cache,
            fresh=True,
            progress=progress,
            pre_encode=pre_encode,
        )
        wall = time.perf_counter() - t0
        stored = len(list(Path(cache).glob("*/*.npz")))
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    session = d.meta["sessions"][-1]
    work, pre = session.get("work") or {}, session.get("pre_encode") or {}
    encoded = int(work.get("encoder_calls", 0)) + int(pre.get("encoder_calls", 0))
    enc_s = float(work.get("encoder_s", 0.0)) + float(pre.get("encoder_s", 0.0))
    decodes, dec_s = int(work.get("decoder_calls", 0)), float(work.get("decoder_s", 0.0))
    slices = int(session.get("slices_used") or encoded)
    per_slice = enc_s / encoded if encoded else 0.0
    per_decode = dec_s / decodes if decodes else 0.0
    n = int(session["workers"])
    floor = (slices * per_slice + decodes * per_decode) / max(1, min(n, available_cores()))
    return {
        "wall_s": round(wall, 2),
        "floor_s": round(floor, 2),
        "floor_ratio": round(wall / floor, 3) if floor else None,
        "slices": slices,
        "encoded": encoded,
        "encoded_by_episodes": int(work.get("encoder_calls", 0)),
        "stored": stored,
        "decodes": decodes,
        "encoder_s_per_slice": round(per_slice, 4),
        "decoder_ms": round(1e3 * per_decode, 2),
        "workers": n,
        "pre_encode": pre or None,
        "loadavg_before": before,
        "loadavg_after": [round(v, 2) for v in os.getloadavg()],
        "episodes": int(len(d.episodes)),
    }


def executor_bench(
    out_root: str | os.PathLike = "runs/bench_executors",
    rounds: int = 1,
    progress: bool = False,
    spec_2d: StudySpec | str = "bench_executors",
    spec_3d: StudySpec | str | None = "bench_3d",
    ray_nodes: bool = True,
    encoder_slices: int = 12,
) -> dict:
    """Everything ``hiseg-sim bench --executors --json`` reports, measured in one run.

    1. ``spec_2d`` on serial, serial on one thread, the process pool and Ray (if installed),
       warm cache: speed-ups, ``efficiency`` (the pool's), rows identical.
    2. ``spec_2d`` on a local Ray cluster of two one-CPU nodes: ``ray_two_node_identical``
       (None without Ray or with ``ray_nodes=False``).
    3. ``spec_3d`` from a cold cache on the process pool: ``floor_ratio`` (:func:`floor_run`).
    4. The image encoder options on ``encoder_slices`` phantom slices, one thread:
       ``encoder`` with ``before_ms`` (float32 ONNX Runtime), ``after_ms`` (the default encoder
       now) and each option's time and mask agreement
       (:func:`hiseg_sim.segmenters.perf.encoder_options_bench`).

    Each part is also written to ``out_root/bench_partial.json`` as soon as it is measured.
    """
    import importlib.util
    import json

    from hiseg_sim.experiments.storage import load_run

    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    partial: dict = {}

    def keep(name: str, value) -> None:  # each part on disk as soon as it is measured
        partial[name] = value
        (root / "bench_partial.json").write_text(json.dumps(partial, indent=1, default=str))

    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    load_start = [round(v, 2) for v in os.getloadavg()]
    has_ray = importlib.util.find_spec("ray") is not None
    names = ["serial", "serial:1", "process"] + (["ray"] if has_ray else [])
    say(f"[1/4] {', '.join(names)} on {spec_2d} ({rounds} round(s), warm cache) ...")
    ex = compare_executors(spec_2d, names, out_root=root, rounds=rounds, progress=progress)
    keep("executors", ex)
    two = None
    if has_ray and ray_nodes:
        say("[2/4] the same study on a local Ray cluster of two one-CPU nodes ...")
        two = ray_two_node_run(spec_2d, load_run(root / "serial-0"), root / "ray-two-node", progress=progress)
        one = ex["median_s"].get("serial:1")
        # each node's raylet is a session of its own: set its throughput beside one thread's too
        two["efficiency"] = round(one / (two["nodes"] * two["wall_s"]), 3) if one and two["wall_s"] else None
        keep("ray_two_node", two)
    floor = None
    if spec_3d is not None:
        say(f"[3/4] {spec_3d} on the process pool from a cold embedding cache ...")
        floor = floor_run(spec_3d, root / "floor-3d", progress=progress)
        keep("floor_3d", floor)
    say("[4/4] image encoder options against float32 ONNX Runtime on phantom slices ...")
    from hiseg_sim import segmenters
    from hiseg_sim.segmenters.perf import encoder_options_bench

    enc = encoder_options_bench(n_slices=encoder_slices, threads=1)
    default = str(getattr(segmenters.build("litemedsam"), "encoder", "torch"))  # weights already loaded above
    opts = enc["options"]
    encoder = {
        "default": default,
        "before_ms": opts["onnx"]["encoder_ms"],
        "after_ms": opts[default]["encoder_ms"] if opts.get(default, {}).get("available") else None,
        **enc,
    }
    return {
        "efficiency": (ex["efficiency"] or {}).get("process"),
        "ray_two_node_identical": None if two is None else two["identical"],
        "floor_ratio": None if floor is None else floor["floor_ratio"],
        "encoder_s_per_slice_before": round(encoder["before_ms"] / 1e3, 4),
        "encoder_s_per_slice_after": None if encoder["after_ms"] is None else round(encoder["after_ms"] / 1e3, 4),
        "executors": ex,
        "ray_two_node": two,
        "floor_3d": floor,
        "encoder": encoder,
        "loadavg_start": load_start,
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "targets": {"efficiency": ">= 0.85", "ray_two_node_identical": True, "floor_ratio": "<= 1.3"},
    }
