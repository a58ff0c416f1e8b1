"""On-disk cache of built phantom cases, shared by every process of a machine.

Building a phantom around a LIDC nodule takes 0.1–0.6 s; a sweep's workers each need the same
cases, and every run needs them again. The cache keeps each built :class:`~hiseg_sim.data.case.Case`
as two files in the cache root, named by ``key``, a hash of the nodule id, the phantom seed and the
*source code of the generator* (every ``hiseg_sim/data/phantom*.py``, ``lidc*.py`` and ``case.py``),
so changing the generator invalidates old entries by itself:

- ``<key>.npz``: the arrays, read with ``np.load(..., allow_pickle=False)``: ``volume_hu``
  ``float32`` ``(Z, Y, X)``, ``gt`` ``bool`` ``(Z, Y, X)``, ``reader_<i>`` ``bool`` ``(Z, Y, X)``
  for each reader mask in order, and ``meta_<j>`` for each array inside ``meta`` (a phantom's
  ``uint8`` ``anatomy`` map);
- ``<key>.json``: the sidecar ``{"format", "sha256", "entry"}``; ``entry`` holds the nodule id,
  seed, generator version, ``case_id``, ``spacing_zyx``, the number of readers, the size and SHA-256
  of the ``.npz`` bytes, and ``meta`` in a typed JSON form (tuples, lists, dicts with any keys,
  numpy scalars and arrays come back as the types they went in as); ``sha256`` is the SHA-256 of
  ``entry`` written as canonical JSON (sorted keys), so a changed digit in the sidecar is caught too.

Nothing read from the cache is unpickled: the files sit in a user-writable folder, and a pickle
runs code when loaded. An entry is checked before any of it is used: the sidecar against its own
SHA-256 and the key's nodule id, seed and generator version, then the ``.npz`` bytes against the
SHA-256 the sidecar holds, then the arrays' names, dtypes and shapes. An
entry that fails any check (truncated, corrupt, planted, of another format) is reported with a
:class:`CorruptCaseCacheWarning` naming the file, both files are removed, and the case is rebuilt:
a cached case is bit-identical to the one built, or it is not used. Entries of the earlier
pickle-based format (``<key>.pkl``) are never opened; the one for a key is deleted when that key
is written anew.

Each file is written to a temporary name and renamed into place (atomic on POSIX), the ``.npz``
before its sidecar, and the ``.npz`` bytes depend only on the arrays (fixed zip timestamps), so
processes writing the same case at once write identical files.

The root is ``$HISEG_CASE_CACHE`` if set (``0`` or ``off`` turns the cache off), else
``~/.cache/hiseg-sim/cases``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from hiseg_sim.data.case import Case

__all__ = ["CorruptCaseCacheWarning", "cached_case", "case_cache_dir", "generator_version"]

_FORMAT = "hiseg-sim case cache 2"
#: numpy scalar kinds the sidecar stores exactly: bool, signed/unsigned int, float, unicode.
_SCALAR_KINDS = "biufU"


class CorruptCaseCacheWarning(UserWarning):
    """A cached case could not be read or failed a check; it was removed and is rebuilt."""


class _BadEntry(ValueError):
    """Why an entry cannot be used; ``path`` is the file that showed it."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(reason)
        self.path = path


class _Unstorable(TypeError):
    """A value in ``meta`` that the typed JSON form cannot hold exactly."""


def case_cache_dir() -> Path | None:
    """Where built cases are cached, or ``None`` if ``$HISEG_CASE_CACHE`` turns the cache off."""
    env = os.environ.get("HISEG_CASE_CACHE", "").strip()
    if env.lower() in ("0", "off", "no", "false"):
        return None
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "hiseg-sim" / "cases"


