"""The session store: an embedded SQLite file (WAL) where every action is committed before it is answered.

Three tables, whose columns are the fields of the record models of :mod:`hiseg_sim.annotate.schema`
(``sessions`` ← :class:`SessionRecord`, ``episodes`` ← :class:`EpisodeRecord`, ``actions`` ←
:class:`ActionRecord`); dicts, lists and tuples are kept as JSON text, masks as bit-packed blobs.
Rows are only ever added, except ``sessions.finished_ms``, set once at the end.

``synchronous=FULL`` with the write-ahead log: a committed action survives a killed server and a
power cut; readers never block the writer. One connection, used under a lock, serves the whole app.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from hiseg_sim.annotate.schema import ActionRecord, EpisodeRecord, SessionRecord

__all__ = ["SessionStore", "StoreError"]

M = TypeVar("M", bound=BaseModel)

#: table → (record model, primary key columns)
_TABLES: dict[str, tuple[type[BaseModel], tuple[str, ...]]] = {
    "sessions": (SessionRecord, ("session_id",)),
    "episodes": (EpisodeRecord, ("session_id", "episode")),
    "actions": (ActionRecord, ("session_id", "seq")),
}
_SQL_TYPES = {int: "INTEGER", float: "REAL", str: "TEXT", bool: "INTEGER", bytes: "BLOB"}


class StoreError(RuntimeError):
    """The store file cannot be used (another program's file, or a newer layout)."""


def _column(annotation: Any) -> tuple[str, bool]:
    """``(SQL type, kept as JSON)`` of a field's annotation (``Optional[X]`` is ``X``, nullable)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation in _SQL_TYPES:
        return _SQL_TYPES[annotation], False
    if typing.get_origin(annotation) is typing.Literal:
        return "TEXT", False
    return "TEXT", True  # dict, list, tuple


class SessionStore:
    """Sessions, their nodules and every action, in one SQLite file.

    Args:
        path: the ``.sqlite`` file; made (with its folder) if missing.

    >>> # store = SessionStore("runs/annotate/sessions.sqlite"); store.add_action(record)
    """

    LAYOUT = 1

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._columns = {
            t: {n: _column(f.annotation) for n, f in m.model_fields.items()} for t, (m, _) in _TABLES.items()
        }
        self._create()

    # ---- layout ----------------------------------------------------------------------------
    def _create(self) -> None:
        with self._lock:
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if version not in (0, self.LAYOUT) or (version == 0 and tables):
                raise StoreError(
                    f"{self.path} is not a hiseg-sim session store of layout {self.LAYOUT} "
                    f"(user_version {version}); give another --store path"
                )
            self._db.execute("BEGIN IMMEDIATE")
            for table, (_, key) in _TABLES.items():
                cols = ", ".join(f"{n} {t}" for n, (t, _) in self._columns[table].items())
                self._db.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols}, PRIMARY KEY ({', '.join(key)}))")
            self._db.execute("CREATE INDEX IF NOT EXISTS actions_by_episode ON actions (session_id, episode, step)")
            self._db.execute("CREATE INDEX IF NOT EXISTS sessions_by_person ON sessions (participant, grp, study)")
            self._db.execute(f"PRAGMA user_version={self.LAYOUT}")
            self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- rows <-> records -------------------------------------------------------------------
    def _insert(self, table: str, rec: BaseModel) -> None:
        cols = self._columns[table]
        values = []
        for name, value in rec.model_dump().items():
            values.append(json.dumps(value) if cols[name][1] and value is not None else value)
        marks = ", ".join("?" for _ in cols)
        self._db.execute(f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})", values)

    def _select(self, table: str, where: str, args: tuple, order: str) -> list[Any]:
        model, _ = _TABLES[table]
        cols = self._columns[table]
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(cols)} FROM {table} WHERE {where} ORDER BY {order}", args
            ).fetchall()
        out = []
        for row in rows:
            d = {n: (json.loads(v) if cols[n][1] and v is not None else v) for n, v in zip(cols, row)}
            out.append(model.model_validate(d))
        return out

    def _write(self, *items: tuple[str, BaseModel]) -> None:
        """Insert the rows in one transaction, committed (on disk) when this returns."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for table, rec in items:
                    self._insert(table, rec)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # ---- writing ---------------------------------------------------------------------------
    def add_session(self, session: SessionRecord, first_episode: EpisodeRecord) -> None:
        """A new session together with its first nodule (one transaction)."""
        self._write(("sessions", session), ("episodes", first_episode))

    def add_episode(self, episode: EpisodeRecord) -> None:
        self._write(("episodes", episode))

    def add_action(self, action: ActionRecord) -> None:
        """Commit one action; raises ``sqlite3.IntegrityError`` if its ``seq`` is already stored."""
        self._write(("actions", action))

    def finish_session(self, session_id: str, finished_ms: int) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE sessions SET finished_ms = ? WHERE session_id = ? AND finished_ms IS NULL",
                (int(finished_ms), session_id),
            )

    # ---- reading ---------------------------------------------------------------------------
    def session(self, session_id: str) -> SessionRecord | None:
        rows = self._select("sessions", "session_id = ?", (session_id,), "created_ms")
        return rows[0] if rows else None

    def sessions(self) -> list[SessionRecord]:
        return self._select("sessions", "1", (), "created_ms, session_id")

    def open_session(self, participant: str, group: str, study: str) -> SessionRecord | None:
        """The person's latest unfinished session in this group and study, if any."""
        rows = self._select(
            "sessions",
            "participant = ? AND grp = ? AND study = ? AND finished_ms IS NULL",
            (participant, group, study),
            "created_ms DESC",
        )
        return rows[0] if rows else None

    def episodes(self, session_id: str) -> list[EpisodeRecord]:
        return self._select("episodes", "session_id = ?", (session_id,), "episode")

    def actions(self, session_id: str, episode: int | None = None) -> list[ActionRecord]:
        """The session's actions in order (only those of one nodule with ``episode``)."""
        if episode is None:
            return self._select("actions", "session_id = ?", (session_id,), "seq")
        return self._select("actions", "session_id = ? AND episode = ?", (session_id, int(episode)), "seq")

    def action(self, session_id: str, seq: int) -> ActionRecord | None:
        rows = self._select("actions", "session_id = ? AND seq = ?", (session_id, int(seq)), "seq")
        return rows[0] if rows else None

    def count_actions(self, session_id: str) -> int:
        with self._lock:
            return int(
                self._db.execute("SELECT COUNT(*) FROM actions WHERE session_id = ?", (session_id,)).fetchone()[0]
            )
