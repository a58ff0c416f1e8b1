"""Progress output: a steady ETA, phases that are silent only when short, status lines."""

import io

from hiseg_sim import progress


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _eta(b) -> str:
    return b.format_meter(**b.format_dict).split("<")[1].split(",")[0]


def test_eta_waits_for_a_pace_then_follows_the_mean_pace_since_the_first_item(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(progress, "_clock", clock)
    monkeypatch.delenv("HISEG_NO_PROGRESS", raising=False)
    b = progress.bar(12, "units", unit="unit")
    try:
        clock.t += 60.0  # start-up: workers spawning, a model loading
        b.update(1)
        assert _eta(b) == "?"
        for _ in range(2):
            clock.t += 2.0
            b.update(1)
        assert _eta(b) == "?"  # two paced items are not a pace yet
        clock.t += 2.0
        b.update(1)  # 3 items in 6 s after the first: 8 left at 2 s each, start-up left out
        assert _eta(b) == "00:16"
        clock.t += 2.0
        b.update(1)  # one more at the same pace: the estimate moves by that item only
        assert _eta(b) == "00:14"
    finally:
        b.close()


def test_bars_are_off_when_asked(monkeypatch):
    monkeypatch.setenv("HISEG_NO_PROGRESS", "1")
    assert progress.bar(3, "x") is None
    assert list(progress.progress_iter([1, 2, 3], "x")) == [1, 2, 3]


def test_a_phase_says_nothing_when_short_and_shows_itself_when_long(monkeypatch):
    import sys
    import time

    monkeypatch.delenv("HISEG_NO_PROGRESS", raising=False)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with progress.phase("quick work", after=5.0):
        pass
    assert err.getvalue() == ""
    with progress.phase("slow work", after=0.05):
        time.sleep(0.3)
    assert "slow work" in err.getvalue()