@lru_cache(maxsize=1)
def generator_version() -> str:
    """A hash of the generator's source files: an edit to any of them invalidates cached cases."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for p in sorted([*here.glob("phantom*.py"), *here.glob("lidc*.py"), here / "case.py"]):
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _key(nodule_id: str, seed: int) -> str:
    return hashlib.sha256(f"{nodule_id}|{int(seed)}|{generator_version()}".encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------- meta as typed JSON
#
# Every container is a one-key object naming its type, so decoding never has to guess:
# {"list": [...]}, {"tuple": [...]}, {"dict": [[key, value], ...]}, {"ndarray": "meta_0"} (an array
# stored in the .npz), {"numpy": [dtype, value]} (a numpy scalar). None, bool, int, float and str
# are JSON values as they are (JSON keeps 1 and 1.0 apart; floats are written with repr, exact).


def _encode(v: Any, arrays: dict[str, np.ndarray]) -> Any:
    t = type(v)
    if v is None or t in (bool, int, float, str):
        return v
    if t is list:
        return {"list": [_encode(x, arrays) for x in v]}
    if t is tuple:
        return {"tuple": [_encode(x, arrays) for x in v]}
    if t is dict:
        return {"dict": [[_encode(k, arrays), _encode(x, arrays)] for k, x in v.items()]}
    if t is np.ndarray:
        if v.dtype.hasobject:
            raise _Unstorable(f"an array of Python objects ({v.dtype})")
        name = f"meta_{len(arrays)}"
        arrays[name] = v
        return {"ndarray": name}
    if isinstance(v, np.generic) and v.dtype.kind in _SCALAR_KINDS:
        return {"numpy": [v.dtype.str, v.item()]}
    raise _Unstorable(f"a {t.__module__}.{t.__qualname__}")


def _decode(x: Any, arrays: dict[str, np.ndarray], used: set[str]) -> Any:
    if x is None or type(x) in (bool, int, float, str):
        return x
    if type(x) is not dict or len(x) != 1:
        raise ValueError(f"unexpected JSON value {x!r:.60}")
    ((tag, body),) = x.items()
    if tag == "list" and type(body) is list:
        return [_decode(e, arrays, used) for e in body]
    if tag == "tuple" and type(body) is list:
        return tuple(_decode(e, arrays, used) for e in body)
    if tag == "dict" and type(body) is list and all(type(kv) is list and len(kv) == 2 for kv in body):
        return {_decode(k, arrays, used): _decode(v, arrays, used) for k, v in body}
    if tag == "ndarray" and type(body) is str and body in arrays and body not in used:
        used.add(body)
        return arrays[body]
    if tag == "numpy" and type(body) is list and len(body) == 2 and type(body[0]) is str:
        dtype = np.dtype(body[0])
        if dtype.kind not in _SCALAR_KINDS:
            raise ValueError(f"numpy scalar of dtype {dtype} in meta")
        return np.array(body[1], dtype=dtype)[()]
    raise ValueError(f"unexpected {tag!r} entry in meta")


# ----------------------------------------------------------------------------- files


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` (uncompressed zip of ``.npy`` members) whose bytes depend only on ``arrays``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asanyarray(arr), allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    return buf.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _entry(case: Case, nodule_id: str, seed: int) -> tuple[bytes, bytes]:
    """The ``(npz bytes, sidecar bytes)`` of ``case``; raises _Unstorable for a meta value JSON cannot hold."""
    arrays: dict[str, np.ndarray] = {"volume_hu": case.volume_hu, "gt": case.gt}
    arrays.update({f"reader_{i}": m for i, m in enumerate(case.reader_masks)})
    meta_arrays: dict[str, np.ndarray] = {}
    meta = _encode(case.meta, meta_arrays)
    npz = _npz_bytes({**arrays, **meta_arrays})
    entry = {
        "nodule_id": nodule_id,
        "seed": int(seed),
        "generator_version": generator_version(),
        "case_id": case.case_id,
        "spacing_zyx": [float(s) for s in case.spacing_zyx],
        "n_readers": len(case.reader_masks),
        "npz_bytes": len(npz),
        "npz_sha256": hashlib.sha256(npz).hexdigest(),
        "meta": meta,
    }
    sidecar = {"format": _FORMAT, "sha256": _digest(entry), "entry": entry}
    return npz, json.dumps(sidecar).encode()


def _digest(entry: dict) -> str:
    """SHA-256 of ``entry`` as canonical JSON (a parsed entry re-serialises to the same text)."""
    return hashlib.sha256(json.dumps(entry, sort_keys=True).encode()).hexdigest()


def _check_array(path: Path, name: str, arr: np.ndarray, dtype: type, shape: tuple[int, ...] | None) -> None:
    """``arr`` is 3-D ``(Z, Y, X)`` of ``dtype`` (and ``shape`` when given), else _BadEntry."""
    if arr.dtype != dtype or arr.ndim != 3 or (shape is not None and arr.shape != shape):
        raise _BadEntry(path, f"{name} is {arr.dtype} {arr.shape}, expected {np.dtype(dtype)} {shape or '(Z, Y, X)'}")


def _load(npz_path: Path, json_path: Path, nodule_id: str, seed: int) -> Case | None:
    """The cached case, ``None`` when there is no entry; raises _BadEntry for an entry that fails a check."""
    try:
        side_raw = json_path.read_bytes()
    except FileNotFoundError:
        return None  # no entry (or a write in progress: its npz is renamed in before the sidecar)
    try:
        outer = json.loads(side_raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bytes that are not UTF-8, deep nesting
        raise _BadEntry(json_path, f"not JSON ({type(exc).__name__})") from exc
    if not isinstance(outer, dict) or outer.get("format") != _FORMAT:
        raise _BadEntry(json_path, f"not a {_FORMAT!r} sidecar")
    side = outer.get("entry")
    if not isinstance(side, dict) or _digest(side) != outer.get("sha256"):
        raise _BadEntry(json_path, "checksum mismatch: the sidecar was changed after it was written")
    expect = {"nodule_id": nodule_id, "seed": int(seed), "generator_version": generator_version()}
    for k, v in expect.items():
        if side.get(k) != v:
            raise _BadEntry(json_path, f"{k} is {side.get(k)!r}, expected {v!r}")
    try:
        raw = npz_path.read_bytes()
    except FileNotFoundError as exc:
        raise _BadEntry(npz_path, "the .npz beside the sidecar is missing") from exc
    if len(raw) != side.get("npz_bytes") or hashlib.sha256(raw).hexdigest() != side.get("npz_sha256"):
        raise _BadEntry(npz_path, "checksum mismatch: the .npz is not the one its sidecar describes")
    n_readers = side.get("n_readers")
    if type(n_readers) is not int or n_readers < 0:
        raise _BadEntry(json_path, f"n_readers is {n_readers!r}")
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as z:  # the bytes just checked, never re-read
            arrays = {name: z[name] for name in z.files}
    except Exception as exc:  # a damaged zip or .npy, or an object array (needs pickle: refused)
        raise _BadEntry(npz_path, f"not a readable .npz ({type(exc).__name__}: {exc})") from exc
    core = {"volume_hu", "gt", *(f"reader_{i}" for i in range(n_readers))}
    if not core <= arrays.keys():
        raise _BadEntry(npz_path, f"arrays {sorted(core - arrays.keys())} are missing")
    vol = arrays["volume_hu"]
    _check_array(npz_path, "volume_hu", vol, np.float32, None)
    for name in ("gt", *(f"reader_{i}" for i in range(n_readers))):
        _check_array(npz_path, name, arrays[name], np.bool_, vol.shape)
    meta_arrays = {k: v for k, v in arrays.items() if k not in core}
    used: set[str] = set()
    try:
        meta = _decode(side.get("meta"), meta_arrays, used)
        spacing, case_id = side.get("spacing_zyx"), side.get("case_id")
        if not (
            type(meta) is dict
            and type(case_id) is str
            and type(spacing) is list
            and all(type(s) is float for s in spacing)
        ):
            raise ValueError("meta must be a dict, case_id a string and spacing_zyx a list of floats")
        if used != meta_arrays.keys():
            raise ValueError(f"arrays {sorted(meta_arrays.keys() - used)} are not in meta")
        return Case(
            case_id=case_id,
            volume_hu=vol,
            spacing_zyx=tuple(spacing),
            gt=arrays["gt"],
            reader_masks=tuple(arrays[f"reader_{i}"] for i in range(n_readers)),
            meta=meta,
        )
    except (ValueError, TypeError, RecursionError) as exc:  # CaseError is a ValueError
        raise _BadEntry(json_path, str(exc)) from exc


def _store(npz_path: Path, json_path: Path, case: Case, nodule_id: str, seed: int) -> None:
    try:
        npz, sidecar = _entry(case, nodule_id, seed)
    except _Unstorable as exc:
        warnings.warn(
            f"case {case.case_id} is not cached: its meta holds {exc}, which the cache cannot store "
            "exactly; keep meta to JSON values, tuples and numpy arrays",
            stacklevel=3,
        )
        return
    try:
        npz_path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(npz_path, npz)
        _write_atomic(json_path, sidecar)
        npz_path.with_suffix(".pkl").unlink(missing_ok=True)  # the earlier format's entry, never read
    except OSError as exc:  # a read-only or full disk: the case is still returned, just not kept
        warnings.warn(f"could not write the case cache entry {npz_path}: {exc}", stacklevel=3)


def cached_case(
    nodule_id: str, seed: int, build: Callable[[], Case], cache_dir: str | os.PathLike | None | bool = True
) -> Case:
    """The case ``build()`` makes for ``(nodule_id, seed)``, from the cache when it is there.

    A cached case equals the built one bit for bit: the same arrays (dtype, shape, bytes),
    spacing, ``case_id`` and ``meta`` (same keys, values and types). A damaged entry is reported
    with a :class:`CorruptCaseCacheWarning` naming the file, removed, and rebuilt.

    Args:
        cache_dir: a directory, ``True`` for :func:`case_cache_dir`, ``False``/``None`` for no cache.
    """
    root = case_cache_dir() if cache_dir is True else (Path(cache_dir) if cache_dir else None)
    if root is None:
        return build()
    key = _key(nodule_id, seed)
    npz_path, json_path = root / f"{key}.npz", root / f"{key}.json"
    try:
        case = _load(npz_path, json_path, nodule_id, seed)
    except _BadEntry as bad:
        warnings.warn(
            f"case cache entry {bad.path} is unreadable ({bad}); removed, the case is rebuilt",
            CorruptCaseCacheWarning,
            stacklevel=2,
        )
        json_path.unlink(missing_ok=True)
        npz_path.unlink(missing_ok=True)
        case = None
    if case is None:
        case = build()
        _store(npz_path, json_path, case, nodule_id, seed)
    return case
