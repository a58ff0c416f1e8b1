"""The annotation service: sessions of people, each with its own env, every action committed to the store.

Behind the HTTP routes of :mod:`hiseg_sim.annotate.app`, usable without them (tests, benchmarks).
One :class:`AnnotationService` holds the cases, one segmenter shared by every session's env, the
store, and the live sessions; every request runs under one lock, so the envs and the segmenter are
only ever used by one thread at a time (the prefetcher has its own segmenter).

A session that is not in memory (after a restart, or a failed write) is rebuilt from the store by
replaying its recorded actions in a fresh env, and checked: the replayed masks must equal the
masks recorded after the last action, so the person finds the same case, slice and masks.
"""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path
from typing import Any, cast

import numpy as np

from hiseg_sim.annotate.cases import cohort_label, load_annotation_cases
from hiseg_sim.annotate.export import mask_after
from hiseg_sim.annotate.schema import (
    FEEDBACK_MODES,
    ActionRecord,
    ActionRequest,
    EpisodeRecord,
    FeedbackMode,
    FeedbackView,
    NextRequest,
    SessionRecord,
    SessionState,
    SliceView,
    StartRequest,
)
from hiseg_sim.annotate.session import LiveSession
from hiseg_sim.annotate.store import SessionStore
from hiseg_sim.codec import pack_mask
from hiseg_sim.env.actions import action_from_dict
from hiseg_sim.env.encoding import encode_once
from hiseg_sim.seeding import episode_seed, sequence_rng, stable_int

__all__ = ["AnnotationService", "Conflict", "NotFound", "ResumeError", "study_feedback"]


class NotFound(LookupError):
    """No session of that id in the store."""


class Conflict(RuntimeError):
    """A request that does not fit where the session is (e.g. an action after Accept)."""


