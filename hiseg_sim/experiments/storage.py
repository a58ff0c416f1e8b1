"""The run directory: Parquet shards written atomically per work unit, ``run.json``, resume, loading.

Layout of ``runs/<study>/``::

    run.json                    versions, config hash, seeds, unit count, status (rewritten atomically)
    spec.json                   the study spec as run (what the config hash covers, and the rest)
    shards/<unit>.cases.parquet     one row per case of the unit (metadata, packed ground truth)
    shards/<unit>.actions.parquet   one row per action (long format)
    shards/<unit>.episodes.parquet  one row per episode (long format) — written last: the commit mark
    log.jsonl                   per unit: worker pid, wall seconds (not results: never compared)

Each file is written to a temporary name in the same directory, flushed to disk and renamed
into place (``os.replace`` is atomic on POSIX), so a reader sees a whole shard or none. A unit
is complete when its three shards read back whole, carry the unit's id and the row count
stored in their own metadata. On resume, complete units are skipped; an unreadable or
inconsistent shard (a truncated file, a foreign unit id, a missing partner) is reported with a
warning naming the file and why, removed, and its unit run again. Rows hold nothing of the
wall clock, so an interrupted-and-resumed run has exactly the rows of an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = ["TABLES", "SORT_KEYS", "CorruptShardWarning", "RunMismatchError", "RunStore", "RunData", "load_run",
           "versions", "atomic_write_bytes"]

#: shard tables, in write order (episodes last: its presence marks the unit complete)
TABLES = ("cases", "actions", "episodes")
SORT_KEYS = {
    "episodes": ["segmenter", "annotator", "case_id", "replicate", "position"],
    "actions": ["segmenter", "annotator", "case_id", "replicate", "position", "step"],
    "cases": ["case_id"],
}
_META_KEY = b"hiseg_sim"


class CorruptShardWarning(UserWarning):
    """A shard could not be read back whole; it was removed and its unit will run again."""


class RunMismatchError(RuntimeError):
    """The run directory holds a run of a different study configuration."""


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


def _write_table(path: Path, rows: list[dict], unit_id: str) -> None:
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
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def _check_shard(path: Path, unit_id: str) -> str | None:
    """``None`` if ``path`` reads back whole and belongs to ``unit_id``; else why not."""
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any failure to read means "re-run"
        return f"unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    raw = (table.schema.metadata or {}).get(_META_KEY)
    if raw is None:
        return "no hiseg_sim metadata (not written by this runner)"
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        return "metadata is not valid JSON"
    if meta.get("unit_id") != unit_id:
        return f"belongs to unit {meta.get('unit_id')!r}, not {unit_id!r}"
    if int(meta.get("n_rows", -1)) != table.num_rows:
        return f"holds {table.num_rows} rows but was written with {meta.get('n_rows')}"
    return None


def versions() -> dict:
    """Versions of what the results depend on."""
    import numpy

    import hiseg_sim

    out = {"python": platform.python_version(), "platform": platform.platform(), "numpy": numpy.__version__,
           "pandas": pd.__version__, "pyarrow": pa.__version__, "hiseg_sim": hiseg_sim.__version__}
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
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


class RunStore:
    """Reads and writes one run directory (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.dir = Path(run_dir)
        self.shards = self.dir / "shards"

    def path(self, unit_id: str, table: str) -> Path:
        return self.shards / f"{unit_id}.{table}.parquet"

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
        atomic_write_bytes(self.dir / "run.json", (json.dumps(meta, indent=1, sort_keys=True, default=str) + "\n").encode())

    def prepare(self, spec_dict: dict, config_hash: str, seeds: dict, n_units: int, fresh: bool = False) -> dict:
        """Create the directory or check it holds the same configuration; returns ``run.json``'s content.

        Raises:
            RunMismatchError: the directory holds a run with another config hash (and ``fresh`` is False).
        """
        old = self.read_meta()
        if old is not None and not fresh and old.get("config_hash") != config_hash:
            raise RunMismatchError(
                f"{self.dir} holds a run of another configuration (config hash {old.get('config_hash')} vs "
                f"{config_hash} now): the cases, annotators, segmenters, seeds or episode function changed. "
                "Use another output directory, or start afresh (fresh=True / --fresh deletes its shards).")
        if fresh and self.dir.exists():
            for p in self.shards.glob("*"):
                p.unlink(missing_ok=True)
            for name in ("run.json", "log.jsonl"):
                (self.dir / name).unlink(missing_ok=True)
            old = None
        self.shards.mkdir(parents=True, exist_ok=True)
        for tmp in self.shards.glob(".*.tmp"):  # left by a killed writer
            tmp.unlink(missing_ok=True)
        atomic_write_bytes(self.dir / "spec.json", (json.dumps(spec_dict, indent=1, sort_keys=True) + "\n").encode())
        meta = dict(old or {})
        meta.update(config_hash=config_hash, study=spec_dict.get("name"), seeds=seeds, n_units=n_units,
                    versions=versions(), status="running", updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        meta.setdefault("created", meta["updated"])
        meta.setdefault("segmenters", {})
        meta.setdefault("sessions", [])
        self.write_meta(meta)
        return meta

    # ---- shards ---------------------------------------------------------------------------
    def completed(self, unit_ids, warn: bool = True) -> set[str]:
        """The units of ``unit_ids`` whose shards are whole. Broken ones are removed (with a warning)."""
        done = set()
        for uid in unit_ids:
            paths = {t: self.path(uid, t) for t in TABLES}
            present = {t for t, p in paths.items() if p.exists()}
            if not present:
                continue
            problems = []
            if "episodes" not in present:
                problems.append("interrupted before its episodes shard was written")
            for t in sorted(present):
                why = _check_shard(paths[t], uid)
                if why:
                    problems.append(f"{paths[t].name}: {why}")
            if "episodes" in present and present != set(TABLES):
                problems.append(f"missing {sorted(set(TABLES) - present)}")
            if problems:
                if warn:
                    warnings.warn(f"unit {uid}: shard(s) incomplete or corrupt — {'; '.join(problems)}. "
                                  "Removed; the unit runs again.", CorruptShardWarning, stacklevel=2)
                for p in paths.values():
                    p.unlink(missing_ok=True)
                continue
            done.add(uid)
        return done

    def write_unit(self, result) -> None:
        """Write a :class:`~hiseg_sim.experiments.worker.UnitResult`'s tables (episodes last) and log it."""
        for t in TABLES:
            _write_table(self.path(result.unit_id, t), result.tables.get(t, []), result.unit_id)
        with (self.dir / "log.jsonl").open("a") as fh:
            fh.write(json.dumps({"unit_id": result.unit_id, **result.info}, default=str) + "\n")

    def orphans(self, unit_ids) -> list[Path]:
        """Shard files of units not in ``unit_ids``."""
        keep = set(unit_ids)
        return [p for p in self.shards.glob("*.parquet") if p.name.split(".")[0] not in keep]


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


def _read_all(store: RunStore, table: str, unit_ids: list[str] | None) -> pd.DataFrame:
    if unit_ids is None:
        files = sorted(store.shards.glob(f"*.{table}.parquet"))
    else:
        files = [store.path(u, table) for u in unit_ids if store.path(u, table).exists()]
    frames = [pq.read_table(f).replace_schema_metadata(None).to_pandas() for f in files]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    keys = [k for k in SORT_KEYS[table] if k in df.columns]
    if table == "cases":
        df = df.drop_duplicates("case_id")
    return df.sort_values(keys, kind="mergesort").reset_index(drop=True) if keys else df


def load_run(run_dir: str | os.PathLike, complete_only: bool = True) -> RunData:
    """Load a run directory's tables.

    Args:
        run_dir: ``runs/<study>``.
        complete_only: read only units whose episodes shard exists (the commit mark).
    """
    store = RunStore(run_dir)
    if not store.shards.is_dir():
        raise FileNotFoundError(f"{run_dir}: no shards/ directory (not a hiseg-sim run, or nothing ran yet)")
    meta = store.read_meta() or {}
    units = sorted(p.name[: -len(".episodes.parquet")] for p in store.shards.glob("*.episodes.parquet")) \
        if complete_only else None
    spec_path = store.dir / "spec.json"
    spec = json.loads(spec_path.read_text()) if spec_path.is_file() else {}
    return RunData(store.dir, _read_all(store, "episodes", units), _read_all(store, "actions", units),
                   _read_all(store, "cases", units), meta, spec)
