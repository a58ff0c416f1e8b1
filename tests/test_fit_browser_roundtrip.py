"""The browser round trip (issue #17): simulated persons' sessions replayed through the annotation page
in system Chromium (mouse on the canvas, the page's keys and buttons, the page clock moved by the
simulated seconds) leave traces that fit to the same parameters as the env traces.

Two ``non_medical`` persons on the default cohort's first five nodules, 2-D, the REAL LiteMedSAM
(the page and the simulation share the embedding cache, as ``hiseg-sim simulate`` and
``hiseg-sim annotate`` do by default). The server is ``hiseg-sim annotate --plan`` in a child
process. About a minute on two cores; ``docs/fitting.md`` ("Browser round trip") has the
measurement at 4 persons x 16 nodules.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hiseg_sim.annotate.replay import CHROMIUM

#: The round trip: the real LiteMedSAM in a real browser.
browser = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is missing (apt-get install -y chromium): the browser tests drive the system Chromium",
)

from hiseg_sim.annotate.export import check_replay
from hiseg_sim.annotate.replay import (
    compare_fits,
    compare_traces,
    fit_profile,
    replay_sessions,
    simulate_persons,
    write_plan,
)
from hiseg_sim.annotate.store import SessionStore
from tests.test_annotate_app import ServerProcess

ANNOTATOR, PERSONS, NODULES = "non_medical", 2, 5
#: The page reads whole CSS pixels, six per viewport pixel, and rounds to 0.01.
COORD_TOL = 1 / 12 + 0.006


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    """Simulated persons, the page's replay of them, and the store it recorded to."""
    from hiseg_sim import segmenters

    work = tmp_path_factory.mktemp("roundtrip")
    cache = Path(segmenters.default_cache_dir())
    sessions = simulate_persons(ANNOTATOR, PERSONS, NODULES, work, cache_dir=cache)  # hiseg-sim simulate --traces
    assert [s.participant for s in sessions] == [f"{ANNOTATOR}-p{k}" for k in range(PERSONS)]
    plan = write_plan(sessions, work / "plan.json")
    store = work / "sessions.sqlite"
    server = ServerProcess(
        store, cache, "--cohort", "default", "--segmenter", "litemedsam", "--env", "2d", "--plan", str(plan)
    )
    errors: list[str] = []
    try:
        replayed = replay_sessions(server.url, sessions, work / "page", on_page_error=errors.append)
    finally:
        server.kill()
    assert errors == [], f"the page raised {errors}"
    return work, cache, sessions, replayed, store


@pytest.mark.slow
@browser
def test_the_page_records_the_simulated_actions_at_the_simulated_times(roundtrip):
    _, _, sessions, replayed, store_path = roundtrip
    store = SessionStore(store_path)
    for s, r in zip(sessions, replayed):
        env_recs = [rec for ep in s.episodes for rec in ep.records]
        rows = store.actions(r.session_id)
        assert r.n_actions == len(rows) == len(env_recs) > 0
        assert [a.action["kind"] for a in rows] == [rec["action"]["kind"] for rec in env_recs]
        eps = {e.episode: e for e in store.episodes(r.session_id)}
        assert [eps[k].case_key for k in sorted(eps)] == [ep.case for ep in s.episodes]  # same cases, same order
        assert all(eps[ep.order].viewport == ep.viewport for ep in s.episodes)  # same viewports
        # the page clock: client_ms differences are the simulated seconds (Date.now() is whole ms)
        prev: dict[int, int] = {}
        for a, rec in zip(rows, env_recs):
            before = prev.get(a.episode, eps[a.episode].started_client_ms)
            prev[a.episode] = a.client_ms
            assert abs((a.client_ms - before) - 1000 * float(rec["seconds"])) <= 1.0, (a.seq, a.client_ms, rec)
        # the pointer where the person acted, read back as the env's prompt coordinates
        for a, rec in zip(rows, env_recs):
            sim = rec["action"]
            keys = [k for k in ("x", "y", "x0", "y0", "x1", "y1") if k in sim]
            assert all(abs(a.action[k] - sim[k]) <= COORD_TOL for k in keys), (a.action, sim)
            assert a.action.get("positive") == sim.get("positive")
            end = {"point": ("x", "y"), "box": ("x1", "y1")}.get(sim["kind"])
            if end is not None:
                assert (a.pointer_x, a.pointer_y) == (a.action[end[0]], a.action[end[1]])
        # the exported trace says the same
        c = compare_traces(s, r.trace)
        assert c["kinds_equal"] and c["cases_equal"] and c["viewports_equal"], c
        assert c["max_seconds_diff"] <= 0.001 and c["max_coord_diff"] <= COORD_TOL, c
        assert [json.loads(line) for line in r.path.read_text().splitlines()] == r.trace


