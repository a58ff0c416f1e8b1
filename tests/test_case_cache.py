"""The on-disk case cache: a hit returns the built case bit for bit, a damaged entry is reported and
rebuilt, nothing on disk is ever unpickled, the env var turns it off."""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from hiseg_sim.data import case_cache
from hiseg_sim.data.case import Case
from hiseg_sim.data.case_cache import (
    CorruptCaseCacheWarning,
    cached_case,
    case_cache_dir,
)

NODULE, SEED = "T-0001/n1", 3


def _case(value: float = -700.0) -> Case:
    """A (3, 16, 16) case with two reader masks and a meta of every type the cache must keep."""
    vol = np.full((3, 16, 16), value, np.float32)
    vol[0, 0, :4] = [np.float32(0.1), -1024.0, 3071.5, np.float32(1e-7)]  # bits a lossy store would change
    gt = np.zeros(vol.shape, bool)
    gt[1, 5:9, 6:10] = True
    r2 = gt.copy()
    r2[1, 5, 6] = False
    meta = {
        "source": "phantom-lidc",
        "seed": 9623,
        "texture": 5,
        "juxtapleural": False,
        "diameter_mm": 11.44,
        "lung_hu": -885.8,
        "split": None,
        "ratings": {"subtlety": 4.0, "margin": 4.0},
        "mask_offset_zyx": (1, 33, 32),
        "anatomy": np.arange(vol.size, dtype=np.uint8).reshape(vol.shape),
        "anatomy_codes": {0: "lung", 1: "nodule", 3: "attached_vessel"},
        "nested": [(1, 2.5), {"a": [None, True]}, ()],
        "f32": np.float32(0.7),
        "i64": np.int64(-3),
        "flag": np.bool_(True),
        "weird keys": {(1, 2): "tuple key", 2.5: "float key", None: "none"},
        "list_of_arrays": [np.array([1.5, 2.5]), np.zeros((2, 0), np.int16)],
    }
    return Case(NODULE, vol, (1.0, 0.7, 0.703125), gt, (gt.copy(), r2), meta)


class _Counter:
    def __init__(self, value=-700.0, make=_case):
        self.calls = 0
        self.value = value
        self.make = make

    def __call__(self):
        self.calls += 1
        return self.make(self.value)


