"""Recorded sessions read back: one JSON-lines trace per person, in the env's trace format.

A *sessions directory* holds one ``*.jsonl`` file per session, each line one trace record
(:mod:`hiseg_sim.env.trace`): what the annotation page exports per session and what
``hiseg-sim simulate --traces DIR`` writes per simulated person. Within a file, ``episode`` is the
nodule's place in the person's session (0, 1, ...) and ``step`` the action's place in the nodule;
``annotator`` is the participant id. The profile fit (:mod:`hiseg_sim.fitting`) and the browser
replay (:mod:`hiseg_sim.annotate.replay`) read sessions through :func:`read_sessions`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Episode", "Session", "SessionsError", "read_sessions"]
_NEEDED = ("case", "episode", "step", "action", "seconds", "dice", "viewport")


class SessionsError(ValueError):
    """A sessions directory that cannot be read; the message says which file and why."""


@dataclass
class Episode:
    """One nodule of a session: its case, place in the session, seed, viewport and action records."""

    case: str
    order: int
    seed: int | None
    viewport: dict
    env: str
    records: list[dict] = field(default_factory=list)


@dataclass
class Session:
    """One person's session: participant id, the file it came from and its episodes in order."""

    participant: str
    path: Path
    episodes: list[Episode] = field(default_factory=list)

    @property
    def n_actions(self) -> int:
        return sum(len(e.records) for e in self.episodes)


_NEEDED = ("case", "episode", "step", "action", "seconds", "dice", "viewport")


def _read_one(path: Path) -> Session:
    eps: dict[int, Episode] = {}
    participant = None
    with path.open() as fh:
        for i, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SessionsError(f"{path}:{i}: not a JSON line ({exc.msg})") from None
            missing = [k for k in _NEEDED if k not in rec]
            if missing:
                raise SessionsError(
                    f"{path}:{i}: not an env trace record (missing {', '.join(missing)}); "
                    "export sessions from the annotation page or write them with `hiseg-sim simulate --traces`"
                )
            participant = participant or str(rec.get("annotator") or path.stem)
            k = int(rec["episode"])
            ep = eps.get(k)
            if ep is None:
                ep = eps[k] = Episode(
                    case=str(rec["case"]),
                    order=k,
                    seed=rec.get("seed"),
                    viewport=dict(rec["viewport"]),
                    env=str(rec.get("env", "")),
                )
            ep.records.append(rec)
    for ep in eps.values():
        ep.records.sort(key=lambda r: int(r["step"]))
    return Session(participant or path.stem, path, [eps[k] for k in sorted(eps)])


def read_sessions(directory: str | Path) -> list[Session]:
    """Every session (``*.jsonl``, sorted by name) of a sessions directory.

    Raises:
        SessionsError: the directory is missing or holds no ``*.jsonl``, or a line is not a trace record.
    """
    d = Path(directory)
    if not d.is_dir():
        raise SessionsError(f"{d}: no such directory (give a folder of exported *.jsonl sessions)")
    files = sorted(d.glob("*.jsonl"))
    if not files:
        raise SessionsError(
            f"{d}: no *.jsonl sessions in it; export them from the annotation page or write them "
            "with `hiseg-sim simulate ... --traces DIR`"
        )
    out = [_read_one(f) for f in files]
    out = [s for s in out if s.episodes]
    if not out:
        raise SessionsError(f"{d}: the *.jsonl files hold no action")
    return out
