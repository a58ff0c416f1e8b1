"""Recorded sessions out of the store: env traces (JSON lines) that replay, and Parquet tables.

:func:`trace_records` gives one record per action with exactly the keys of the harness's traces
(:data:`hiseg_sim.env.trace.TRACE_FIELDS` plus ``iou``), so :func:`hiseg_sim.env.trace.replay` and
everything fitted to simulated traces read them. For a person:

- ``annotator`` is the participant id (pseudonymous), ``episode`` the nodule's place in the session;
- ``seconds`` / ``seconds_total`` are the person's *wall-clock* seconds (page clock) since the
  previous action / since the nodule was shown, not the env's simulated seconds (those are the
  Parquet columns ``sim_seconds`` / ``sim_seconds_total``);
- ``perceived_quality`` is ``None`` (nobody is asked).

:func:`actions_frame` is the full table: the trace fields (nested ones as JSON text), the session's
participant, group and study, the wall-clock times, the pointer ``(x, y)`` in viewport pixels and
the slab's mask after each action, bit-packed (``mask_*`` columns of :func:`hiseg_sim.codec.pack_mask`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hiseg_sim.annotate.store import SessionStore
from hiseg_sim.codec import jsonable, unpack_mask
from hiseg_sim.env.actions import action_from_dict
from hiseg_sim.env.trace import ReplayMismatch, write_trace

__all__ = ["actions_frame", "check_replay", "mask_after", "trace_records", "write_parquet", "write_trace_jsonl"]

_EXTRA = (
    "session_id",
    "seq",
    "participant",
    "group",
    "study",
    "client_ms",
    "server_ms",
    "pointer_x",
    "pointer_y",
    "slice",
    "sim_seconds",
    "sim_seconds_total",
    "mask_z0",
    "mask_y0",
    "mask_x0",
    "mask_dz",
    "mask_dy",
    "mask_dx",
    "mask_bits",
)


def _open(store: SessionStore | str | Path) -> tuple[SessionStore, bool]:
    return (store, False) if isinstance(store, SessionStore) else (SessionStore(store), True)


def _rows(store: SessionStore, session_id: str) -> list[tuple[dict, dict]]:
    """``(trace record, extra columns)`` per action of one session, in order."""
    sess = store.session(session_id)
    if sess is None:
        raise LookupError(f"no session {session_id!r} in {store.path}; list them with SessionStore(path).sessions()")
    eps = {e.episode: e for e in store.episodes(session_id)}
    out = []
    prev: dict[int, int] = {}
    for a in store.actions(session_id):
        ep = eps[a.episode]
        before = prev.get(a.episode, ep.started_client_ms)
        prev[a.episode] = a.client_ms
        rec = {
            "env": sess.env_id,
            "case": ep.case_key,
            "annotator": sess.participant,
            "episode": ep.episode,
            "seed": ep.seed,
            "viewport": dict(ep.viewport),
            "start_slice": ep.start_slice,
            "step": a.step,
            "action": dict(a.action),
            "prompt": a.prompt,
            "seconds": (a.client_ms - before) / 1000.0,
            "seconds_total": (a.client_ms - ep.started_client_ms) / 1000.0,
            "reward": a.reward,
            "dice": a.dice,
            "iou": a.iou,
            "iou_pred": a.iou_pred,
            "invalid_action": a.invalid_action,
            "perceived_quality": None,
            "terminated": a.terminated,
            "truncated": a.truncated,
        }
        extra = {k: getattr(a, k) for k in _EXTRA if hasattr(a, k)}
        extra.update(participant=sess.participant, group=sess.grp, study=sess.study)
        out.append((rec, extra))
    return out


def trace_records(store: SessionStore | str | Path, session_id: str) -> list[dict]:
    """The session as env trace records (see the module docstring), in action order."""
    st, own = _open(store)
    try:
        return [rec for rec, _ in _rows(st, session_id)]
    finally:
        if own:
            st.close()


def write_trace_jsonl(store: SessionStore | str | Path, session_id: str, path: str | Path) -> int:
    """Write the session's trace as JSON lines (replaces ``path``); returns the number of records."""
    return write_trace(trace_records(store, session_id), path, append=False)


def actions_frame(store: SessionStore | str | Path, session_id: str | None = None) -> pd.DataFrame:
    """One row per action of one session (or of every session), trace fields and the extra columns."""
    st, own = _open(store)
    try:
        ids = [session_id] if session_id is not None else [s.session_id for s in st.sessions()]
        rows = []
        for sid in ids:
            for rec, extra in _rows(st, sid):
                row = {k: jsonable(v) if k in ("viewport", "action", "prompt") else v for k, v in rec.items()}
                row.update(extra)
                rows.append(row)
        return pd.DataFrame(rows)
    finally:
        if own:
            st.close()


def write_parquet(store: SessionStore | str | Path, path: str | Path, session_id: str | None = None) -> int:
    """Write :func:`actions_frame` to a Parquet file; returns the number of rows."""
    df = actions_frame(store, session_id)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return len(df)


def mask_after(row, viewport: dict) -> np.ndarray:
    """``bool`` ``(n_slices, size, size)``: the slab's masks recorded after one action.

    Args:
        row: an :class:`~hiseg_sim.annotate.schema.ActionRecord` dump or a row of :func:`actions_frame`
            (its ``mask_*`` fields).
        viewport: the nodule's viewport (``z0``, ``n_slices``, ``size``), as in the trace.
    """
    crop, (z, y, x) = unpack_mask(row)
    n, size = int(viewport["n_slices"]), int(viewport["size"])
    out = np.zeros((n, size, size), bool)
    dz = z - int(viewport["z0"])
    out[dz : dz + crop.shape[0], y : y + crop.shape[1], x : x + crop.shape[2]] = crop
    return out


def check_replay(store: SessionStore | str | Path, session_id: str, env) -> int:
    """Replay the session in ``env`` and check every action's masks; returns the actions checked.

    ``env`` is made like the session's (same env id, cases from the same cohort, same segmenter;
    :meth:`hiseg_sim.annotate.service.AnnotationService.make_env` makes one). Each nodule is reset
    on its recorded case, viewport and start slice, each action stepped; after each, the slab's
    masks must equal the recorded ones bit for bit, and the Dice the recorded Dice.

    Raises:
        ReplayMismatch: naming the first action whose masks or Dice differ.
    """
    st, own = _open(store)
    try:
        rows = _rows(st, session_id)
    finally:
        if own:
            st.close()
    u = env.unwrapped
    current = None
    for rec, extra in rows:
        if rec["episode"] != current:
            current = rec["episode"]
            options = {"case_id": rec["case"], "viewport": rec["viewport"]}
            if rec["viewport"]["n_slices"] > 1:
                options["start_slice"] = rec["start_slice"]
            env.reset(seed=rec["seed"], options=options)
        _, _, _, _, info = env.step(action_from_dict(rec["action"]))
        where = f"session {session_id}, nodule {rec['episode'] + 1} ({rec['case']}), action {rec['step']}"
        if not np.array_equal(u.slab_masks(), mask_after(extra, rec["viewport"])):
            raise ReplayMismatch(
                f"{where}: the replayed masks differ from the recorded ones; replay with the "
                "session's cohort and segmenter"
            )
        if abs(float(info["dice"]) - float(rec["dice"])) > 1e-9:
            raise ReplayMismatch(f"{where}: replayed Dice {info['dice']:.6f}, recorded {rec['dice']:.6f}")
    return len(rows)
