"""The run directory: Parquet shards and a checksum manifest per work unit, ``run.json``, one writer, resume.

Layout of ``runs/<study>/``::

    run.json                    versions, config hash, seeds, unit count, status (rewritten atomically)
    spec.json                   the study spec as run (what the config hash covers, and the rest)
    run.lock                    the write lock: held (``flock``) by the one process writing here
    run.lock.holder             pid, host and start time of that process (what a refused writer reports)
    shards/<unit>.cases.parquet     one row per case of the unit (metadata, packed ground truth)
    shards/<unit>.actions.parquet   one row per action (long format)
    shards/<unit>.episodes.parquet  one row per episode (long format)
    shards/<unit>.manifest.json     size and SHA-256 of the three shards — written last: the commit mark
    shards/damaged/             files of units that failed their check, set aside (never deleted)
    log.jsonl                   per unit: worker pid, wall seconds (not results: never compared)

Each file is written to a temporary name in the same directory, flushed to disk and renamed
into place (``os.replace`` is atomic on POSIX), so a reader sees a whole file or none. A unit is
complete when its manifest reads back whole (it carries its own checksum) and each of its three
shards has the size and SHA-256 the manifest records: any changed byte of a shard, data or
metadata, fails the check. On resume, complete units are skipped; any other unit with files here
(interrupted before its manifest, a damaged shard or manifest, a missing partner) is reported with
a warning naming the files and why, its files are moved to ``shards/damaged/``, and it runs again.
Rows hold nothing of the wall clock, so an interrupted-and-resumed run has exactly the rows of an
uninterrupted one. :func:`load_run` reads only units that pass the same check.

One process writes a run directory at a time (:meth:`RunStore.lock`): a second writer is refused
at once with the holder's pid, host and start time. The lock is an OS file lock, so the kernel
releases it when its holder dies, ``kill -9`` included.

Runs written before manifests existed (``run.json`` without ``shard_format``) are adopted on
their first resume: each unit whose three shards read back whole with their unit id and row
count gets a manifest of its bytes as they are.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "SHARD_FORMAT",
    "SORT_KEYS",
    "TABLES",
    "CorruptShardWarning",
    "NotARunDirError",
    "RunData",
    "RunLockedError",
    "RunMismatchError",
    "RunNameError",
    "RunStore",
    "atomic_write_bytes",
    "load_run",
    "run_dir_for",
    "versions",
]

#: shard tables, in write order (the manifest follows them: its presence marks the unit complete)
TABLES = ("cases", "actions", "episodes")
SORT_KEYS = {
    "episodes": ["segmenter", "annotator", "case_id", "replicate", "position"],
    "actions": ["segmenter", "annotator", "case_id", "replicate", "position", "step"],
    "cases": ["case_id"],
}
#: version of the shard layout, in run.json: 2 = a checksum manifest per unit
SHARD_FORMAT = 2
LOCK_NAME = "run.lock"
HOLDER_NAME = "run.lock.holder"
DAMAGED_DIR = "damaged"
_META_KEY = b"hiseg_sim"
# A run name is one directory entry: no separator, no '.'/'..', not hidden (so `ls` shows it).
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,127}")


class CorruptShardWarning(UserWarning):
    """A unit's files failed their check; they were set aside (``shards/damaged/``) and the unit runs again."""


class RunMismatchError(RuntimeError):
    """The run directory cannot be used as asked: it holds a run of a different study configuration
    (or, for the subclasses, another process is writing it, it holds no run, or its name is not
    plain). The command line reports any of these as one line and exits 2."""


class RunLockedError(RunMismatchError):
    """The run directory's write lock could not be taken (another process holds it)."""


class NotARunDirError(RunMismatchError):
    """``fresh`` was asked of a directory that holds no hiseg-sim run; nothing in it was deleted."""


class RunNameError(RunMismatchError, ValueError):
    """A run name that is not a plain directory name, or a run directory resolving outside its root."""


