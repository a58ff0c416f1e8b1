"""Recorded sessions as the fit reads them: one JSON-lines trace per person, in the env's trace format.

A *sessions directory* holds one ``*.jsonl`` file per session, each line one trace record
(:mod:`hiseg_sim.env.trace`): what the annotation page exports per session
(``/api/sessions/<id>/trace.jsonl``, :func:`hiseg_sim.annotate.export.write_trace_jsonl`) and what
``hiseg-sim simulate --traces DIR`` writes per simulated person (:func:`write_run_sessions`).
Within a file, ``episode`` is the nodule's place in the person's session (0, 1, ...): the fit
reads the practice count from it. ``annotator`` is the participant id.

:func:`write_run_sessions` turns a run of a ``sequence`` study (each replicate one person
working through the cases in order) into such files. The run's tables keep every action but not
the viewport of each episode; it is rebuilt from the episode's seed with the env's own draws
(:func:`hiseg_sim.env.viewport.place_viewport`), which is how the run chose it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hiseg_sim.env.sessions import Episode, Session, SessionsError, read_sessions

__all__ = ["Episode", "Session", "SessionsError", "read_sessions", "write_run_sessions"]


def _decode(v):
    if isinstance(v, str) and v[:1] in "{[":
        return json.loads(v)
    return v


def _viewport(u, case, seed: int) -> tuple[dict, int]:
    """The viewport and start slice the env's ``reset(seed, case_id)`` chooses, without encoding a
    slice: the same draws in the same order (:meth:`hiseg_sim.env.core.NoduleSegEnv.reset`)."""
    from gymnasium.utils import seeding

    from hiseg_sim.env.viewport import Viewport, place_viewport, slab_range

    rng, _ = seeding.np_random(int(seed))
    key = case.key_slice
    y0, x0 = place_viewport(case.gt[key], case.spacing_zyx[1:], u.size, rng, u.detection_sd_mm, u.pan_step_px)
    if u.three_d:
        z0, n = slab_range(case.shape[0], key, u.max_slices)
        zs = case.gt_slices
        sd = u.detection_sd_mm / case.spacing_zyx[0]
        start = int(np.clip(key + round(float(rng.normal(0.0, sd))), zs[0], zs[-1]))
        start = int(np.clip(start, z0, z0 + n - 1))
    else:
        z0, n, start = key, 1, key
    return Viewport(z0, n, y0, x0, u.size).to_dict(), start


def write_run_sessions(run_dir: str | Path, out_dir: str | Path, cache_dir: str | None = None) -> list[Path]:
    """Write each person (arm, replicate) of a ``sequence`` run as one session file in ``out_dir``.

    Files are named ``<arm>-p<replicate>.jsonl``; the participant id is the same text. Returns the
    paths written (existing files of the same names are replaced).
    """
    import gymnasium as gym

    from hiseg_sim.experiments.cases import CaseSource
    from hiseg_sim.experiments.spec import spec_from_dict
    from hiseg_sim.experiments.storage import load_run

    data = load_run(run_dir)
    spec = spec_from_dict(data.spec) if isinstance(data.spec, dict) else data.spec
    eps = data.episodes.sort_values(["annotator", "replicate", "position"])
    acts = data.actions
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    src = CaseSource(spec.cases)
    ids = sorted(set(eps["case_id"]))
    cases = src.load(ids)
    by_case = {c.case_id: c for c in cases}
    written: list[Path] = []
    seg_name = str(eps["segmenter"].iloc[0]) if "segmenter" in eps else "litemedsam"
    env = gym.make(spec.env_id, cases=cases, segmenter=seg_name.split("@")[0], cache_dir=cache_dir, **spec.env_kwargs)
    env_id = str(getattr(env.unwrapped, "env_id", spec.env_id))
    try:
        by_ep = {k: g.sort_values("step") for k, g in acts.groupby(["annotator", "replicate", "case_id"])}
        for (arm, rep), person in eps.groupby(["annotator", "replicate"], sort=True):
            pid = f"{Path(arm).stem if arm.endswith('.toml') or '/' in arm else arm}-p{int(rep)}"
            lines = []
            for _, ep in person.sort_values("position").iterrows():
                vp, start = _viewport(env.unwrapped, by_case[ep["case_id"]], int(ep["seed"]))
                rows = by_ep.get((arm, rep, ep["case_id"]))
                if rows is None:
                    continue
                for _, r in rows.iterrows():
                    rec = {
                        "env": env_id,
                        "case": ep["case_id"],
                        "annotator": pid,
                        "episode": int(ep["position"]),
                        "seed": int(ep["seed"]),
                        "viewport": vp,
                        "start_slice": start,
                        "step": int(r["step"]),
                        "action": _decode(r["action"]),
                        "prompt": _decode(r["prompt"]),
                        "seconds": float(r["seconds"]),
                        "seconds_total": float(r["seconds_total"]),
                        "reward": float(r["reward"]),
                        "dice": float(r["dice"]),
                        "iou": None if r.get("iou") is None else float(r["iou"]),
                        "iou_pred": None if r.get("iou_pred") is None else float(r["iou_pred"]),
                        "invalid_action": str(r["invalid_action"] or ""),
                        "perceived_quality": None
                        if r.get("perceived_quality") is None
                        else float(r["perceived_quality"]),
                        "terminated": bool(r["terminated"]),
                        "truncated": bool(r["truncated"]),
                    }
                    lines.append(json.dumps(rec, sort_keys=True))
            path = out / f"{pid}.jsonl"
            path.write_text("\n".join(lines) + "\n")
            written.append(path)
    finally:
        env.close()
    return written
