"""The on-disk case cache: a hit returns the built case, a corrupt entry is rebuilt, the env var turns it off."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from hiseg_sim.data.case import Case
from hiseg_sim.data.case_cache import CorruptCaseCacheWarning, cached_case, case_cache_dir


def _case(value: float = -700.0) -> Case:
    vol = np.full((3, 16, 16), value, np.float32)
    gt = np.zeros(vol.shape, bool)
    gt[1, 5:9, 6:10] = True
    return Case("T-0001/n1", vol, (1.0, 0.7, 0.7), gt)


class _Counter:
    def __init__(self, value=-700.0):
        self.calls = 0
        self.value = value

    def __call__(self):
        self.calls += 1
        return _case(self.value)


def test_second_call_reads_the_cache(tmp_path):
    build = _Counter()
    a = cached_case("T-0001/n1", 3, build, tmp_path)
    b = cached_case("T-0001/n1", 3, build, tmp_path)
    assert build.calls == 1
    assert np.array_equal(a.volume_hu, b.volume_hu) and np.array_equal(a.gt, b.gt) and a.spacing_zyx == b.spacing_zyx
    # another seed is another case
    cached_case("T-0001/n1", 4, build, tmp_path)
    assert build.calls == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_entry_is_reported_and_rebuilt(tmp_path, damage):
    build = _Counter()
    cached_case("T-0001/n1", 3, build, tmp_path)
    (path,) = list(tmp_path.glob("*.pkl"))
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        raw[-5] ^= 0xFF
    else:
        raw = bytearray(b"not a case file at all")
    path.write_bytes(bytes(raw))
    with pytest.warns(CorruptCaseCacheWarning, match="unreadable"):
        c = cached_case("T-0001/n1", 3, build, tmp_path)
    assert build.calls == 2 and c.volume_hu.shape == (3, 16, 16)
    with warnings.catch_warnings():  # the rebuilt entry is good again
        warnings.simplefilter("error")
        cached_case("T-0001/n1", 3, build, tmp_path)
    assert build.calls == 2


def test_disabled_cache_always_builds(tmp_path, monkeypatch):
    monkeypatch.setenv("HISEG_CASE_CACHE", "off")
    assert case_cache_dir() is None
    build = _Counter()
    cached_case("T-0001/n1", 3, build, True)
    cached_case("T-0001/n1", 3, build, True)
    assert build.calls == 2
    monkeypatch.setenv("HISEG_CASE_CACHE", str(tmp_path / "c"))
    assert case_cache_dir() == tmp_path / "c"


def test_cohort_from_cache_equals_a_fresh_build(tmp_path):
    from hiseg_sim.data.cohort import load_cohort

    built = load_cohort("default", limit=2, cache=False)
    first = load_cohort("default", limit=2, cache=tmp_path)
    again = load_cohort("default", limit=2, cache=tmp_path)
    assert len(list(tmp_path.glob("*.pkl"))) == 2
    for x, y, z in zip(built, first, again):
        assert x.case_id == y.case_id == z.case_id
        assert np.array_equal(x.volume_hu, z.volume_hu) and np.array_equal(x.gt, z.gt)
        assert z.meta["cohort"] == "default"
