"""The session store: records round-trip, columns come from the models, WAL, one row per action number."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from hiseg_sim.annotate.schema import ActionRecord, EpisodeRecord, SessionRecord
from hiseg_sim.annotate.store import SessionStore, StoreError
from hiseg_sim.codec import pack_mask


def _session(sid="s1", participant="p01", finished=None):
    return SessionRecord(
        session_id=sid,
        participant=participant,
        grp="g",
        study="pilot",
        cohort="default",
        segmenter="stub_env",
        env_id="hiseg_sim/NoduleSeg3D-v0",
        feedback="score",
        practice=2,
        case_keys=["a/n1", "b/n2"],
        created_ms=1_700_000_000_000,
        finished_ms=finished,
    )


def _episode(sid="s1", episode=0):
    return EpisodeRecord(
        session_id=sid,
        episode=episode,
        case_key="a/n1",
        seed=123,
        viewport={"z0": 3, "n_slices": 9, "y0": -4, "x0": 8, "size": 96},
        start_slice=7,
        spacing_zyx=(2.5, 0.7, 0.7),
        shape_zyx=(12, 96, 96),
        started_ms=1,
        started_client_ms=2,
    )


def _action(sid="s1", seq=1, mask=None):
    mask = np.zeros((9, 96, 96), bool) if mask is None else mask
    return ActionRecord(
        session_id=sid,
        seq=seq,
        episode=0,
        step=seq,
        client_ms=10 + seq,
        server_ms=20 + seq,
        pointer_x=12.25,
        pointer_y=None,
        action={"kind": "point", "x": 12.25, "y": 40.0, "positive": False},
        prompt={"slice": 7, "points": [[12.25, 40.0]], "labels": [0], "box": None, "mask_prompt": True},
        slice=7,
        invalid_action="",
        dice=0.5,
        iou=1 / 3,
        iou_pred=0.9,
        reward=0.5,
        sim_seconds=1.5,
        sim_seconds_total=3.0,
        terminated=False,
        truncated=False,
        **pack_mask(mask, (3, 0, 0)),
    )


def test_records_come_back_equal(tmp_path):
    mask = np.zeros((9, 96, 96), bool)
    mask[4, 30:41, 50:57] = True
    mask[5, 31:39, 52:55] = True
    store = SessionStore(tmp_path / "s.sqlite")
    store.add_session(_session(), _episode())
    store.add_action(_action(seq=1, mask=mask))
    store.add_action(_action(seq=2))
    assert store.session("s1") == _session()
    assert store.episodes("s1") == [_episode()]
    assert store.actions("s1") == [_action(seq=1, mask=mask), _action(seq=2)]
    assert store.actions("s1", episode=1) == []
    assert store.count_actions("s1") == 2
    assert store.session("nobody") is None


def test_open_session_is_the_unfinished_one_of_that_person_group_and_study(tmp_path):
    store = SessionStore(tmp_path / "s.sqlite")
    store.add_session(_session("old", finished=5), _episode("old"))
    store.add_session(_session("cur"), _episode("cur"))
    store.add_session(_session("other", participant="p02"), _episode("other"))
    assert store.open_session("p01", "g", "pilot").session_id == "cur"
    assert store.open_session("p01", "g", "another_study") is None
    store.finish_session("cur", 99)
    assert store.open_session("p01", "g", "pilot") is None
    assert store.session("cur").finished_ms == 99


def test_columns_are_the_model_fields_and_the_journal_is_wal(tmp_path):
    store = SessionStore(tmp_path / "s.sqlite")
    db = sqlite3.connect(tmp_path / "s.sqlite")
    for table, model in (("sessions", SessionRecord), ("episodes", EpisodeRecord), ("actions", ActionRecord)):
        cols = [r[1] for r in db.execute(f"PRAGMA table_info({table})")]
        assert cols == list(model.model_fields)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_an_action_number_is_written_once(tmp_path):
    store = SessionStore(tmp_path / "s.sqlite")
    store.add_session(_session(), _episode())
    store.add_action(_action(seq=1))
    with pytest.raises(sqlite3.IntegrityError):
        store.add_action(_action(seq=1))
    assert store.count_actions("s1") == 1


def test_a_committed_action_is_read_by_another_connection_at_once(tmp_path):
    store = SessionStore(tmp_path / "s.sqlite")
    store.add_session(_session(), _episode())
    store.add_action(_action(seq=1))
    other = sqlite3.connect(tmp_path / "s.sqlite")
    assert other.execute("SELECT seq FROM actions").fetchall() == [(1,)]


def test_a_file_of_another_program_is_refused_in_one_line(tmp_path):
    path = tmp_path / "theirs.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE patients (name TEXT)")
    db.commit()
    with pytest.raises(StoreError) as err:
        SessionStore(path)
    assert "--store" in str(err.value) and "\n" not in str(err.value)


def test_a_store_reopens_with_its_rows(tmp_path):
    SessionStore(tmp_path / "s.sqlite").add_session(_session(), _episode())
    assert SessionStore(tmp_path / "s.sqlite").sessions() == [_session()]
