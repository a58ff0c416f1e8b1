"""The on-disk embedding cache stays under its cap, least recently used first, and a full disk does
not stop a run. All tests use :class:`tests.stubs.StubSegmenter` (a trivial core behind the real
cache machinery)."""

import errno
import json
import os
import time
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from hiseg_sim.cli import app
from hiseg_sim.segmenters import EmbeddingCache
from hiseg_sim.segmenters import cache as C
from tests.stubs import StubSegmenter


def _images(n):
    """n slices that differ, so each has its own cache key."""
    return [np.full((32, 32), -900.0 + 10 * i, np.float32) for i in range(n)]


def _entry_bytes(tmp_path):
    seg = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path / "probe", max_disk_bytes=0))
    emb = seg.encode(_images(1)[0])
    return seg.cache.path_for(emb.key).stat().st_size


def _age(path, seconds_ago):
    t = time.time() - seconds_ago
    os.utime(path, (t, t))


def test_a_capped_store_never_holds_more_than_the_cap_and_keeps_the_newest_stub(tmp_path):
    size = _entry_bytes(tmp_path)
    cap = 5 * size
    seg = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path / "emb", max_disk_bytes=cap))
    keys = []
    for img in _images(14):
        keys.append(seg.encode(img).key)
        assert C.disk_usage(tmp_path / "emb").bytes <= cap
    on_disk = {k for k in keys if seg.cache.path_for(k).exists()}
    assert keys[-1] in on_disk and keys[0] not in on_disk
    assert seg.cache.pruned_entries == 14 - len(on_disk)


def test_no_cap_keeps_everything_stub(tmp_path):
    seg = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path, max_disk_bytes=0))
    for img in _images(8):
        seg.encode(img)
    assert C.disk_usage(tmp_path).entries == 8 and seg.cache.pruned_entries == 0


def test_a_disk_hit_makes_the_entry_recently_used_so_it_is_pruned_last_stub(tmp_path):
    size = _entry_bytes(tmp_path)
    seg = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path / "emb", max_disk_bytes=0))
    a, b, c = (seg.encode(img) for img in _images(3))
    for k, emb in enumerate((a, b, c)):
        _age(seg.cache.path_for(emb.key), 3000 - 1000 * k)  # a oldest, c newest
    other = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path / "emb", max_disk_bytes=0))
    other.encode(_images(1)[0])  # a read from disk in another process
    assert other.encoder_calls == 0
    gone = C.prune(tmp_path / "emb", max_bytes=2 * size)
    assert gone.entries == 1
    assert [seg.cache.path_for(e.key).exists() for e in (a, b, c)] == [True, False, True]


def test_prune_by_age_dry_run_and_stale_unfinished_writes_stub(tmp_path):
    seg = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path, max_disk_bytes=0))
    embs = [seg.encode(img) for img in _images(4)]
    for emb in embs[:2]:
        _age(seg.cache.path_for(emb.key), 10 * 86400)
    sub = seg.cache.path_for(embs[0].key).parent
    stale, fresh = sub / ".tmp-stale.npz", sub / ".tmp-fresh.npz"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    _age(stale, 2 * 3600)
    would = C.prune(tmp_path, older_than_s=86400, dry_run=True)
    assert would.entries == 2 and C.disk_usage(tmp_path).entries == 4 and stale.exists()
    gone = C.prune(tmp_path, older_than_s=86400)
    assert gone.entries == 2 and C.disk_usage(tmp_path).entries == 2
    assert [seg.cache.path_for(e.key).exists() for e in embs] == [False, False, True, True]
    assert not stale.exists() and fresh.exists()  # a write under way in another process is left alone


def test_a_full_disk_warns_once_and_the_run_goes_on_in_memory_stub(tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    seg = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path))
    monkeypatch.setattr(C.np, "savez", full)
    imgs = _images(3)
    with pytest.warns(C.CacheWriteWarning, match=r"No space left on device.*hiseg-sim cache prune"):
        first = seg.encode(imgs[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning: the cache stopped writing
        seg.encode(imgs[1])
        again = seg.encode(imgs[0])  # still served from memory
    assert again is first and seg.encoder_calls == 2 and seg.cache.disk_write_failed
    assert not list(tmp_path.glob("*/.tmp-*"))  # the failed write left no half file


def test_an_entry_pruned_between_check_and_read_is_a_plain_miss_stub(tmp_path, monkeypatch):
    img = _images(1)[0]
    StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path)).encode(img)
    reader = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path))

    def vanished(*a, **k):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(C.np, "load", vanished)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not reported as a corrupt entry
        reader.encode(img)
    assert reader.encoder_calls == 1 and reader.cache.corrupt_entries == 0