def assert_same(a, b, where="meta"):
    """``a`` and ``b`` are equal values of the same types, recursively (arrays: dtype, shape, bytes)."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), where
    elif isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(k, next(kb for kb in b if kb == k and type(kb) is type(k)), f"{where} key {k!r}")
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, (float, np.floating)) and np.isnan(a):
        assert np.isnan(b), where
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_case(a: Case, b: Case) -> None:
    assert a.case_id == b.case_id and a.spacing_zyx == b.spacing_zyx
    assert_same(a.volume_hu, b.volume_hu, "volume_hu")
    assert_same(a.gt, b.gt, "gt")
    assert_same(a.reader_masks, b.reader_masks, "reader_masks")
    assert_same(a.meta, b.meta)


def _entry(root: Path) -> tuple[Path, Path]:
    (npz,) = root.glob("*.npz")
    return npz, npz.with_suffix(".json")


def test_second_call_reads_the_cache_bit_identical(tmp_path):
    build = _Counter()
    a = cached_case(NODULE, SEED, build, tmp_path)
    b = cached_case(NODULE, SEED, build, tmp_path)
    assert build.calls == 1
    assert b is not a
    assert_same_case(a, b)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npz"]
    cached_case(NODULE, SEED + 1, build, tmp_path)  # another seed is another case
    assert build.calls == 2


def test_helper_tells_types_apart():
    """The comparison above would notice a tuple coming back as a list, or an int key as a str."""
    with pytest.raises(AssertionError):
        assert_same({"t": (1, 2)}, {"t": [1, 2]})
    with pytest.raises(AssertionError):
        assert_same({"d": {0: "lung"}}, {"d": {"0": "lung"}})
    with pytest.raises(AssertionError):
        assert_same({"x": np.float32(0.7)}, {"x": 0.7})


def _damage(npz: Path, side: Path, how: str) -> Path:
    """Damage the entry; return the file the warning must name."""
    if how == "npz-truncate":
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    elif how == "npz-flip":
        raw = bytearray(npz.read_bytes())
        raw[len(raw) // 3] ^= 0x10
        npz.write_bytes(bytes(raw))
    elif how == "npz-garbage":
        npz.write_bytes(b"not a case file at all")
    elif how == "npz-missing":
        npz.unlink()
    elif how == "json-garbage":
        side.write_bytes(b"\x00{not json")
        return side
    elif how == "json-one-digit":  # still valid JSON, one value changed: the sidecar's own checksum
        text = side.read_text()
        assert text.count("0.703125") == 1
        side.write_text(text.replace("0.703125", "0.703126"))
        return side
    elif how in ("json-other-generator", "json-meta-tampered"):  # rewritten with a matching checksum
        d = json.loads(side.read_text())
        if how == "json-other-generator":
            d["entry"]["generator_version"] = "0" * 16
        else:  # the npz is intact, the sidecar points meta at a core array
            d["entry"]["meta"] = {"dict": [["anatomy", {"ndarray": "volume_hu"}]]}
        d["sha256"] = case_cache._digest(d["entry"])
        side.write_text(json.dumps(d))
        return side
    return npz


@pytest.mark.parametrize(
    "how",
    [
        "npz-truncate",
        "npz-flip",
        "npz-garbage",
        "npz-missing",
        "json-garbage",
        "json-one-digit",
        "json-other-generator",
        "json-meta-tampered",
    ],
)
def test_damaged_entry_is_reported_by_name_removed_and_rebuilt(tmp_path, how):
    build = _Counter()
    first = cached_case(NODULE, SEED, build, tmp_path)
    npz, side = _entry(tmp_path)
    named = _damage(npz, side, how)
    with pytest.warns(CorruptCaseCacheWarning, match=f"{named.name}.*unreadable") as rec:
        c = cached_case(NODULE, SEED, build, tmp_path)
    assert len([w for w in rec if issubclass(w.category, CorruptCaseCacheWarning)]) == 1
    assert build.calls == 2
    assert_same_case(first, c)
    with warnings.catch_warnings():  # the rebuilt entry is good again
        warnings.simplefilter("error")
        again = cached_case(NODULE, SEED, build, tmp_path)
    assert build.calls == 2
    assert_same_case(first, again)


def _pickle_bomb(marker: Path) -> bytes:
    """Pickled bytes that create ``marker`` when unpickled."""

    class Plant:
        def __reduce__(self):
            return (Path.touch, (marker,))

    return pickle.dumps(Plant(), protocol=pickle.HIGHEST_PROTOCOL)


def _no_unpickling(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the case cache must never unpickle")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)


def test_bomb_is_live(tmp_path):
    """The planted payload below really runs code when unpickled: the tests that use it can fail."""
    pickle.loads(_pickle_bomb(tmp_path / "ran"))
    assert (tmp_path / "ran").exists()


def test_old_pickle_entry_is_never_loaded(tmp_path, monkeypatch):
    marker = tmp_path / "executed"
    payload = _pickle_bomb(marker)
    old = tmp_path / f"{case_cache._key(NODULE, SEED)}.pkl"  # where the pickle-based cache kept this case
    old.write_bytes(b"HISEGCASE1" + hashlib.sha256(payload).digest() + payload)  # its format, valid checksum
    _no_unpickling(monkeypatch)
    build = _Counter()
    case = cached_case(NODULE, SEED, build, tmp_path)
    assert build.calls == 1 and isinstance(case, Case)
    assert not marker.exists()
    assert not old.exists()  # the superseded entry is deleted (unread) when the key is written anew


def test_npz_holding_a_pickled_object_array_is_refused(tmp_path, monkeypatch):
    """A planted entry whose sidecar checksum matches: only allow_pickle=False stands in the way."""
    marker = tmp_path / "executed"
    build = _Counter()
    cached_case(NODULE, SEED, build, tmp_path)
    npz, side = _entry(tmp_path)

    class Plant:
        def __reduce__(self):
            return (Path.touch, (marker,))

    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["meta_0"] = np.array([Plant()], dtype=object)
    np.savez(npz, **arrays)  # np.savez pickles the object array
    d = json.loads(side.read_text())
    raw = npz.read_bytes()
    d["entry"]["npz_bytes"], d["entry"]["npz_sha256"] = len(raw), hashlib.sha256(raw).hexdigest()
    d["sha256"] = case_cache._digest(d["entry"])
    side.write_text(json.dumps(d))
    _no_unpickling(monkeypatch)
    with pytest.warns(CorruptCaseCacheWarning, match=f"{npz.name}.*unreadable"):
        cached_case(NODULE, SEED, build, tmp_path)
    assert build.calls == 2 and not marker.exists()


def test_meta_the_cache_cannot_store_exactly_is_not_cached(tmp_path):
    def odd(value):
        c = _case(value)
        c.meta["tags"] = {"a", "b"}  # a set: no exact typed-JSON form
        return c

    build = _Counter(make=odd)
    with pytest.warns(UserWarning, match="not cached.*set"):
        cached_case(NODULE, SEED, build, tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.warns(UserWarning, match="not cached"):
        cached_case(NODULE, SEED, build, tmp_path)
    assert build.calls == 2


def test_disabled_cache_always_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("HISEG_CASE_CACHE", "off")
    assert case_cache_dir() is None
    build = _Counter()
    cached_case(NODULE, SEED, build, True)
    cached_case(NODULE, SEED, build, True)
    assert build.calls == 2
    monkeypatch.setenv("HISEG_CASE_CACHE", str(tmp_path / "c"))
    assert case_cache_dir() == tmp_path / "c"


def test_cohort_from_cache_equals_a_fresh_build(tmp_path, monkeypatch):
    from hiseg_sim.data.cohort import load_cohort

    built = load_cohort("default", limit=2, cache=False)
    first = load_cohort("default", limit=2, cache=tmp_path)
    _no_unpickling(monkeypatch)
    again = load_cohort("default", limit=2, cache=tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 2 and len(list(tmp_path.glob("*.json"))) == 2
    for x, y, z in zip(built, first, again):
        assert_same_case(x, y)
        assert_same_case(x, z)
        assert z.meta["cohort"] == "default" and z.meta["anatomy"].dtype == np.uint8
