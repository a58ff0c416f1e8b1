"""The annotation app with the real LiteMedSAM: how long a prompt takes to come back as a mask, and that a
recorded session replays to the same masks with the real model.

Prints the measured latencies (run with ``-s`` to see them): the HTTP round trip of a prompt on a slice
already encoded (request to response, what the server adds to the decoder), and, with Chromium, the
page's own measure from the person's mouse event to the mask drawn on the canvas.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest

from hiseg_sim.annotate.app import create_app
from hiseg_sim.annotate.export import check_replay
from hiseg_sim.annotate.service import AnnotationService
from tests.test_annotate_app import ThreadServer, http

#: The target is the mask over the image within about 150 ms of a prompt, once the slice is encoded:
#: the decoder (25-35 ms on two idle cores) plus what the app adds, held to these budgets (ms).
APP_BUDGET_MS = 40.0
PAGE_BUDGET_MS = 60.0
TARGET_MS = 150.0
#: The decoder's median on two idle cores. When the same run's decoder is slower, the machine is
#: (shared cores, a slow host), and the browser's budgets are scaled by the same ratio: what is held
#: is the page's cost relative to the machine's speed, measured within one run.
DECODER_REFERENCE_MS = 30.0
CHROMIUM = Path("/usr/bin/chromium")


def _summary(ms: list[float]) -> str:
    q = statistics.quantiles(ms, n=10)
    return f"median {statistics.median(ms):.0f} ms, p90 {q[-1]:.0f} ms, max {max(ms):.0f} ms over {len(ms)} prompts"


@pytest.mark.integration
def test_prompt_to_mask_latency_and_replay_with_litemedsam(litemedsam, tmp_path):
    from hiseg_sim.segmenters.threads import restored_threads

    with restored_threads():  # the server's one thread (the CLI's default) must not outlive the test
        _measure_and_replay(litemedsam, tmp_path)


def _measure_and_replay(litemedsam, tmp_path):
    svc = AnnotationService(tmp_path / "s.sqlite", "default", litemedsam, n_cases=2, prefetch=False, threads=1)
    srv = ThreadServer(create_app(tmp_path / "s.sqlite", service=svc))
    try:
        code, body = http(
            "POST", srv.url + "api/sessions", {"participant": "p-lat", "group": "g", "study": "bench", "client_ms": 0}
        )
        st = json.loads(body)
        assert code == 200, body
        url = srv.url + f"api/sessions/{st['session_id']}/actions"
        prompts = [{"kind": "box", "x0": 28, "y0": 28, "x1": 68, "y1": 68}]
        for i in range(12):  # clicks near the centre, positive and negative, with an undo now and then
            dx, dy = (i % 4) * 3 - 4, (i // 4) * 3 - 3
            prompts.append({"kind": "point", "x": 48 + dx, "y": 48 + dy, "positive": i % 3 != 2})
            if i % 5 == 4:
                prompts.append({"kind": "undo"})
        round_trip, decode = [], []
        for action in prompts:
            body = {"seq": st["next_seq"], "action": action, "client_ms": int(time.time() * 1000), "pointer": None}
            t0 = time.perf_counter()
            code, raw = http("POST", url, body)
            ms = (time.perf_counter() - t0) * 1000
            st = json.loads(raw)
            assert code == 200 and st["invalid_action"] in ("", "edge_point"), raw[:200]
            if st["decode_ms"] is not None:  # an undo decodes nothing
                round_trip.append(ms)
                decode.append(st["decode_ms"])
        app_ms = [t - d for t, d in zip(round_trip, decode)]
        print(
            f"\nLiteMedSAM ({litemedsam.runtime}, 1 thread) HTTP round trip of a prompt: {_summary(round_trip)}; "
            f"of it the decoder {_summary(decode)}; the app's own share {_summary(app_ms)}"
        )
        # What the app adds to the decoder (HTTP, env bookkeeping, the committed write, the JSON view) is
        # asserted; the total also depends on how busy the machine's cores are, and is reported.
        assert statistics.median(app_ms) < APP_BUDGET_MS

        if CHROMIUM.exists():
            from playwright.sync_api import sync_playwright

            from tests.test_annotate_browser import CHROMIUM_ARGS, Participant

            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                page = browser.new_page(viewport={"width": 1000, "height": 720})
                person = Participant(page, srv.url)
                person.start("p-page")
                states = [person.box(28, 28, 68, 68)]
                for i in range(8):
                    states.append(person.click(46 + (i % 3) * 2, 46 + (i // 3) * 2, negative=i % 4 == 3))
                drawn = page.evaluate("window.hiseg.latencies()")
                browser.close()
            page_app = [t - s["decode_ms"] for t, s in zip(drawn, states)]
            slow = max(1.0, statistics.median(s["decode_ms"] for s in states) / DECODER_REFERENCE_MS)
            print(
                f"LiteMedSAM page, mouse event to mask drawn: {_summary(drawn)}; without the decoder "
                f"{_summary(page_app)}; this machine runs the decoder {slow:.2f} x slower than idle"
            )
            assert len(drawn) == len(states)
            assert statistics.median(page_app) < PAGE_BUDGET_MS * slow
            assert statistics.median(drawn) < TARGET_MS * slow

        for sid in {s.session_id for s in svc.store.sessions()}:
            assert check_replay(svc.store, sid, svc.make_env()) == svc.store.count_actions(sid)
    finally:
        srv.stop()