@pytest.mark.parametrize(
    ("raw", "expect"),
    [("", 20_000_000_000), ("1.5", 1_500_000_000), ("0", None), ("abc", "not a number"), ("-1", ">= 0")],
)
def test_the_cap_from_the_environment(monkeypatch, raw, expect):
    monkeypatch.setenv("HISEG_CACHE_MAX_GB", raw)
    if isinstance(expect, str):
        with pytest.raises(ValueError, match=expect):
            C.default_max_disk_bytes()
    else:
        assert C.default_max_disk_bytes() == expect


def test_cache_info_and_prune_from_the_command_line_stub(tmp_path):
    seg = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path, max_disk_bytes=0))
    embs = [seg.encode(img) for img in _images(3)]
    _age(seg.cache.path_for(embs[0].key), 40 * 86400)
    runner = CliRunner()
    info = runner.invoke(app, ["cache", "info", "--json", "--cache-dir", str(tmp_path)])
    assert info.exit_code == 0, info.output
    got = json.loads(info.output.strip().splitlines()[-1])
    assert got["entries"] == 3 and got["bytes"] == C.disk_usage(tmp_path).bytes and got["dir"] == str(tmp_path)
    res = runner.invoke(app, ["cache", "prune", "--older-than-days", "30", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert "deleted 1 embeddings" in res.output and C.disk_usage(tmp_path).entries == 2
    res = runner.invoke(app, ["cache", "prune", "--all", "--dry-run", "--cache-dir", str(tmp_path)])
    assert "would delete 2 embeddings" in res.output and C.disk_usage(tmp_path).entries == 2
    res = runner.invoke(app, ["cache", "prune", "--cache-dir", str(tmp_path)])
    assert res.exit_code == 2 and "--max-gb, --older-than-days or --all" in res.output


def test_prune_leaves_other_folders_in_the_cache_directory_alone_stub(tmp_path):
    seg = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path, max_disk_bytes=0))
    seg.encode(_images(1)[0])
    other = tmp_path / "specialist"
    other.mkdir()
    (other / "weights.npz").write_bytes(b"x" * 1000)
    (other / ".tmp-old.npz").write_bytes(b"x")
    _age(other / ".tmp-old.npz", 2 * 3600)
    assert C.disk_usage(tmp_path).entries == 1
    assert C.prune(tmp_path, max_bytes=0).entries == 1
    assert (other / "weights.npz").exists() and (other / ".tmp-old.npz").exists()


@pytest.mark.parametrize("command", [["cache", "info"], ["demo", "--cases", "1", "--out"]])
def test_a_bad_cap_in_the_environment_stops_a_command_in_one_line(tmp_path, command):
    args = [*command, str(tmp_path / "run")] if command[-1] == "--out" else command
    res = CliRunner().invoke(app, args, env={"HISEG_CACHE_MAX_GB": "lots", "HISEG_CACHE_DIR": str(tmp_path)})
    assert res.exit_code == 2
    assert "HISEG_CACHE_MAX_GB='lots' is not a number of gigabytes" in res.output and "Traceback" not in res.output
    assert not any(tmp_path.iterdir())  # nothing ran


def test_prune_over_a_threshold_deletes_nothing_below_it_stub(tmp_path):
    seg = StubSegmenter(cache=EmbeddingCache(disk_dir=tmp_path, max_disk_bytes=0))
    for img in _images(3):
        seg.encode(img)
    held = C.disk_usage(tmp_path).bytes
    assert C.prune(tmp_path, max_bytes=0, over=held).entries == 0 and C.disk_usage(tmp_path).entries == 3
    assert C.prune(tmp_path, max_bytes=0, over=held - 1).entries == 3 and C.disk_usage(tmp_path).entries == 0