@pytest.mark.slow
@browser
def test_the_page_masks_replay_in_the_env(roundtrip):
    import gymnasium as gym

    from hiseg_sim.annotate.cases import load_annotation_cases

    _, cache, _, replayed, store_path = roundtrip
    env = gym.make(
        "hiseg_sim/NoduleSeg2D-v0",
        cases=load_annotation_cases("default"),
        segmenter="litemedsam",
        cache_dir=str(cache),
        time_penalty=0.0,
    )
    try:
        store = SessionStore(store_path)
        assert [check_replay(store, r.session_id, env) for r in replayed] == [r.n_actions for r in replayed]
    finally:
        env.close()


@pytest.mark.slow
@browser
def test_the_page_traces_fit_inside_the_env_fits_intervals(roundtrip):
    work, cache, sessions, replayed, _ = roundtrip
    kw = dict(work_dir=work / "fit-work", calibration_persons=2, cache_dir=cache)
    env_fit = fit_profile(sessions[0].path.parent, ANNOTATOR, work / "env.toml", **kw)
    page_fit = fit_profile(replayed[0].path.parent, ANNOTATOR, work / "page.toml", **kw)
    assert env_fit["episodes"] == page_fit["episodes"] == PERSONS * NODULES
    rows = compare_fits(env_fit, page_fit)
    print(
        "\n"
        + "\n".join(
            f"{r['parameter']:34s} {r['env']:.4g} [{r['lo']:.4g}, {r['hi']:.4g}] page {r['page']:.4g}" for r in rows
        )
    )
    assert len(rows) >= 6, rows  # the time part at least
    assert all(r["inside"] for r in rows), [r for r in rows if not r["inside"]]


def test_a_planned_participant_meets_the_plans_nodules_in_order_with_their_seeds(tmp_path):
    """``plan`` (``hiseg-sim annotate --plan``): TEST STUB segmenter and cases, no browser."""
    from hiseg_sim.annotate.cases import load_annotation_cases
    from hiseg_sim.annotate.schema import ActionRequest, NextRequest, StartRequest
    from hiseg_sim.annotate.service import AnnotationService

    keys = [c.case_id for c in load_annotation_cases("stub_synthetic_cases")]
    plan = {"p-sim": [{"case": keys[2], "seed": 11}, {"case": keys[0], "seed": 12}]}
    svc = AnnotationService(
        tmp_path / "s.sqlite",
        "stub_synthetic_cases",
        "stub_env",
        env="2d",
        cache_dir=tmp_path / "cache",
        prefetch=False,
        n_cases=1,
        plan=plan,
    )
    env = svc.make_env()
    try:
        st = svc.start(StartRequest(participant="p-sim", group="g", study="s", client_ms=0))
        assert (st.case_key, st.n_cases) == (keys[2], 2)  # the plan's cases, not the first n_cases
        sid = st.session_id
        seq = 1
        for i, (key, seed) in enumerate([(keys[2], 11), (keys[0], 12)]):
            ep = svc.store.episodes(sid)[-1]
            _, info = env.reset(seed=seed, options={"case_id": key})
            assert (ep.case_key, ep.seed, ep.viewport) == (key, seed, info["viewport"])
            for action in ({"kind": "box", "x0": 30, "y0": 30, "x1": 66, "y1": 66}, {"kind": "accept"}):
                svc.act(sid, ActionRequest.model_validate({"seq": seq, "action": action, "client_ms": seq}))
                seq += 1
            st = svc.next(sid, NextRequest(case_index=i + 1, client_ms=seq))
        assert st.phase == "done"
        other = svc.start(StartRequest(participant="p-other", group="g", study="s", client_ms=0))
        assert (other.case_key, other.n_cases) == (keys[0], 1)  # not in the plan: cohort order, n_cases
    finally:
        env.close()
        svc.close()
    with pytest.raises(ValueError, match="does not hold"):
        AnnotationService(tmp_path / "t.sqlite", "stub_synthetic_cases", "stub_env", plan={"p": [["nope", 1]]})