class ResumeError(RuntimeError):
    """A recorded session does not replay to its recorded masks in this server's env."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _read_plan(plan: dict | None) -> dict[str, list[tuple[str, int]]]:
    """``{participant: [(case key, seed), ...]}`` from a plan (see :class:`AnnotationService`)."""
    out: dict[str, list[tuple[str, int]]] = {}
    if not isinstance(plan or {}, dict):
        raise ValueError('a plan is {"<participant>": [{"case": KEY, "seed": N}, ...]}')
    for who, steps in (plan or {}).items():
        try:
            pairs = [(str(s["case"]), int(s["seed"])) if isinstance(s, dict) else (str(s[0]), int(s[1])) for s in steps]
        except (KeyError, IndexError, TypeError, ValueError):
            raise ValueError(f'plan of participant {who!r}: give a list of {{"case": KEY, "seed": N}}') from None
        keys = [k for k, _ in pairs]
        if not pairs or len(set(keys)) != len(keys):
            raise ValueError(f"plan of participant {who!r}: give each case once, at least one case")
        out[str(who)] = pairs
    return out


def study_feedback(study: str, group: str, default: str) -> tuple[FeedbackMode, int | None]:
    """``(feedback mode, practice cases)`` of ``group`` in ``study``.

    A study shipped in ``experiments/`` (``training_protocol`` ...) gives the arm labelled
    ``group``: its ``feedback`` and ``practice`` (feedback on the first ``practice`` nodules only).
    Any other study name gets ``default`` on every nodule.
    """
    from hiseg_sim.experiments.spec import load_spec, shipped_specs_dir

    path = shipped_specs_dir() / f"{study}.toml"
    if not path.is_file():
        return cast(FeedbackMode, default), None
    arms = {a.label: a for a in load_spec(path).annotators}
    if group not in arms:
        raise ValueError(f"group {group!r} is not a group of study {study!r}; use one of {', '.join(arms)}")
    return cast(FeedbackMode, arms[group].feedback), arms[group].practice


class AnnotationService:
    """Sessions of people annotating ``cohort`` with ``segmenter``, recorded in ``store_path``.

    Args:
        store_path: the SQLite session store (made if missing).
        cohort: a cohort name or the user's scans (:mod:`hiseg_sim.annotate.cases`).
        segmenter: a registry name, or a Segmenter object (then nothing is prefetched).
        env: ``"3d"`` (scroll and propagate; default) or ``"2d"`` (the key slice only).
        cases: Case objects to use instead of loading ``cohort`` (``cohort`` is then only a label).
        cache_dir: on-disk embedding cache (default :func:`hiseg_sim.segmenters.default_cache_dir` for a
            segmenter given by name; a Segmenter object keeps its own cache).
        feedback: the feedback of studies not shipped in ``experiments/``: none, score, worked_example.
        n_cases: nodules per session (default all).
        order: ``"cohort"`` (everyone in cohort order) or ``"shuffled"`` (a seeded order per person).
        plan: nodules fixed per participant id: ``{participant: [{"case": key, "seed": int}, ...]}``
            (or ``[key, seed]`` pairs). A participant in the plan gets exactly these cases in this
            order, each nodule reset with its seed (so its viewport and start slice are the ones a
            simulated person with that seed met; :mod:`hiseg_sim.annotate.replay`); ``order`` and
            ``n_cases`` apply to the others.
        prefetch: encode the slices next to the one in view in the background.
        env_kwargs: more ``gym.make`` arguments (``viewport_px``, ``max_slices`` ...).
        threads: intra-op threads of this process's models (:func:`hiseg_sim.segmenters.set_threads`);
            None leaves them as they are. One is what a person waits least for on two shared cores:
            a decode is not slowed by spin-waits, and the prefetcher encodes on the other core.
    """

    def __init__(
        self,
        store_path: str | Path,
        cohort: str = "default",
        segmenter: str | object = "litemedsam",
        *,
        env: str = "3d",
        cases: list | None = None,
        cache_dir: str | Path | None = None,
        feedback: str = "none",
        n_cases: int | None = None,
        order: str = "cohort",
        prefetch: bool = True,
        env_kwargs: dict | None = None,
        threads: int | None = None,
        plan: dict | None = None,
    ) -> None:
        from hiseg_sim.experiments.spec import ENV_ALIASES

        if feedback not in FEEDBACK_MODES:
            raise ValueError(f"feedback must be one of {', '.join(FEEDBACK_MODES)}; got {feedback!r}")
        if order not in ("cohort", "shuffled"):
            raise ValueError(f"order must be 'cohort' or 'shuffled'; got {order!r}")
        self.env_id = ENV_ALIASES.get(env, env)
        if self.env_id not in ENV_ALIASES.values():
            raise ValueError(f"env must be '2d' or '3d'; got {env!r}")
        self.cohort = cohort
        self.plan = _read_plan(plan)
        # Cohort order needs only the first n_cases cases; a shuffled order or a plan draws from them all.
        limit = n_cases if order == "cohort" and not self.plan else None
        self.cases = list(cases) if cases is not None else load_annotation_cases(cohort, limit=limit)
        self.case_keys = [c.case_id for c in self.cases]
        unknown = sorted({k for steps in self.plan.values() for k, _ in steps} - set(self.case_keys))
        if unknown:
            raise ValueError(
                f"the plan names case {unknown[0]!r}, which cohort {cohort!r} does not hold; "
                "serve the cohort the plan was made on"
            )
        self.n_cases = n_cases
        from hiseg_sim import segmenters  # after the cases: a wrong cohort is reported before torch loads

        if threads is not None:
            segmenters.set_threads(threads)

        if isinstance(segmenter, str):
            self.cache_dir: str | None = str(cache_dir if cache_dir is not None else segmenters.default_cache_dir())
            self.segmenter: Any = segmenters.build(segmenter, cache_dir=self.cache_dir)
            self.segmenter_name = segmenter
        else:  # an object keeps its own cache unless cache_dir is given
            self.cache_dir = None if cache_dir is None else str(cache_dir)
            self.segmenter = segmenter
            self.segmenter_name = str(getattr(segmenter, "name", type(segmenter).__name__))
        self.feedback, self.order = feedback, order
        self.env_kwargs = dict(env_kwargs or {})
        self.store = SessionStore(store_path)
        self._lock = threading.RLock()
        self._live: dict[str, LiveSession] = {}
        self._records: dict[str, SessionRecord] = {}
        self._next_seq: dict[str, int] = {}
        self._last_ms: dict[str, int] = {}
        self.prefetcher = None
        if prefetch and isinstance(segmenter, str):
            from hiseg_sim.annotate.prefetch import Prefetcher
            from hiseg_sim.segmenters.base import LUNG_WINDOW

            name, cdir = segmenter, self.cache_dir
            window = self.env_kwargs.get("window") or LUNG_WINDOW
            self.prefetcher = Prefetcher(lambda: segmenters.build(name, cache_dir=cdir, max_cached=4), window)

    # ---- env and sessions -------------------------------------------------------------------
    def make_env(self, segmenter: Any = None):
        """A fresh env like every session's: same cases, segmenter (or ``segmenter``), cache and arguments."""
        import gymnasium as gym

        import hiseg_sim  # noqa: F401 - registers the env ids

        seg = self.segmenter if segmenter is None else segmenter
        return gym.make(
            self.env_id, cases=self.cases, segmenter=seg, cache_dir=self.cache_dir, time_penalty=0.0, **self.env_kwargs
        )

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()
        with self._lock:
            for live in self._live.values():
                live.env.close()
            self._live.clear()
            self.store.close()

    def _session(self, session_id: str) -> tuple[SessionRecord, LiveSession | None]:
        if session_id not in self._records:
            self._load(session_id)
        return self._records[session_id], self._live.get(session_id)

    def _load(self, session_id: str) -> None:
        """Rebuild a session from the store: replay the actions of its current nodule."""
        rec = self.store.session(session_id)
        if rec is None:
            raise NotFound(f"no session {session_id!r} in {self.store.path}; start a new one")
        acts = self.store.actions(session_id)
        self._next_seq[session_id] = len(acts) + 1
        if rec.finished_ms is None:
            ep = self.store.episodes(session_id)[-1]
            if ep.case_key not in {c.case_id for c in self.cases}:
                raise ResumeError(
                    f"session {session_id} was recorded on case {ep.case_key!r}, which this "
                    f"server's cohort does not hold; start the server with the session's cohort "
                    f"({rec.cohort!r})"
                )
            live = LiveSession(self.make_env())
            live.resume(ep)
            mine = [a for a in acts if a.episode == ep.episode]
            for a in mine:
                live.apply(action_from_dict(a.action))
            self._last_ms[session_id] = mine[-1].client_ms if mine else ep.started_client_ms
            if mine:
                want = mask_after(mine[-1].model_dump(), ep.viewport)
                if not np.array_equal(want, live.slab_masks()) or live.z0 + live.current_slice != mine[-1].slice:
                    raise ResumeError(
                        f"session {session_id}: replaying its {len(mine)} actions on {ep.case_key} "
                        f"gives other masks than recorded; start the server with the session's "
                        f"segmenter ({rec.segmenter!r}) and cohort ({rec.cohort!r})"
                    )
            self._live[session_id] = live
            if live.ended:
                self._prefetch_next(rec, ep.episode + 1)
            else:
                self._prefetch(live)
        self._records[session_id] = rec

    def _forget(self, session_id: str) -> None:
        """Drop a session from memory (its next request rebuilds it from the store)."""
        live = self._live.pop(session_id, None)
        if live is not None:
            live.env.close()
        self._records.pop(session_id, None)

    def _prefetch_next(self, rec: SessionRecord, index: int) -> None:
        """While the person reads a nodule's feedback, encode where the next nodule will start."""
        if self.prefetcher is None or index >= len(rec.case_keys):
            return
        key, seed = rec.case_keys[index], self._seed(rec, rec.case_keys[index])

        def warm(segmenter: Any) -> None:
            scratch = LiveSession(self.make_env(segmenter))
            scratch.begin(seed, key)  # the reset encodes the start slice into the shared disk cache
            z = scratch.current_slice
            for k in (z + 1, z - 1):
                if 0 <= k < scratch.n_slices:
                    encode_once(segmenter, scratch.slice_hu(k), scratch.unwrapped.window)
            scratch.env.close()

        self.prefetcher.request_task(warm)

    def _prefetch(self, live: LiveSession) -> None:
        if self.prefetcher is None or live.ended:
            return
        z = live.current_slice
        ks = [k for k in (z, z + 1, z - 1) if 0 <= k < live.n_slices]
        self.prefetcher.request([live.slice_hu(k) for k in ks])

    # ---- state ------------------------------------------------------------------------------
    def _feedback_mode(self, rec: SessionRecord, episode: int) -> FeedbackMode:
        return rec.feedback if rec.practice is None or episode < rec.practice else "none"

    def _state(self, rec: SessionRecord, live: LiveSession | None, t0: float) -> SessionState:
        sid = rec.session_id
        base: dict[str, Any] = dict(
            session_id=sid,
            participant=rec.participant,
            group=rec.grp,
            study=rec.study,
            feedback_mode=rec.feedback,
            n_cases=len(rec.case_keys),
            next_seq=self._next_seq[sid],
        )
        if rec.finished_ms is not None or live is None or live.episode is None:
            return SessionState(
                **base,
                phase="done",
                case_index=len(rec.case_keys),
                step=0,
                n_slices=0,
                size=0,
                z0=0,
                server_ms=(time.perf_counter() - t0) * 1000,
            )
        ep = live.episode
        feedback = None
        if live.ended:
            mode = self._feedback_mode(rec, ep.episode)
            feedback = FeedbackView(mode=mode)
            if mode != "none":
                feedback.dice = float(live.info["dice"])
                feedback.seconds = (self._last_ms[sid] - ep.started_client_ms) / 1000.0
        ref = feedback is not None and feedback.mode == "worked_example"
        return SessionState(
            **base,
            phase="feedback" if live.ended else "annotating",
            case_index=ep.episode,
            case_key=ep.case_key,
            step=live.step_count,
            n_slices=live.n_slices,
            size=live.size,
            z0=live.z0,
            view=live.view(reference=ref),
            slices_with_mask=live.slices_with_mask(),
            iou_pred=float(live.info.get("iou_pred", 0.0)),
            invalid_action=str(live.info.get("invalid_action", "")),
            feedback=feedback,
            server_ms=(time.perf_counter() - t0) * 1000,
            decode_ms=live.decode_ms,
        )

    def state(self, session_id: str) -> SessionState:
        t0 = time.perf_counter()
        with self._lock:
            rec, live = self._session(session_id)
            return self._state(rec, live, t0)

    def view(self, session_id: str, k: int) -> SliceView:
        """Slab slice ``k`` with the person's mask: any slice once the nodule is accepted (with the
        reference in a worked-example feedback), else only the slice in view."""
        with self._lock:
            rec, live = self._session(session_id)
            if live is None or live.episode is None:
                raise Conflict(f"session {session_id} is finished; nothing to view")
            if not live.ended and k != live.current_slice:
                raise Conflict("while annotating, scroll with the slice actions; other slices are shown after Accept")
            ref = live.ended and self._feedback_mode(rec, live.episode.episode) == "worked_example"
            return live.view(k, reference=ref)

    # ---- requests ---------------------------------------------------------------------------
    def _seed(self, rec: SessionRecord, key: str) -> int:
        """The env seed of a nodule (its viewport and start slice): the plan's, else the person's,
        in the study, on that case."""
        planned = dict(self.plan.get(rec.participant, ()))
        if key in planned:
            return planned[key]
        return episode_seed(stable_int(rec.study), f"{rec.grp}/{rec.participant}", key, 0)

    def _begin_episode(self, rec: SessionRecord, live: LiveSession, index: int, client_ms: int) -> EpisodeRecord:
        key = rec.case_keys[index]
        seed = self._seed(rec, key)
        info = live.begin(seed, key)
        case = live.unwrapped.case
        ep = EpisodeRecord(
            session_id=rec.session_id,
            episode=index,
            case_key=key,
            seed=seed,
            viewport=info["viewport"],
            start_slice=live.z0 + live.current_slice,
            spacing_zyx=cast(tuple[float, float, float], tuple(float(s) for s in case.spacing_zyx)),
            shape_zyx=cast(tuple[int, int, int], tuple(int(n) for n in case.shape)),
            started_ms=_now_ms(),
            started_client_ms=int(client_ms),
        )
        live.episode = ep
        self._last_ms[rec.session_id] = int(client_ms)
        return ep

    def start(self, req: StartRequest) -> SessionState:
        """A new session for the person, or their unfinished one in this group and study."""
        t0 = time.perf_counter()
        with self._lock:
            old = self.store.open_session(req.participant, req.group, req.study)
            if old is not None:
                rec, live = self._session(old.session_id)
                return self._state(rec, live, t0)
            mode, practice = study_feedback(req.study, req.group, self.feedback)
            keys = list(self.case_keys)
            if req.participant in self.plan:
                keys = [k for k, _ in self.plan[req.participant]]
            else:
                if self.order == "shuffled":
                    rng = sequence_rng(stable_int(req.study), stable_int(req.participant) % 2**32)
                    keys = [keys[i] for i in rng.permutation(len(keys))]
                keys = keys[: self.n_cases]
            sid = uuid.uuid4().hex
            rec = SessionRecord(
                session_id=sid,
                participant=req.participant,
                grp=req.group,
                study=req.study,
                cohort=cohort_label(self.cohort),
                segmenter=self.segmenter_name,
                env_id=self.env_id,
                feedback=mode,
                practice=practice,
                case_keys=keys,
                created_ms=_now_ms(),
            )
            live = LiveSession(self.make_env())
            ep = self._begin_episode(rec, live, 0, req.client_ms)
            self.store.add_session(rec, ep)
            self._records[sid], self._live[sid], self._next_seq[sid] = rec, live, 1
            self._prefetch(live)
            return self._state(rec, live, t0)

    def act(self, session_id: str, req: ActionRequest) -> SessionState:
        """Step the person's env with one action and commit it (with its mask) before answering.

        A ``seq`` already recorded with the same action is answered with the current state (a retry,
        not acted twice); with another action it is a :class:`Conflict`.
        Raises :class:`Conflict` for a ``seq`` ahead of the store or an action after the nodule
        ended, and the env's ``InvalidActionError`` for an action outside its space (not recorded).
        """
        t0 = time.perf_counter()
        action = req.action.to_action()
        with self._lock:
            rec, live = self._session(session_id)
            expected = self._next_seq[session_id]
            if req.seq < expected:
                stored = self.store.action(session_id, req.seq)
                if stored is None or stored.action != req.action.model_dump(exclude_none=True):
                    raise Conflict(
                        f"action {req.seq} is already recorded as another action (a second tab?); reload the page"
                    )
                return self._state(rec, live, t0)  # a retry of an action already done
            if req.seq > expected:
                raise Conflict(f"action {req.seq} arrived before action {expected}; reload the page")
            if live is None or live.episode is None or live.ended:
                raise Conflict("this nodule is finished: press Next to go on")
            before = live.current_slice
            out = live.apply(action)
            packed = pack_mask(live.slab_masks(), (live.z0, 0, 0))
            px, py = req.pointer if req.pointer is not None else (None, None)
            record = ActionRecord(
                session_id=session_id,
                seq=req.seq,
                episode=live.episode.episode,
                step=live.step_count,
                client_ms=req.client_ms,
                server_ms=_now_ms(),
                pointer_x=px,
                pointer_y=py,
                action=req.action.model_dump(exclude_none=True),
                prompt=live.unwrapped.last_prompt,
                slice=live.z0 + live.current_slice,
                invalid_action=out.info["invalid_action"],
                dice=out.info["dice"],
                iou=out.info["iou"],
                iou_pred=out.info["iou_pred"],
                reward=out.reward,
                sim_seconds=out.info["seconds"],
                sim_seconds_total=out.info["seconds_total"],
                terminated=out.terminated,
                truncated=out.truncated,
                **packed,
            )
            try:
                self.store.add_action(record)
            except BaseException:
                self._forget(session_id)  # the env moved on without the store: rebuild from the store
                raise
            self._next_seq[session_id] = req.seq + 1
            self._last_ms[session_id] = req.client_ms
            if live.ended:
                self._prefetch_next(rec, live.episode.episode + 1)
            elif live.current_slice != before:
                self._prefetch(live)
            return self._state(rec, live, t0)

    def next(self, session_id: str, req: NextRequest) -> SessionState:
        """Leave a nodule's feedback for case ``req.case_index`` (or finish after the last)."""
        t0 = time.perf_counter()
        with self._lock:
            rec, live = self._session(session_id)
            if rec.finished_ms is not None or live is None or live.episode is None:
                return self._state(rec, live, t0)
            cur = live.episode.episode
            if req.case_index <= cur:
                return self._state(rec, live, t0)  # a retry of a Next already done
            if req.case_index > cur + 1 or not live.ended:
                raise Conflict(
                    f"cannot go to nodule {req.case_index + 1} from nodule {cur + 1}"
                    + ("" if live.ended else " before accepting it")
                    + "; reload the page"
                )
            if req.case_index >= len(rec.case_keys):
                self.store.finish_session(session_id, _now_ms())
                self._forget(session_id)
                rec, live = self._session(session_id)
                return self._state(rec, live, t0)
            try:
                self.store.add_episode(self._begin_episode(rec, live, req.case_index, req.client_ms))
            except BaseException:
                self._forget(session_id)
                raise
            self._prefetch(live)
            return self._state(rec, live, t0)