def run_dir_for(root: str | os.PathLike, name: str) -> Path:
    """The directory of the run called ``name`` under ``root`` (``runs/<name>``).

    Raises:
        RunNameError: ``name`` is not a plain name (empty, ``.``/``..``, hidden, absolute, holding a
            path separator or other characters than letters, digits, ``_ . + -``; at most 128), or
            ``root/name`` resolves outside ``root`` (a symlink).
    """
    if not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
        raise RunNameError(
            f"run name {name!r} is not a plain name: use 1-128 letters, digits, '_', '.', '+' or '-', not starting "
            "with '.' (no '/', '..', empty or absolute names), e.g. [study] name = \"my_study\""
        )
    root = Path(root)
    run_dir = root / name
    real_root, real = os.path.realpath(root), os.path.realpath(run_dir)
    if os.path.dirname(real) != real_root:
        raise RunNameError(
            f"{run_dir} resolves to {real}, outside {real_root}: remove that link, or give the "
            "directory you mean as the output directory (--out)"
        )
    return run_dir


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _table_bytes(rows: list[dict], unit_id: str) -> bytes:
    # Rows may carry different keys (an annotator's own ``episode_info`` fields): take the union in
    # first-seen order, else ``from_pylist`` keeps only the first row's keys and drops the rest.
    keys = list(dict.fromkeys(k for r in rows for k in r))
    rows = [{k: r.get(k) for k in keys} for r in rows]
    table = pa.Table.from_pylist(rows) if rows else pa.table({"unit_id": pa.array([], pa.string())})
    meta = dict(table.schema.metadata or {})
    meta[_META_KEY] = json.dumps({"unit_id": unit_id, "n_rows": len(rows)}).encode()
    table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _check_shard_bytes(data: bytes, unit_id: str) -> str | None:
    """``None`` if ``data`` reads back as a whole shard of ``unit_id`` with its stored row count; else why not.

    A structural check only (it misses most changed values): used to say why a shard failed its
    checksum, and to adopt shards written before manifests existed."""
    try:
        table = pq.read_table(pa.BufferReader(data))
    except Exception as exc:  # noqa: BLE001 - any failure to read means "re-run"
        return f"unreadable ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:120]})"
    try:
        raw = (table.schema.metadata or {}).get(_META_KEY)
        if raw is None:
            return "no hiseg_sim metadata (not written by this runner)"
        meta = json.loads(raw)
        if meta.get("unit_id") != unit_id:
            return f"belongs to unit {meta.get('unit_id')!r}, not {unit_id!r}"
        if int(meta.get("n_rows", -1)) != table.num_rows:
            return f"holds {table.num_rows} rows but was written with {meta.get('n_rows')}"
    except Exception as exc:  # noqa: BLE001 - damaged metadata: any shape of failure
        return f"damaged metadata ({type(exc).__name__})"
    return None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sealed(body: dict) -> dict:
    """``body`` plus the SHA-256 of its canonical JSON, so a changed manifest fails its own check."""
    return {**body, "sha256": _digest(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())}


def _manifest_bytes(unit_id: str, files: dict[str, dict]) -> bytes:
    body = {"format": SHARD_FORMAT, "unit_id": unit_id, "files": files}
    return (json.dumps(_sealed(body), indent=1, sort_keys=True) + "\n").encode()


def _file_entry(path: Path, data: bytes, n_rows: int | None) -> dict:
    return {"name": path.name, "bytes": len(data), "sha256": _digest(data), "n_rows": n_rows}


def _read_manifest(path: Path, unit_id: str) -> tuple[dict | None, str | None]:
    """``(manifest, None)`` if ``path`` is a whole manifest of ``unit_id``; else ``(None, why not)``."""
    try:
        m = json.loads(path.read_bytes())
        if not isinstance(m, dict):
            return None, "damaged (not a JSON object)"
        if _sealed({k: v for k, v in m.items() if k != "sha256"}) != m:
            return None, "damaged (does not match its own checksum)"
        if m.get("format") != SHARD_FORMAT or m.get("unit_id") != unit_id:
            return None, f"format {m.get('format')!r} of unit {m.get('unit_id')!r}, not {SHARD_FORMAT} of {unit_id!r}"
        files = m["files"]
        for t in TABLES:
            e = files[t]
            if not (isinstance(e["name"], str) and isinstance(e["bytes"], int) and isinstance(e["sha256"], str)):
                return None, f"damaged (entry {t!r})"
    except Exception as exc:  # noqa: BLE001 - a damaged manifest may fail in any way; it must not crash a resume
        return None, f"unreadable ({type(exc).__name__})"
    return m, None


