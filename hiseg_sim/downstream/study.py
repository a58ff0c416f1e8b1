"""The downstream study: label the training cases with simulated annotators, train the same net on
each label set, test on the holdout cohort's ground truth.

``hiseg-sim run experiments/downstream.toml`` (a spec of ``kind = "downstream"``) runs
:func:`run_downstream`; ``hiseg-sim report runs/<name>`` rebuilds its report from the saved results
(:func:`hiseg_sim.downstream.report.rebuild_report`). The training cases are the spec's ``[cases]``:
the shipped study uses :func:`hiseg_sim.downstream.pool.training_cases` (the 40 default-cohort
nodules and 120 more calibration-split phantoms), every one labelled by every annotator arm.

1. train (or load from the cache) every specialist the study's ``specialist_sam`` arms name, in
   this process, so the runner's workers only load weights;
2. :func:`hiseg_sim.experiments.run_study`: every arm on every training case (resumable rows in
   ``runs/<name>/shards``, the people and the specialists in the same tables);
3. label sets (:mod:`hiseg_sim.downstream.labels`): (a) ground truth, (b) expert + SAM,
   (c) ``crowd_k`` crowd workers + SAM fused by STAPLE, (d) one untrained non-medical person + SAM,
   (e) the specialist's pseudo-labels with uncertainty weights;
4. the same :class:`~hiseg_sim.downstream.unet.TinyUNet` trained on each set with the same seeds
   (two processes, one thread each), scored on the holdout cohort's key slice and ``test_neighbours``
   slices each side; Dice per test case averaged over its slices and the seeds;
5. bootstrap intervals over test cases, paired differences against (a), the specialist's Dice
   against its number of labelled cases, a Markdown report and figures in ``runs/<name>/``.

With ``[study] env = "3d"`` the annotators outline whole nodules and the labels are volumes
(:func:`~hiseg_sim.downstream.labels.build_label_volumes`: arms (a)–(d), the crowd fused by 3-D
STAPLE; the specialist annotator works on one slice and is not an arm of a 3-D study). The net
stays the 2-D :class:`~hiseg_sim.downstream.unet.TinyUNet`, trained on every slice of the volume
labels (nnU-Net's 2d configuration; a 3-D net of the same budget would see a handful of patches per
step on two cores); each holdout case is predicted slice by slice, the slices stacked, and scored in
3-D against the whole case's ground truth (Dice, NSD at 1 mm, relative volume error,
:func:`~hiseg_sim.downstream.training.volume_scores`). The report adds each label arm's simulated
annotation seconds per nodule (the crowd: its ``crowd_k`` workers added up).

``[analysis]`` settings (all optional): ``seeds`` ([0, 1]), ``train_steps`` (400), ``crowd_k`` (3),
``arms`` (table: ``expert``, ``crowd``, ``novice``, ``specialist`` → arm labels),
``test_cohort`` ("holdout", or a registered case source), ``test_neighbours`` (2),
``weight_floor`` (0.2), ``n_boot`` (2000), ``train_workers`` (2), ``train`` (table of other
:class:`~hiseg_sim.downstream.training.TrainConfig` fields).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import numpy as np
import pandas as pd

from hiseg_sim.codec import json_default
from hiseg_sim.downstream.labels import build_label_sets, build_label_volumes, label_quality
from hiseg_sim.downstream.slices import case_crops, crop_of, crop_origin
from hiseg_sim.downstream.specialist import SpecialistConfig, cohort_cases, labelled_ids, specialist_net, weights_path
from hiseg_sim.downstream.training import TrainConfig, dice_scores, train_unet, volume_scores

__all__ = [
    "DEFAULTS",
    "run_downstream",
    "train_and_test",
    "train_and_test_volumes",
    "specialist_curve",
    "arm_table",
    "annotation_seconds",
    "spec_is_three_d",
]

DEFAULTS = {
    "seeds": [0, 1],
    "train_steps": 400,
    "crowd_k": 3,
    "test_cohort": "holdout",
    "test_neighbours": 2,
    "weight_floor": 0.2,
    "n_boot": 2000,
    "train_workers": 2,
    "arms": {
        "expert": "expert_radiologist",
        "crowd": "crowd_worker",
        "novice": "non_medical",
        "specialist": "specialist_n8",
    },
}
ARM_TITLES = {
    "gt": "(a) ground truth",
    "expert": "(b) expert + SAM",
    "crowd": "(c) crowd (STAPLE) + SAM",
    "novice": "(d) non-medical + SAM",
    "specialist": "(e) specialist pseudo-labels",
}


def settings_of(spec) -> dict:
    s = dict(DEFAULTS)
    s.update({k: v for k, v in spec.analysis.items() if k != "arms"})
    s["arms"] = dict(DEFAULTS["arms"], **dict(spec.analysis.get("arms", {})))
    return s


def _specialists(spec) -> dict:
    """Arm label → the (untrained) :class:`SpecialistAnnotator` of every ``specialist_sam`` arm, built
    as the runner builds it (the registry's builder), so both train and load the same weights."""
    from hiseg_sim.downstream.specialist import build_specialist

    return {
        arm.label: build_specialist(**{k: v for k, v in arm.overrides.items() if k != "label"})
        for arm in spec.annotators
        if arm.name == "specialist_sam"
    }


def _specialist_configs(spec) -> dict[str, SpecialistConfig]:
    """Arm label → the specialist's config, for every ``specialist_sam`` arm."""
    return {k: a.config for k, a in _specialists(spec).items()}


def train_and_test(job: tuple) -> dict:
    """One training run: ``(arm, seed, images, targets, weights, cfg_dict, test_images, test_gts)`` →
    ``{"arm", "seed", "dice": per-slice test Dice, "train_s"}``. Top level: runs in a worker process."""
    arm, seed, x, y, w, cfg, xt, yt = job
    t0 = time.perf_counter()
    net = train_unet(x, y, w, TrainConfig(**cfg), seed=int(seed))
    train_s = time.perf_counter() - t0
    return {"arm": arm, "seed": int(seed), "dice": dice_scores(net, xt, yt).tolist(), "train_s": round(train_s, 2)}


def train_and_test_volumes(job: tuple) -> dict:
    """One training run on volume labels: ``(arm, seed, images, targets, weights, cfg_dict, test_volumes)``
    → ``{"arm", "seed", "scores": per test case {"dice", "nsd", "volume_error"}, "train_s"}``
    (:func:`~hiseg_sim.downstream.training.volume_scores`). Top level: runs in a worker process."""
    arm, seed, x, y, w, cfg, volumes = job
    t0 = time.perf_counter()
    net = train_unet(x, y, w, TrainConfig(**cfg), seed=int(seed))
    train_s = time.perf_counter() - t0
    return {"arm": arm, "seed": int(seed), "scores": volume_scores(net, volumes), "train_s": round(train_s, 2)}


def spec_is_three_d(spec) -> bool:
    """Whether the spec's env outlines whole nodules (its class says ``three_d``)."""
    import gymnasium as gym
    from gymnasium.envs.registration import load_env_creator

    import hiseg_sim.env  # noqa: F401  (registers the envs)

    return bool(getattr(load_env_creator(gym.spec(spec.env_id).entry_point), "three_d", False))


def annotation_seconds(episodes: pd.DataFrame, arms: dict, crowd_k: int) -> dict:
    """Simulated annotation seconds per nodule of each label arm: the mean over cases of the seconds
    of the episodes its labels come from (the first by replicate; the crowd: its first ``crowd_k``
    workers added up)."""
    out = {}
    for name, arm in arms.items():
        if arm is None:
            continue
        n = crowd_k if name == "crowd" else 1
        e = episodes[episodes["annotator"] == arm].sort_values(["case_id", "replicate"], kind="mergesort")
        per_case = e.groupby("case_id")["seconds_total"].apply(lambda v, n=n: float(v.head(n).sum()))
        out[name] = float(per_case.mean()) if len(per_case) else float("nan")
    return out


def _pretrain(job: tuple) -> str:
    """Train (and cache) one specialist: ``(SpecialistConfig, cache_dir)``. Top level: runs in a worker."""
    cfg, cache_dir = job
    specialist_net(cfg, cache_dir)
    return cfg.key()


def _map(fn, jobs: list, workers: int) -> list:
    """``[fn(j) for j in jobs]`` on up to ``workers`` spawned processes (in order; serial for one)."""
    from hiseg_sim.experiments.executors import map_ordered

    return list(map_ordered(fn, jobs, max(1, int(workers)), start_method="spawn"))


def arm_table(per_case: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per arm: mean test Dice with a bootstrap interval over cases, and the paired difference
    against ``gt`` (arm − gt) with its interval and two-sided bootstrap p. ``per_case`` has
    ``arm, case_id, dice`` (one row per arm and test case); with 3-D scores (``nsd``,
    ``volume_error``) also their means (``nsd``, ``abs_volume_error``: mean absolute relative)."""
    from hiseg_sim.analysis.stats import bootstrap_ci, paired_bootstrap

    df = per_case.assign(replicate=0)
    rows = []
    for arm in [a for a in ARM_TITLES if a in set(df["arm"])]:
        d = df[df["arm"] == arm]
        est, lo, hi = bootstrap_ci(d["dice"].to_numpy(), d["case_id"].to_numpy(), n_boot=n_boot, seed=seed)
        row = {"arm": arm, "title": ARM_TITLES[arm], "dice": est, "lo": lo, "hi": hi, "n_cases": int(len(d))}
        if "nsd" in d:  # 3-D scores
            row.update(nsd=float(d["nsd"].mean()), abs_volume_error=float(d["volume_error"].abs().mean()))
        if arm != "gt":
            pb = paired_bootstrap(df, "dice", "arm", arm, "gt", n_boot=n_boot, seed=seed)
            row.update(diff_vs_gt=pb["diff"], diff_lo=pb["lo"], diff_hi=pb["hi"], p_boot=pb["p_boot"])
        rows.append(row)
    return pd.DataFrame(rows)


def specialist_curve(
    episodes: pd.DataFrame,
    configs: dict[str, SpecialistConfig],
    cases,
    cohort_ids: dict,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """The specialist's Dice against its number of labelled cases, on the study's cases it was not
    trained on: the env-scored Dice of the prompted segmenter (``final_dice``) and of the
    specialist's own proposal (``proposal_dice``, in the same viewport), with bootstrap intervals.
    ``cohort_ids``: cohort name → its case ids (where each specialist's labelled cases were drawn)."""
    from hiseg_sim.analysis.stats import bootstrap_ci
    from hiseg_sim.downstream.pseudo import unpack_rounds
    from hiseg_sim.env.viewport import crop2d

    by_id = {c.case_id: c for c in cases}
    rows = []
    for label, cfg in sorted(configs.items(), key=lambda kv: kv[1].n_labelled):
        lab = set(labelled_ids(cohort_ids[cfg.cohort], cfg.n_labelled, cfg.seed))
        ep = episodes[(episodes["annotator"] == label) & ~episodes["case_id"].isin(lab)]
        prop = []
        for _, r in ep.iterrows():
            c, S = by_id[r["case_id"]], int(r["sp_size"])
            p = unpack_rounds(r["sp_proposal_bits"], (1, S, S))[0]
            g = crop2d(c.gt[c.key_slice], int(r["sp_vp_y0"]), int(r["sp_vp_x0"]), S, fill=False)
            full = int(c.gt[c.key_slice].sum())  # ground truth outside the viewport counts as missed (as the env)
            s = int(p.sum()) + full
            prop.append(1.0 if s == 0 else 2.0 * int((p & g).sum()) / s)
        for what, vals in (("final_dice", ep["final_dice"].to_numpy()), ("proposal_dice", np.asarray(prop))):
            est, lo, hi = bootstrap_ci(vals, ep["case_id"].to_numpy(), n_boot=n_boot, seed=seed)
            rows.append(
                {
                    "arm": label,
                    "n_labelled": cfg.n_labelled,
                    "what": what,
                    "dice": est,
                    "lo": lo,
                    "hi": hi,
                    "n_cases": int(ep["case_id"].nunique()),
                    "rounds": float(ep["sp_rounds"].mean()) if len(ep) else np.nan,
                }
            )
    return pd.DataFrame(rows)


def run_downstream(
    spec,
    out_dir=None,
    *,
    executor=None,
    workers=None,
    cache_dir=None,
    fresh: bool = False,
    progress: bool = True,
    max_units=None,
    report: bool = True,
) -> dict:
    """Run the whole study (see the module docstring); returns the summary written to ``downstream.json``."""
    from hiseg_sim.experiments.runner import plan_study, run_study
    from hiseg_sim.experiments.spec import StudySpec, load_spec

    spec = spec if isinstance(spec, StudySpec) else load_spec(spec)
    if spec.kind != "downstream":
        raise ValueError(f"{spec.name}: kind is {spec.kind!r}, not 'downstream'")
    st = settings_of(spec)
    three_d = spec_is_three_d(spec)
    if three_d and any(a.name == "specialist_sam" for a in spec.annotators):
        raise ValueError(
            f"{spec.name}: the specialist annotator (specialist_sam) labels one key slice; drop its arms "
            "from a 3-D study (env = '3d') or run the study in 2-D"
        )
    timings: dict[str, float] = {}
    plan = plan_study(spec, out_dir, executor=executor, workers=workers, cache_dir=cache_dir)
    run_dir = plan.run_dir
    t0 = time.perf_counter()
    train_ids = [c["case_id"] for c in plan.cases]
    specialists = _specialists(spec)
    configs = {k: a.config for k, a in specialists.items()}
    pools = {a.config.cohort: cohort_cases(a.config.cohort) for a in specialists.values()}
    # train here, once, before the runner starts (its workers only load the weights)
    todo = [(a.config, a.cache_dir) for a in specialists.values() if not weights_path(a.config, a.cache_dir).is_file()]
    _map(_pretrain, todo, int(st["train_workers"]))
    timings["specialists_s"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    data = run_study(
        spec,
        out_dir,
        executor=executor,
        workers=workers,
        cache_dir=cache_dir,
        fresh=fresh,
        progress=progress,
        max_units=max_units,
    )
    timings["annotation_s"] = time.perf_counter() - t1
    if data.meta.get("status") != "complete":
        return {"status": "partial", "run_dir": str(run_dir)}

    t2 = time.perf_counter()
    from hiseg_sim.experiments.cases import CaseSource

    train_cases = CaseSource(spec.cases).load(train_ids)
    labels_in = set(data.episodes["annotator"])
    arms = {
        "gt": None,
        **{k: st["arms"][k] for k in ("expert", "crowd", "novice", "specialist") if st["arms"].get(k) in labels_in},
    }
    sp_cfg = configs.get(st["arms"].get("specialist"))
    labelled = (
        set(labelled_ids([c.case_id for c in pools[sp_cfg.cohort]], sp_cfg.n_labelled, sp_cfg.seed))
        if sp_cfg
        else set()
    )
    if three_d:
        sets = build_label_volumes(data.episodes, train_cases, arms, int(st["crowd_k"]))
    else:
        sets = build_label_sets(
            data.episodes, train_cases, arms, int(st["crowd_k"]), labelled, float(st["weight_floor"])
        )
    lq = label_quality(sets)
    test_cases = cohort_cases(st["test_cohort"], allow_holdout=True)
    overlap = {c.case_id for c in test_cases} & set(train_ids)
    if overlap:
        raise ValueError(
            f"test cohort {st['test_cohort']!r} shares cases with the training cases: {sorted(overlap)[:5]}"
        )
    cfg = replace(TrainConfig(), **dict(st.get("train", {})), steps=int(st["train_steps"]), threads=1).to_dict()
    if three_d:
        volumes = []
        for c in test_cases:
            o = crop_origin(c, "test", 0)
            imgs = np.stack([crop_of(c.volume_hu[z], o) for z in range(c.shape[0])]).astype(np.float32)
            volumes.append((imgs, o, c.gt, tuple(float(v) for v in c.spacing_zyx)))
        n_test_slices = sum(c.shape[0] for c in test_cases)
        jobs = [
            (name, s, ls.images, ls.targets, ls.weights, cfg, volumes) for name, ls in sets.items() for s in st["seeds"]
        ]
        results = _map(train_and_test_volumes, jobs, int(st["train_workers"]))
        scores = pd.DataFrame(
            [
                {"arm": r["arm"], "seed": r["seed"], "case_id": test_cases[i].case_id, **sc}
                for r in results
                for i, sc in enumerate(r["scores"])
            ]
        )
        per_case = scores.groupby(["arm", "case_id"], as_index=False)[["dice", "nsd", "volume_error"]].mean()
    else:
        crops = [cr for c in test_cases for cr in case_crops(c, "test", 0, int(st["test_neighbours"]))]
        xt = np.stack([c.image_hu for c in crops])
        yt = np.stack([c.gt for c in crops])
        test_case_of = [c.case_id for c in crops]
        n_test_slices = len(crops)
        jobs = [
            (name, s, ls.images, ls.targets, ls.weights, cfg, xt, yt) for name, ls in sets.items() for s in st["seeds"]
        ]
        results = _map(train_and_test, jobs, int(st["train_workers"]))
        slices = pd.DataFrame(
            [
                {"arm": r["arm"], "seed": r["seed"], "case_id": test_case_of[i], "dice": d}
                for r in results
                for i, d in enumerate(r["dice"])
            ]
        )
        per_case = slices.groupby(["arm", "case_id"], as_index=False)["dice"].mean()
    timings["downstream_training_s"] = time.perf_counter() - t2

    table = arm_table(per_case, int(st["n_boot"]))
    curve = pd.DataFrame()
    if configs:
        pool = [c for cs in pools.values() for c in cs]
        by_id = {c.case_id: c for c in pool}
        by_id.update({c.case_id: c for c in train_cases})
        curve = specialist_curve(
            data.episodes,
            configs,
            list(by_id.values()),
            {k: [c.case_id for c in v] for k, v in pools.items()},
            int(st["n_boot"]),
        )
    people = data.episodes.groupby("annotator")["final_dice"].agg(["mean", "count"]).reset_index()
    timings["total_s"] = time.perf_counter() - t0
    summary = {
        "study": spec.name,
        "status": "complete",
        "run_dir": str(run_dir),
        "settings": st,
        "train_cases": len(train_cases),
        "test_cases": len(test_cases),
        "test_slices": n_test_slices,
        "train_source": {"cohort": spec.cases.cohort, "source": spec.cases.source, "kwargs": dict(spec.cases.kwargs)},
        "train_config": cfg,
        "labelled_for_specialist": sorted(labelled),
        "table": _records(table),
        "label_quality": lq.groupby("arm")["dice"].mean().to_dict(),
        "label_area_ratio": lq.groupby("arm")["area_ratio"].median().to_dict(),
        "test_misses": per_case.assign(miss=per_case["dice"] < 0.1).groupby("arm")["miss"].mean().to_dict(),
        "curve": _records(curve),
        "annotators": people.to_dict("records"),
        "train_runs": [{k: r[k] for k in ("arm", "seed", "train_s")} for r in results],
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "annotation_sessions": data.meta.get("sessions", []),
        "cpu_count": os.cpu_count(),
    }
    if three_d:
        summary["scored"] = "3d"
        summary["train_slices"] = int(len(sets["gt"].case_ids))
        summary["annotation_seconds"] = annotation_seconds(data.episodes, arms, int(st["crowd_k"]))
    run_dir.mkdir(parents=True, exist_ok=True)
    per_case.to_csv(run_dir / "downstream_per_case.csv", index=False)
    lq.to_csv(run_dir / "downstream_label_quality.csv", index=False)
    from hiseg_sim.downstream.report import example_sets, save_examples

    save_examples(example_sets(sets), run_dir / "downstream_examples.npz")
    (run_dir / "downstream.json").write_text(json.dumps(summary, indent=2, default=json_default))
    if report:
        from hiseg_sim.downstream.report import write_report

        summary["report"] = str(write_report(run_dir, summary, per_case, lq, curve, sets))
    return summary


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as dicts with ``None`` for missing values (NaN is not JSON)."""
    return [
        {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in r.items()}
        for r in df.to_dict("records")
    ]


def print_summary(summary: dict, echo=print) -> None:
    """The (a)–(e) table, the specialist curve and the report's path, as lines for a terminal."""
    if summary.get("status") != "complete":
        echo(f"study not complete yet (rows in {summary.get('run_dir')}): run the same command again to resume")
        return
    for r in summary["table"]:
        gap = "" if r["arm"] == "gt" else f"  Δ vs GT {r['diff_vs_gt']:+.3f} [{r['diff_lo']:+.3f}, {r['diff_hi']:+.3f}]"
        echo(f"{r['title']:>30}: test Dice {r['dice']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]{gap}")
    for r in summary["curve"]:
        if r["what"] == "final_dice":
            echo(
                f"{'specialist, ' + str(r['n_labelled']) + ' labelled':>30}: Dice {r['dice']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]"
                f" on {r['n_cases']} cases"
            )
    echo(f"timings: {summary['timings_s']}")
    if summary.get("report"):
        echo(f"report: {summary['report']}")
