"""The annotation service without a browser: sessions are envs, every action is stored, sessions resume,
exports replay. TEST STUB segmenter (``stub_env``) on the synthetic cases: the model does not matter here."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from hiseg_sim.annotate.export import actions_frame, check_replay, trace_records, write_parquet, write_trace_jsonl
from hiseg_sim.annotate.schema import ActionIn, ActionRequest, NextRequest, StartRequest
from hiseg_sim.annotate.service import AnnotationService, Conflict, NotFound
from hiseg_sim.env.actions import InvalidActionError
from hiseg_sim.env.trace import TRACE_FIELDS, read_trace, replay


def _service(tmp_path, **kw):
    kw.setdefault("prefetch", False)
    return AnnotationService(
        tmp_path / "s.sqlite", "stub_synthetic_cases", "stub_env", cache_dir=tmp_path / "cache", **kw
    )


def _bits(b64: str, size: int) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(base64.b64decode(b64), np.uint8), count=size * size)
    return bits.astype(bool).reshape(size, size)


class Person:
    """Sends actions as the page does: numbered, with the page clock and the pointer."""

    def __init__(self, svc, participant="p01", group="g1", study="pilot"):
        self.svc, self.ms = svc, 1_000
        self.state = svc.start(StartRequest(participant=participant, group=group, study=study, client_ms=self.ms))

    def act(self, **action):
        self.ms += 700
        pointer = (action["x"], action["y"]) if action["kind"] == "point" else None
        req = ActionRequest(seq=self.state.next_seq, action=ActionIn(**action), client_ms=self.ms, pointer=pointer)
        self.state = self.svc.act(self.state.session_id, req)
        return self.state

    def next(self):
        self.ms += 2_000
        self.state = self.svc.next(
            self.state.session_id, NextRequest(case_index=self.state.case_index + 1, client_ms=self.ms)
        )
        return self.state


def _work_one_nodule(p: Person) -> None:
    p.act(kind="box", x0=30, y0=30, x1=66, y1=66)
    p.act(kind="point", x=50.5, y=44.25, positive=True)
    p.act(kind="point", x=38, y=36, positive=False)
    p.act(kind="undo")
    p.act(kind="propagate", direction=1)
    p.act(kind="next")
    p.act(kind="prev")
    p.act(kind="prev")
    p.act(kind="accept")


def test_what_the_page_is_shown_is_the_env(tmp_path):
    svc = _service(tmp_path)
    p = Person(svc)
    s = p.act(kind="box", x0=30, y0=30, x1=66, y1=66)
    live = svc._live[s.session_id]
    u = live.env.unwrapped
    assert s.phase == "annotating" and s.case_key == "synth-0" and s.size == 96
    np.testing.assert_array_equal(_bits(s.view.mask, 96), u.current_mask())
    image = np.frombuffer(base64.b64decode(s.view.image), np.uint8).reshape(96, 96)
    np.testing.assert_array_equal(image, live.obs["image"][0])
    assert s.view.prompts.box == (30.0, 30.0, 66.0, 66.0) and s.view.prompts.points == []
    s = p.act(kind="point", x=38, y=36, positive=False)
    assert s.view.prompts.points == [(38.0, 36.0, 0)]
    s = p.act(kind="propagate", direction=1)
    assert s.view.slice == u.current_slice == live.current_slice and len(s.slices_with_mask) == 2
    s = p.act(kind="undo")  # undoes the propagation on this slice: the page shows the slice's own (empty) state
    assert not _bits(s.view.mask, 96).any() and s.view.prompts.box is None


def test_every_action_is_stored_with_its_mask_and_replays_to_the_same_masks(tmp_path):
    svc = _service(tmp_path)
    p = Person(svc)
    _work_one_nodule(p)
    assert p.state.phase == "feedback"
    p.next()
    p.act(kind="box", x0=50, y0=14, x1=90, y1=46)
    sid = p.state.session_id
    rows = svc.store.actions(sid)
    assert [r.seq for r in rows] == list(range(1, 11)) and p.state.next_seq == 11
    assert [r.action["kind"] for r in rows] == [
        "box",
        "point",
        "point",
        "undo",
        "propagate",
        "next",
        "prev",
        "prev",
        "accept",
        "box",
    ]
    assert rows[1].pointer_x == 50.5 and rows[1].pointer_y == 44.25 and rows[0].pointer_x is None
    assert rows[8].terminated and [r.episode for r in rows] == [0] * 9 + [1]
    assert check_replay(svc.store, sid, svc.make_env()) == 10


def test_a_retried_action_is_not_applied_twice_and_a_gap_is_refused(tmp_path):
    svc = _service(tmp_path)
    p = Person(svc)
    s = p.act(kind="box", x0=30, y0=30, x1=66, y1=66)
    box = ActionIn(kind="box", x0=30, y0=30, x1=66, y1=66)
    again = svc.act(s.session_id, ActionRequest(seq=1, action=box, client_ms=5, pointer=None))
    assert again.next_seq == 2 and again.view == s.view
    with pytest.raises(Conflict, match="already recorded as another action"):
        svc.act(s.session_id, ActionRequest(seq=1, action=ActionIn(kind="undo"), client_ms=5, pointer=None))
    with pytest.raises(Conflict, match="arrived before action 2; reload the page"):
        svc.act(s.session_id, ActionRequest(seq=5, action=ActionIn(kind="undo"), client_ms=5, pointer=None))
    assert svc.store.count_actions(s.session_id) == 1


def test_an_action_outside_the_viewport_is_refused_and_not_stored(tmp_path):
    svc = _service(tmp_path)
    p = Person(svc)
    with pytest.raises(InvalidActionError, match="outside the 96x96 viewport"):
        p.act(kind="point", x=120, y=10, positive=True)
    assert svc.store.count_actions(p.state.session_id) == 0
    assert p.act(kind="box", x0=30, y0=30, x1=66, y1=66).next_seq == 2


@pytest.mark.parametrize("where", ["mid_nodule", "feedback", "second_nodule"])
def test_a_restarted_server_resumes_the_same_case_slice_and_masks(tmp_path, where):
    svc = _service(tmp_path, feedback="worked_example")
    p = Person(svc)
    if where == "mid_nodule":
        p.act(kind="box", x0=30, y0=30, x1=66, y1=66)
        p.act(kind="propagate", direction=-1)
        p.act(kind="point", x=48, y=50, positive=True)
    else:
        _work_one_nodule(p)
        if where == "second_nodule":
            p.next()
            p.act(kind="next")
    before = p.state
    svc.close()
    resumed = _service(tmp_path).state(before.session_id)
    timing = {"server_ms", "decode_ms"}
    assert resumed.model_dump(exclude=timing) == before.model_dump(exclude=timing)
    # the same person starting again lands in the same session
    again = _service(tmp_path).start(StartRequest(participant="p01", group="g1", study="pilot", client_ms=0))
    assert again.session_id == before.session_id and again.view == before.view


def test_a_session_ends_after_its_nodules_and_is_then_done(tmp_path):
    svc = _service(tmp_path, n_cases=2)
    p = Person(svc)
    for _ in range(2):
        _work_one_nodule(p)
        p.next()
    assert p.state.phase == "done" and p.state.case_index == 2
    assert p.next().phase == "done"  # a repeated Finish is harmless
    assert _service(tmp_path).state(p.state.session_id).phase == "done"
    with pytest.raises(Conflict):
        p.act(kind="undo")
    new = Person(svc)  # a finished session is not resumed: the person starts a new one
    assert new.state.session_id != p.state.session_id and new.state.case_index == 0


def test_feedback_follows_the_study_arm_or_the_default(tmp_path):
    svc = _service(tmp_path, feedback="none")
    shipped = Person(svc, group="non_medical+worked_example", study="training_protocol")
    _work_one_nodule(shipped)
    fb = shipped.state.feedback
    assert shipped.state.feedback_mode == "worked_example" and fb.mode == "worked_example"
    assert 0.0 <= fb.dice <= 1.0 and fb.seconds == pytest.approx(9 * 0.7)
    ref = _bits(shipped.state.view.reference, 96)
    u = svc._live[shipped.state.session_id].env.unwrapped
    np.testing.assert_array_equal(ref, u.scoring_reference()[shipped.state.view.slice])
    other = svc.view(shipped.state.session_id, 0)  # after Accept any slice may be looked at
    assert other.slice == 0 and other.reference is not None
    plain = Person(svc, participant="p02", group="anything", study="pilot")
    _work_one_nodule(plain)
    assert plain.state.feedback.mode == "none" and plain.state.feedback.dice is None
    assert plain.state.view.reference is None
    with pytest.raises(ValueError, match="is not a group of study 'training_protocol'; use one of non_medical"):
        Person(svc, participant="p03", group="nurses", study="training_protocol")


def test_views_of_other_slices_wait_for_accept(tmp_path):
    svc = _service(tmp_path)
    p = Person(svc)
    with pytest.raises(Conflict, match="scroll with the slice actions"):
        svc.view(p.state.session_id, 0)
    with pytest.raises(NotFound, match="start a new one"):
        svc.state("no-such-session")


def test_exports_have_the_trace_keys_and_replay_in_the_env(tmp_path):
    svc = _service(tmp_path)
    p = Person(svc)
    _work_one_nodule(p)
    p.next()
    p.act(kind="box", x0=50, y0=14, x1=90, y1=46)
    p.act(kind="accept")
    sid = p.state.session_id
    recs = trace_records(svc.store, sid)
    assert all(set(r) == set(TRACE_FIELDS) | {"iou"} for r in recs)
    assert recs[0]["annotator"] == "p01" and recs[0]["seconds"] == pytest.approx(0.7)
    assert recs[-1]["seconds_total"] == pytest.approx(1.4) and recs[-1]["episode"] == 1
    path = tmp_path / "trace.jsonl"
    assert write_trace_jsonl(svc.store, sid, path) == 11
    results = replay(read_trace(path), svc.make_env())
    assert [r.ok for r in results] == [True, True]
    rows = svc.store.actions(sid)
    for res, last in zip(results, (rows[8], rows[10])):
        from hiseg_sim.annotate.export import mask_after

        vp = svc.store.episodes(sid)[last.episode].viewport
        np.testing.assert_array_equal(res.final_mask, mask_after(last.model_dump(), vp))
    assert write_parquet(svc.store, tmp_path / "a.parquet", sid) == 11
    import pandas as pd

    df = pd.read_parquet(tmp_path / "a.parquet")
    assert {"client_ms", "pointer_x", "pointer_y", "mask_bits", "participant", "group", "study", "sim_seconds"} <= set(
        df
    )
    assert json.loads(df["action"][0]) == {"kind": "box", "x0": 30.0, "x1": 66.0, "y0": 30.0, "y1": 66.0}
    assert len(actions_frame(svc.store)) == 11


@pytest.mark.parametrize("prefetch, encodes", [(True, [1, 1]), (False, [2, 3])])
def test_slices_are_encoded_before_the_person_needs_them(tmp_path, prefetch, encodes):
    svc = _service(tmp_path, prefetch=prefetch)
    p = Person(svc)
    calls = svc.segmenter.counters
    if prefetch:
        assert svc.prefetcher.wait_idle(60)
    p.act(kind="next")
    p.act(kind="box", x0=30, y0=30, x1=66, y1=66)
    # the env encoded its start slice at reset; with the prefetcher the next slice came from the disk cache
    assert calls.encoder_calls == encodes[0]
    p.act(kind="accept")
    if prefetch:
        assert svc.prefetcher.wait_idle(60)
    assert p.next().case_key == "synth-1"  # its start slice was encoded during the feedback
    assert calls.encoder_calls == encodes[1]
    svc.close()


def test_the_2d_env_has_the_key_slice_only(tmp_path):
    svc = _service(tmp_path, env="2d")
    p = Person(svc)
    assert p.state.n_slices == 1 and p.act(kind="box", x0=30, y0=30, x1=66, y1=66).slices_with_mask == [0]
    with pytest.raises(InvalidActionError, match="NextSlice is not available here"):
        p.act(kind="next")
    assert p.act(kind="accept").phase == "feedback"


def test_a_shuffled_order_is_seeded_by_the_person(tmp_path):
    svc = _service(tmp_path, order="shuffled", n_cases=2)
    orders = {
        p: svc.store.session(Person(svc, participant=p).state.session_id).case_keys
        for p in ("p01", "p02", "p03", "p04")
    }
    assert all(len(keys) == 2 and set(keys) <= {"synth-0", "synth-1", "synth-edge"} for keys in orders.values())
    assert len({tuple(k) for k in orders.values()}) > 1  # people meet the nodules in different orders
    again = _service(tmp_path / "again", order="shuffled", n_cases=2)
    assert again.store.session(Person(again, participant="p03").state.session_id).case_keys == orders["p03"]