def versions() -> dict:
    """Versions of what the results depend on."""
    import numpy

    import hiseg_sim

    out = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "pandas": pd.__version__,
        "pyarrow": pa.__version__,
        "hiseg_sim": hiseg_sim.__version__,
    }
    for mod in ("torch", "gymnasium", "onnxruntime", "scipy", "SimpleITK", "ray"):
        try:
            m = __import__(mod)
            out[mod.lower()] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001 - not installed
            pass
    out["git_commit"] = _git_commit()
    return out


def _git_commit() -> str | None:
    import subprocess

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _file_lock(path: Path):
    """An OS-level (``flock``) lock on ``path``. filelock may fall back to a marker-file lock where the
    filesystem has no ``flock``; such a marker outlives a killed holder, so the fallback is refused."""
    import filelock

    kwargs: dict[str, Any] = {}
    if "fallback_to_soft" in inspect.signature(filelock.FileLock.__init__).parameters:
        kwargs["fallback_to_soft"] = False
    return filelock.FileLock(str(path), **kwargs)


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


class RunStore:
    """Reads and writes one run directory (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.dir = Path(run_dir)
        self.shards = self.dir / "shards"
        self.lock_path = self.dir / LOCK_NAME
        self.holder_path = self.dir / HOLDER_NAME

    def path(self, unit_id: str, table: str) -> Path:
        return self.shards / f"{unit_id}.{table}.parquet"

    def manifest_path(self, unit_id: str) -> Path:
        return self.shards / f"{unit_id}.manifest.json"

    def unit_files(self, unit_id: str) -> list[Path]:
        """The unit's three shards and its manifest (present or not)."""
        return [self.path(unit_id, t) for t in TABLES] + [self.manifest_path(unit_id)]

    # ---- one writer ---------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory's write lock for the ``with`` block; refuse at once if another process holds it.

        The lock is an OS file lock on ``run.lock``: the kernel drops it when its holder exits in any
        way (``kill -9`` included), so a dead run never blocks the next. The holder's pid, host and
        start time go to ``run.lock.holder`` for the message a refused writer gets.

        Raises:
            RunLockedError: another process (or another ``with`` block of this one) holds it.
        """
        import filelock

        self.dir.mkdir(parents=True, exist_ok=True)
        lock = _file_lock(self.lock_path)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise RunLockedError(self._refusal()) from None
        except (OSError, NotImplementedError) as exc:
            raise RunLockedError(
                f"cannot lock {self.lock_path} ({type(exc).__name__}: {exc}): the filesystem offers "
                "no file locks (flock); put the run directory on a local disk"
            ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "argv": [str(a) for a in sys.argv[:8]],
        }
        try:
            atomic_write_bytes(self.holder_path, (json.dumps(holder) + "\n").encode())
            yield
        finally:
            if (self._holder() or {}).get("pid") == os.getpid():
                self.holder_path.unlink(missing_ok=True)
            lock.release()

    def _holder(self) -> dict | None:
        try:
            h = json.loads(self.holder_path.read_text())
        except (OSError, ValueError):
            return None
        return h if isinstance(h, dict) else None

    def _refusal(self) -> str:
        # The holder writes its record just after taking the lock: a missing record, or one left by
        # a holder that died, is given a moment to be replaced before it is reported.
        deadline = time.monotonic() + 1.0
        h = self._holder()
        while (
            h is None or (h.get("host") == socket.gethostname() and not _pid_alive(h.get("pid")))
        ) and time.monotonic() < deadline:
            time.sleep(0.05)
            h = self._holder()
        who = (
            f"pid {h.get('pid')} on {h.get('host')}, started {h.get('started')}"
            if h
            else f"holder unknown: {self.holder_path.name} not written"
        )
        return (
            f"{os.path.abspath(self.dir)} is being written by another hiseg-sim run ({who}; lock "
            f"{os.path.abspath(self.lock_path)}): wait for it to end, or write to another directory (--out)"
        )

    # ---- run.json -------------------------------------------------------------------------
    def read_meta(self) -> dict | None:
        p = self.dir / "run.json"
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise RunMismatchError(f"{p} is not valid JSON ({exc}); move the directory away to start afresh") from None

    def write_meta(self, meta: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(
            self.dir / "run.json", (json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n").encode()
        )

    def is_run_dir(self) -> bool:
        """Whether the directory holds a ``run.json`` or ``spec.json`` written by this module."""
        for name, key in (("run.json", "config_hash"), ("spec.json", "__spec__")):
            try:
                d = json.loads((self.dir / name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(d, dict) and key in d:
                return True
        return False

    def check_fresh(self) -> None:
        """Refuse ``fresh`` (which deletes the run's files) for a directory that holds something but no run.

        Raises:
            NotARunDirError: the directory has entries other than an empty ``shards/`` and the lock
                files, and no ``run.json``/``spec.json`` of a hiseg-sim run.
        """
        if not self.dir.is_dir() or self.is_run_dir():
            return
        ours = {LOCK_NAME, HOLDER_NAME}
        others = [
            e.name
            for e in self.dir.iterdir()
            if e.name not in ours and not (e == self.shards and e.is_dir() and not any(e.iterdir()))
        ]
        if others:
            raise NotARunDirError(
                f"{os.path.abspath(self.dir)} holds no hiseg-sim run (no run.json or spec.json of one, but "
                f"{len(others)} other entr{'y' if len(others) == 1 else 'ies'}, e.g. {min(others)!r}): --fresh "
                "deletes nothing there; give a new or empty output directory"
            )

    def prepare(self, spec_dict: dict, config_hash: str, seeds: dict, n_units: int, fresh: bool = False) -> dict:
        """Create the directory or check it holds the same configuration; returns ``run.json``'s content.

        Call it holding :meth:`lock`. With ``fresh``, the run's files are deleted first (shards,
        manifests, set-aside files, ``run.json``, ``log.jsonl``), and only if the directory holds a
        run (:meth:`check_fresh`).

        Raises:
            RunMismatchError: the directory holds a run with another config hash (and ``fresh`` is False).
            NotARunDirError: ``fresh`` for a directory that holds no run.
        """
        old = self.read_meta()
        if old is not None and not fresh and old.get("config_hash") != config_hash:
            raise RunMismatchError(
                f"{self.dir} holds a run of another configuration (config hash {old.get('config_hash')} vs "
                f"{config_hash} now): the cases, annotators, segmenters, seeds or episode function changed. "
                "Use another output directory, or start afresh (fresh=True / --fresh deletes its shards)."
            )
        if fresh and self.dir.exists():
            self.check_fresh()
            for pattern in ("*.parquet", "*.manifest.json", ".*.tmp"):
                for p in self.shards.glob(pattern):
                    p.unlink(missing_ok=True)
            shutil.rmtree(self.shards / DAMAGED_DIR, ignore_errors=True)
            for name in ("run.json", "log.jsonl"):
                (self.dir / name).unlink(missing_ok=True)
            old = None
        self.shards.mkdir(parents=True, exist_ok=True)
        for tmp in self.shards.glob(".*.tmp"):  # left by a killed writer
            tmp.unlink(missing_ok=True)
        if old is not None and old.get("shard_format") is None:
            self._adopt_unsealed_units()
        atomic_write_bytes(self.dir / "spec.json", (json.dumps(spec_dict, indent=1, sort_keys=True) + "\n").encode())
        meta = dict(old or {})
        meta.update(
            config_hash=config_hash,
            study=spec_dict.get("name"),
            seeds=seeds,
            n_units=n_units,
            versions=versions(),
            status="running",
            updated=time.strftime("%Y-%m-%dT%H:%M:%S"),
            shard_format=SHARD_FORMAT,
        )
        meta.setdefault("created", meta["updated"])
        meta.setdefault("segmenters", {})
        meta.setdefault("sessions", [])
        self.write_meta(meta)
        return meta

    def _adopt_unsealed_units(self) -> int:
        """Give a manifest to each unit of a run written before manifests whose three shards read back
        whole (unit id and row count as stored in them); the rest are left to :meth:`completed`."""
        n = 0
        for ep in sorted(self.shards.glob("*.episodes.parquet")):
            uid = ep.name[: -len(".episodes.parquet")]
            if self.manifest_path(uid).exists():
                continue
            files = {}
            for t in TABLES:
                p = self.path(uid, t)
                data = p.read_bytes() if p.is_file() else None
                if data is None or _check_shard_bytes(data, uid) is not None:
                    break
                files[t] = _file_entry(p, data, None)
            else:
                atomic_write_bytes(self.manifest_path(uid), _manifest_bytes(uid, files))
                n += 1
        return n

    # ---- shards ---------------------------------------------------------------------------
    def check_unit(self, unit_id: str) -> tuple[str, list[str], dict[str, bytes]]:
        """Check one unit's files: ``("absent", [], {})`` if it has none, ``("whole", [], bytes of each
        shard)`` if its manifest and shards agree, else ``("broken", [why, ...], {})``. Never raises
        on damaged content."""
        paths = {t: self.path(unit_id, t) for t in TABLES}
        mpath = self.manifest_path(unit_id)
        if not any(p.exists() for p in [*paths.values(), mpath]):
            return "absent", [], {}
        problems: list[str] = []
        raw: dict[str, bytes] = {}
        for t, p in paths.items():
            try:
                raw[t] = p.read_bytes()
            except FileNotFoundError:
                pass
            except OSError as exc:
                problems.append(f"{p.name}: unreadable ({type(exc).__name__}: {exc})")
        missing = [t for t, p in paths.items() if not p.exists()]
        if missing:
            problems.append(
                f"incomplete: {', '.join(paths[t].name for t in missing)} missing (a run interrupted "
                "before its episodes shard was written, or files removed since)"
            )
        if not mpath.is_file():
            problems.append("no manifest: interrupted before it was written")
            for t, data in raw.items():  # say what else is wrong with them, if anything
                why = _check_shard_bytes(data, unit_id)
                if why:
                    problems.append(f"{paths[t].name}: {why}")
            return "broken", problems, {}
        manifest, why = _read_manifest(mpath, unit_id)
        if manifest is None:
            problems.append(f"{mpath.name}: {why}")
            return "broken", problems, {}
        for t, data in raw.items():
            want = manifest["files"][t]
            if want["name"] != paths[t].name or len(data) != want["bytes"] or _digest(data) != want["sha256"]:
                why = _check_shard_bytes(data, unit_id) or "it reads back, but its bytes changed"
                problems.append(
                    f"{paths[t].name}: checksum mismatch ({len(data)} bytes, manifest says {want['bytes']}; {why})"
                )
        return ("broken", problems, {}) if problems else ("whole", [], raw)

    def _set_aside(self, unit_id: str) -> Path:
        """Move the unit's files to ``shards/damaged/`` (a numbered name if one is there already)."""
        dest = self.shards / DAMAGED_DIR
        dest.mkdir(parents=True, exist_ok=True)
        for p in self.unit_files(unit_id):
            if not p.exists():
                continue
            target, k = dest / p.name, 1
            while target.exists():
                target, k = dest / f"{p.name}.{k}", k + 1
            os.replace(p, target)
        return dest

    def completed(self, unit_ids, warn: bool = True) -> set[str]:
        """The units of ``unit_ids`` whose files are whole (:meth:`check_unit`). Every other unit with
        files here is reported with a :class:`CorruptShardWarning` naming its files and why, and its
        files are moved to ``shards/damaged/`` (kept, never deleted): it runs again."""
        done = set()
        for uid in unit_ids:
            state, problems, _ = self.check_unit(uid)
            if state == "whole":
                done.add(uid)
            elif state == "broken":
                dest = self._set_aside(uid)
                if warn:
                    warnings.warn(
                        f"unit {uid}: shard(s) incomplete or damaged — {'; '.join(problems)}. Moved to "
                        f"{dest}; the unit runs again.",
                        CorruptShardWarning,
                        stacklevel=2,
                    )
        return done

    def write_unit(self, result) -> None:
        """Write a :class:`~hiseg_sim.experiments.worker.UnitResult`'s three shards, then their manifest
        (the commit mark), and log it."""
        files = {}
        for t in TABLES:
            rows = result.tables.get(t, [])
            data = _table_bytes(rows, result.unit_id)
            p = self.path(result.unit_id, t)
            atomic_write_bytes(p, data)
            files[t] = _file_entry(p, data, len(rows))
        atomic_write_bytes(self.manifest_path(result.unit_id), _manifest_bytes(result.unit_id, files))
        with (self.dir / "log.jsonl").open("a") as fh:
            fh.write(json.dumps({"unit_id": result.unit_id, **result.info}, default=str) + "\n")

    def orphans(self, unit_ids) -> list[Path]:
        """Shard and manifest files of units not in ``unit_ids``."""
        keep = set(unit_ids)
        return [
            p
            for pattern in ("*.parquet", "*.manifest.json")
            for p in self.shards.glob(pattern)
            if p.name.split(".")[0] not in keep
        ]


