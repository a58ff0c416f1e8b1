"""The annotation page in a real browser: system Chromium driven by Playwright, a scripted participant using
the mouse on the canvas and the page's buttons and keys (never the API behind them).

The server is the ``hiseg_sim.annotate.cli`` command in a child process, on the first three nodules of
the default cohort with the TEST STUB segmenter (``stub_env``): the model does not matter here.
"""

from __future__ import annotations

import base64
import json
import statistics
from pathlib import Path

import numpy as np
import pytest

from hiseg_sim.annotate.replay import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="/usr/bin/chromium is missing (apt-get install -y chromium): the browser tests drive the system Chromium",
)

from playwright.sync_api import sync_playwright

from hiseg_sim.annotate.export import check_replay
from hiseg_sim.annotate.store import SessionStore
from hiseg_sim.env.trace import replay
from tests.test_annotate_app import ServerProcess, http

SERVER_ARGS = ["--cohort", "default", "--segmenter", "stub_env", "--n-cases", "3", "--feedback", "score"]


class Served:
    """The server process on a store; ``restart()`` starts it again on the same port and store."""

    def __init__(self, tmp: Path):
        self.store, self.cache = tmp / "sessions.sqlite", tmp / "cache"
        self.proc = ServerProcess(self.store, self.cache, *SERVER_ARGS)
        self.url = self.proc.url

    def restart(self) -> None:
        self.proc = ServerProcess(self.store, self.cache, *SERVER_ARGS, port=self.proc.port)
        assert self.proc.url == self.url


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    s = Served(tmp_path_factory.mktemp("browser"))
    yield s
    s.proc.kill()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1000, "height": 720})
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    yield pg
    ctx.close()
    assert errors == [], f"the page raised {errors}"


def replay_env(served: Served):
    """An env made as the server makes its sessions' envs."""
    import gymnasium as gym

    from hiseg_sim.annotate.cases import load_annotation_cases

    return gym.make(
        "hiseg_sim/NoduleSeg3D-v0",
        cases=load_annotation_cases("default", limit=3),
        segmenter="stub_env",
        cache_dir=str(served.cache),
        time_penalty=0.0,
    )


class Participant:
    """A person at the page: mouse on the canvas, the page's buttons and keys."""

    def __init__(self, page, url: str):
        self.page, self.url = page, url

    def start(self, participant: str, group: str = "g1", study: str = "pilot") -> dict:
        self.page.goto(self.url)
        self.page.fill("#participant", participant)
        self.page.fill("#group", group)
        self.page.fill("#study", study)
        self.page.click("#start-button")
        self.page.wait_for_function("window.hiseg.state() !== null && window.hiseg.idle()")
        return self.state()

    def state(self) -> dict:
        return self.page.evaluate("window.hiseg.state()")

    def settle(self, seq: int | None = None) -> dict:
        """Wait until every action is answered (and the session's next action number is ``seq``)."""
        cond = "window.hiseg.idle()" + ("" if seq is None else f" && window.hiseg.state().next_seq === {seq}")
        self.page.wait_for_function(cond, timeout=60_000)
        return self.state()

    def at(self, x: float, y: float) -> tuple[float, float]:
        """Page coordinates of viewport pixel (x, y)'s centre."""
        b = self.page.locator("#view").bounding_box()
        return b["x"] + (x + 0.5) * b["width"] / 96, b["y"] + (y + 0.5) * b["height"] / 96

    def box(self, x0, y0, x1, y1) -> dict:
        seq = self.state()["next_seq"]
        self.page.mouse.move(*self.at(x0, y0))
        self.page.mouse.down()
        self.page.mouse.move(*self.at((x0 + x1) / 2, (y0 + y1) / 2), steps=4)
        self.page.mouse.move(*self.at(x1, y1), steps=4)
        self.page.mouse.up()
        return self.settle(seq + 1)

    def click(self, x, y, negative=False) -> dict:
        seq = self.state()["next_seq"]
        self.page.mouse.click(*self.at(x, y), button="right" if negative else "left")
        return self.settle(seq + 1)

    def key(self, key: str) -> dict:
        seq = self.state()["next_seq"]
        self.page.keyboard.press(key)
        return self.settle(seq + 1)

    def button(self, sel: str) -> dict:
        seq = self.state()["next_seq"]
        self.page.click(sel)
        return self.settle(seq + 1)

    def wheel(self, dy: float) -> dict:
        seq = self.state()["next_seq"]
        self.page.mouse.move(*self.at(60, 60))
        self.page.mouse.wheel(0, dy)
        return self.settle(seq + 1)

    def work_nodule(self) -> list[dict]:
        """Box, click, remove, undo, scroll, propagate, come back, accept: 9 actions, what each sent."""
        c = 48
        s0 = self.box(c - 22, c - 22, c + 22, c + 22)
        assert s0["slices_with_mask"] == [s0["view"]["slice"]]
        self.click(c, c)
        s = self.click(c - 15, c - 15, negative=True)
        assert [p[2] for p in s["view"]["prompts"]["points"]] == [1, 0]
        s = self.key("z")
        assert [p[2] for p in s["view"]["prompts"]["points"]] == [1]
        self.wheel(120)
        self.key("ArrowUp")
        self.button("#prop-next")
        s = self.key("ArrowUp")
        assert s["view"]["slice"] == s0["view"]["slice"]
        return [
            {"kind": "box", "x0": c - 22, "y0": c - 22, "x1": c + 22, "y1": c + 22},
            {"kind": "point", "x": c, "y": c, "positive": True},
            {"kind": "point", "x": c - 15, "y": c - 15, "positive": False},
            {"kind": "undo"},
            {"kind": "next"},
            {"kind": "prev"},
            {"kind": "propagate", "direction": 1},
            {"kind": "prev"},
            {"kind": "accept"},
        ]