@dataclass
class RunData:
    """The tables of a run, sorted by :data:`SORT_KEYS` (deterministic: the same rows whatever the
    executor or interruptions)."""

    dir: Path
    episodes: pd.DataFrame
    actions: pd.DataFrame
    cases: pd.DataFrame
    meta: dict = field(default_factory=dict)
    spec: dict = field(default_factory=dict)


def _frame(frames: list[pd.DataFrame], table: str) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    keys = [k for k in SORT_KEYS[table] if k in df.columns]
    if table == "cases":
        df = df.drop_duplicates("case_id")
    return df.sort_values(keys, kind="mergesort").reset_index(drop=True) if keys else df


def _to_pandas(source) -> pd.DataFrame:
    return pq.read_table(source).replace_schema_metadata(None).to_pandas()


def load_run(run_dir: str | os.PathLike, complete_only: bool = True) -> RunData:
    """Load a run directory's tables.

    Args:
        run_dir: ``runs/<study>``.
        complete_only: read only units whose manifest and shards agree (:meth:`RunStore.check_unit`);
            a unit that fails is left out with a :class:`CorruptShardWarning` (resuming the run sets
            its files aside and runs it again). A run written before manifests existed, and not
            resumed since, is read as it was then: units whose episodes shard exists. False: every
            shard file as it is, unchecked.
    """
    store = RunStore(run_dir)
    if not store.shards.is_dir():
        raise FileNotFoundError(f"{run_dir}: no shards/ directory (not a hiseg-sim run, or nothing ran yet)")
    meta = store.read_meta() or {}
    spec_path = store.dir / "spec.json"
    spec = json.loads(spec_path.read_text()) if spec_path.is_file() else {}
    frames: dict[str, list[pd.DataFrame]] = {t: [] for t in TABLES}
    if not complete_only:
        for t in TABLES:
            frames[t] = [_to_pandas(f) for f in sorted(store.shards.glob(f"*.{t}.parquet"))]
    else:
        unsealed_run = meta.get("shard_format") is None
        uids = {p.name[: -len(".manifest.json")] for p in store.shards.glob("*.manifest.json")}
        if unsealed_run:
            uids |= {p.name[: -len(".episodes.parquet")] for p in store.shards.glob("*.episodes.parquet")}
        for uid in sorted(uids):
            if unsealed_run and not store.manifest_path(uid).exists():
                for t in TABLES:
                    if store.path(uid, t).is_file():
                        frames[t].append(_to_pandas(store.path(uid, t)))
                continue
            state, problems, data = store.check_unit(uid)
            if state != "whole":
                warnings.warn(
                    f"unit {uid}: shard(s) incomplete or damaged — {'; '.join(problems)}. Left out of the "
                    "tables; resuming the run sets its files aside and runs it again.",
                    CorruptShardWarning,
                    stacklevel=2,
                )
                continue
            for t in TABLES:
                frames[t].append(_to_pandas(pa.BufferReader(data[t])))
    return RunData(
        store.dir,
        _frame(frames["episodes"], "episodes"),
        _frame(frames["actions"], "actions"),
        _frame(frames["cases"], "cases"),
        meta,
        spec,
    )