def _same_action(sent: dict, stored: dict) -> bool:
    if sent.keys() != stored.keys():
        return False
    return all(
        abs(sent[k] - stored[k]) <= 0.5
        if isinstance(sent[k], (int, float)) and not isinstance(sent[k], bool)
        else sent[k] == stored[k]
        for k in sent
    )


def test_a_participant_annotates_three_nodules_and_the_trace_replays(served, page):
    person = Participant(page, served.url)
    st = person.start("p-script")
    sent = []
    for i in range(3):
        assert st["phase"] == "annotating" and st["case_index"] == i
        sent += person.work_nodule()
        st = person.key("Enter")
        assert st["phase"] == "feedback" and page.is_visible("#feedback")
        assert page.inner_text("#feedback-text").startswith("Agreement with the reference (Dice): ")
        page.click("#next-case")
        page.wait_for_function(f"window.hiseg.idle() && window.hiseg.state().case_index === {i + 1}")
        st = person.state()
    assert st["phase"] == "done" and page.is_visible("#done")

    store = SessionStore(served.store)
    rows = store.actions(st["session_id"])
    assert len(rows) == 27 and all(_same_action(a, r.action) for a, r in zip(sent, rows)), [
        (a, r.action) for a, r in zip(sent, rows) if not _same_action(a, r.action)
    ]
    box, click, undo, prop = rows[0], rows[1], rows[3], rows[6]
    assert (box.pointer_x, box.pointer_y) == (box.action["x1"], box.action["y1"])
    assert (click.pointer_x, click.pointer_y) == (click.action["x"], click.action["y"])
    assert undo.pointer_x is not None and prop.pointer_x is None  # a key over the image; a button off it
    assert [r.client_ms for r in rows] == sorted(r.client_ms for r in rows)
    assert [r.terminated for r in rows].count(True) == 3

    code, body = http("GET", served.url + f"api/sessions/{st['session_id']}/trace.jsonl")
    trace = [json.loads(line) for line in body.decode().splitlines()]
    env = replay_env(served)
    assert code == 200 and [r.ok for r in replay(trace, env)] == [True] * 3
    assert check_replay(store, st["session_id"], env) == 27
    lat = page.evaluate("window.hiseg.latencies()")
    print(
        f"\npage: action to mask drawn (stub segmenter) median {statistics.median(lat):.0f} ms, "
        f"max {max(lat):.0f} ms over {len(lat)} actions"
    )


def test_screenshot_of_the_page(served, page, tmp_path):
    person = Participant(page, served.url)
    person.start("p-shot")
    person.box(26, 26, 70, 70)
    person.click(48, 48)
    page.mouse.move(990, 700)  # the pointer off the image
    path = tmp_path / "annotate_page.png"
    page.screenshot(path=str(path))
    print(f"\nscreenshot: {path}")
    from PIL import Image

    b = page.locator("#view").bounding_box()
    shot = np.asarray(Image.open(path).convert("RGB")).astype(int)
    # the centre of each of the 96 x 96 viewport pixels on the screen
    cx = np.rint(b["x"] + (np.arange(96) + 0.5) * b["width"] / 96).astype(int)
    cy = np.rint(b["y"] + (np.arange(96) + 0.5) * b["height"] / 96).astype(int)
    shown = shot[cy[:, None], cx[None, :]]
    st = person.state()
    image = np.frombuffer(base64.b64decode(st["view"]["image"]), np.uint8).reshape(96, 96).astype(int)
    mask = np.unpackbits(np.frombuffer(base64.b64decode(st["view"]["mask"]), np.uint8), count=96 * 96).reshape(96, 96)
    clear = mask == 0
    clear[24:73, 24:73] &= False  # the box outline and the click are drawn over this square
    grey = shown[..., 0]
    # away from the overlays the canvas shows the env's observation: its lung-window image, pixel for pixel
    assert np.all(shown[clear].std(axis=-1) < 1) and np.abs(grey[clear] - image[clear]).max() <= 1
    assert image.min() < 70 and image.max() > 200  # air/lung dark, vessels and wall bright in the lung window
    under = shown[mask == 1]
    assert len(under) > 20 and np.mean(under[:, 0] > under[:, 2] + 40) > 0.95  # orange over the slice (a green click)
    yellow = (shot[..., 0] > 200) & (shot[..., 1] > 200) & (shot[..., 2] < 60)
    assert (
        yellow[int(b["y"]) : int(b["y"] + b["height"]), int(b["x"]) : int(b["x"] + b["width"])].sum() > 400
    )  # the box
    for sel in ("#undo", "#prev", "#next-slice", "#prop-prev", "#prop-next", "#accept"):
        assert page.is_visible(sel) and page.is_enabled(sel)
    assert page.inner_text("#progress") == "Nodule 1 of 3"


def test_a_killed_server_restarts_and_loses_nothing(served, page):
    person = Participant(page, served.url)
    person.start("p-kill")
    person.box(26, 26, 70, 70)
    person.click(48, 48)
    person.key("ArrowDown")
    before = person.click(40, 44)
    sid = before["session_id"]
    assert SessionStore(served.store).count_actions(sid) == 4  # each answered action is already committed

    assert served.proc.kill() == -9  # SIGKILL: no shutdown, no flush
    page.mouse.click(*person.at(52, 50))  # sent while the server is down: the page keeps trying
    page.wait_for_function("document.getElementById('status').textContent.includes('retrying')")
    served.restart()
    after_click = person.settle(before["next_seq"] + 1)

    rows = SessionStore(served.store).actions(sid)
    assert [r.action["kind"] for r in rows] == ["box", "point", "next", "point", "point"]
    assert (rows[-1].action["x"], rows[-1].action["y"]) == pytest.approx((52, 50), abs=0.5)
    page.reload()
    page.wait_for_function("window.hiseg.state() !== null && window.hiseg.idle()")
    resumed = person.state()
    for key in ("session_id", "case_index", "case_key", "phase", "next_seq", "view", "slices_with_mask"):
        assert resumed[key] == after_click[key], key
    assert resumed["view"]["slice"] == before["view"]["slice"] and len(resumed["view"]["prompts"]["points"]) == 2
    assert check_replay(SessionStore(served.store), sid, replay_env(served)) == 5
