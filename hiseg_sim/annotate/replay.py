"""Simulated persons at the annotation page: their recorded actions replayed in a real browser.

A simulated person's session (env trace records as ``hiseg-sim simulate --traces DIR`` writes
them, one ``*.jsonl`` per person; :func:`simulate_persons`, :func:`read_traces`) is replayed
through the page in system Chromium driven by Playwright, as a participant would work: boxes
dragged and clicks made with the mouse on the canvas at the recorded viewport positions (right
button for a negative click), undo and accept with the page's keys (``Z``, ``Enter``; 3-D: arrows
and ``P`` / ``Shift+P``), the next nodule with the page's button. No action is sent to the API directly (only the finished
session's trace is fetched from its export route).

The time between actions is the simulated seconds, reproduced with Playwright's clock: the page's
clock is installed and paused, and before each action it is moved forward to the nodule's start
plus the simulated seconds so far (rounded to the millisecond), so the ``client_ms`` the page
stamps on each action (``Date.now()``) differ by the simulated seconds (within 1 ms, without
drift) and nobody waits in real time.

The page must serve each person the same nodules, in the same order, with the same viewports as
the simulation: :func:`session_plan` gives the ``plan`` of :class:`~hiseg_sim.annotate.service.AnnotationService`
(``hiseg-sim annotate --plan FILE``): per participant the cases and their env seeds. Then a
viewport pixel ``(x, y)`` of the trace is the same pixel on the page, and the page's pointer
position is the action's coordinate up to the page's resolution: mouse events carry whole CSS
pixels, six per viewport pixel on the page's 576-pixel canvas, so a position is read within 1/12
of a viewport pixel (plus the page's rounding to 0.01; :func:`compare_traces` measures it). The
env's masks after such a shifted prompt can differ by a few pixels, so the page trace's Dice can
differ from the simulation's; the page's own masks replay exactly (``check_replay``).

:func:`roundtrip` is the whole measurement: simulate persons, replay them in the browser, export
the page's sessions, fit both with ``hiseg-sim fit-profile`` and compare
(:func:`compare_fits`); ``docs/fitting.md`` ("Browser round trip") reports it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hiseg_sim.env.sessions import Session, SessionsError, read_sessions

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "PAGE_VIEWPORT",
    "PagePerson",
    "ReplayError",
    "ReplayedSession",
    "compare_fits",
    "compare_traces",
    "fit_profile",
    "launch_chromium",
    "read_traces",
    "replay_session",
    "replay_sessions",
    "roundtrip",
    "session_plan",
    "simulate_persons",
    "table",
    "write_plan",
]

#: The system Chromium (Playwright's own browser download is not used).
CHROMIUM = Path("/usr/bin/chromium")
#: Chromium headless, without its calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
#: The browser window: the page's 576-pixel canvas fits whole.
PAGE_VIEWPORT = {"width": 1000, "height": 720}
#: The page clock's start (2026-01-01 00:00 UTC, ms); any fixed time does.
_T0_MS = 1_767_225_600_000
#: Page milliseconds between the Start click (or Accept) and the next nodule shown; outside the trace.
_GAP_MS = 1_000


class ReplayError(RuntimeError):
    """The page did not do what the recorded session did (names the person, nodule and action)."""


# ---- the simulated persons ---------------------------------------------------------------------
def read_traces(directory: str | Path) -> list[Session]:
    """Every session of a folder of env traces (``hiseg-sim simulate --traces``, or the page's
    export): :func:`hiseg_sim.env.sessions.read_sessions`, its error as a :class:`ReplayError`."""
    try:
        return read_sessions(directory)
    except SessionsError as exc:
        raise ReplayError(str(exc)) from None


def _cli(*args: str) -> subprocess.CompletedProcess:
    """Run a ``hiseg-sim`` command in a child process (this interpreter); raise naming it if it fails."""
    cmd = [sys.executable, "-c", "from hiseg_sim.cli import main; main()", *args]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"hiseg-sim {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()[-2000:]}")
    return res


def simulate_persons(
    annotator: str,
    n_persons: int,
    n_cases: int,
    work_dir: str | Path,
    *,
    cohort: str = "default",
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> list[Session]:
    """``hiseg-sim simulate ANNOTATOR --limit N --persons P --env 2d --traces DIR``: the persons'
    sessions (``<annotator>-p<k>``, each through the cohort's first ``n_cases`` nodules in their own
    seeded order), written to ``work_dir/traces-<annotator>-<P>x<N>-seed<S>``, its run kept beside it."""
    work = Path(work_dir)
    tag = f"{Path(annotator).stem}-{n_persons}x{n_cases}-seed{seed}"
    traces = work / f"traces-{tag}"
    args = [annotator, "--cohort", cohort, "--limit", str(n_cases), "--persons", str(n_persons)]
    args += ["--seed", str(seed), "--env", "2d", "--executor", "serial", "--out", str(work / f"run-{tag}")]
    args += ["--traces", str(traces)]
    if cache_dir is not None:
        args += ["--cache-dir", str(cache_dir)]
    _cli("simulate", *args)
    return read_traces(traces)


# ---- the plan ------------------------------------------------------------------------------
def session_plan(sessions: Sequence[Session], names: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """``{participant: [{"case": key, "seed": seed}, ...]}``: each session's nodules in order, with
    their env seeds (``names``: the participant ids on the page, default the sessions' own)."""
    names = [s.participant for s in sessions] if names is None else list(names)
    plan: dict[str, list[dict]] = {}
    for who, s in zip(names, sessions):
        for ep in s.episodes:
            if ep.seed is None:
                raise ReplayError(f"{s.path}: nodule {ep.order + 1} has no seed; the page cannot show its viewport")
        plan[who] = [{"case": ep.case, "seed": int(ep.seed or 0)} for ep in s.episodes]
    return plan


def write_plan(sessions: Sequence[Session], path: str | Path, names: Sequence[str] | None = None) -> Path:
    """Write :func:`session_plan` as JSON (``hiseg-sim annotate --plan``); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(session_plan(sessions, names), indent=1))
    return p


# ---- the person at the page ------------------------------------------------------------------
class PagePerson:
    """A person at the page with a paused page clock: mouse on the canvas, the page's keys and buttons."""

    def __init__(self, page: Any, url: str, timeout_ms: float = 120_000):
        self.page, self.url, self.timeout = page, url, timeout_ms

    def state(self) -> dict:
        return self.page.evaluate("window.hiseg.state()")

    def now(self) -> int:
        """The page's clock (ms)."""
        return int(self.page.evaluate("Date.now()"))

    def advance_to(self, ms: int) -> None:
        """Move the paused page clock forward to ``ms`` (never back)."""
        dt = int(ms) - self.now()
        if dt > 0:
            self.page.clock.fast_forward(dt)

    def wait(self, condition: str) -> dict:
        self.page.wait_for_function(f"window.hiseg.idle() && ({condition})", timeout=self.timeout)
        return self.state()

    def start(self, participant: str, group: str, study: str, t0_ms: int = _T0_MS) -> dict:
        """Open the page with its clock installed and paused at ``t0_ms``, and start the session."""
        self.page.clock.install(time=t0_ms - 60_000)
        self.page.goto(self.url)
        self.page.clock.pause_at(t0_ms)
        self.page.fill("#participant", participant)
        self.page.fill("#group", group)
        self.page.fill("#study", study)
        self.page.click("#start-button")
        return self.wait("window.hiseg.state() !== null")

    def at(self, x: float, y: float, size: int) -> tuple[float, float]:
        """Page coordinates of viewport position ``(x, y)`` (pixel centres at integers, as the page reads
        them), on the nearest whole CSS pixel: Chromium's mouse events carry whole pixels (a fraction is
        cut off), so rounding here keeps the page's reading within half a CSS pixel of ``(x, y)``."""
        b = self.page.locator("#view").bounding_box()
        return round(b["x"] + (x + 0.5) * b["width"] / size), round(b["y"] + (y + 0.5) * b["height"] / size)

    def act(self, action: dict, size: int) -> None:
        """Do one recorded action on the page (not waiting for its answer)."""
        kind, mouse, keys = action["kind"], self.page.mouse, self.page.keyboard
        if kind == "box":
            x0, y0, x1, y1 = (float(action[k]) for k in ("x0", "y0", "x1", "y1"))
            mouse.move(*self.at(x0, y0, size))
            mouse.down()
            mouse.move(*self.at((x0 + x1) / 2, (y0 + y1) / 2, size), steps=3)
            mouse.move(*self.at(x1, y1, size), steps=3)
            mouse.up()
        elif kind == "point":
            button = "left" if action.get("positive", True) else "right"
            mouse.click(*self.at(float(action["x"]), float(action["y"]), size), button=button)
        elif kind in _KEYS:
            keys.press(_KEYS[kind](action))
        else:
            raise ReplayError(f"the page has no way to do a {kind!r} action")

    def next_nodule(self, index: int) -> dict:
        """Leave the feedback with the page's button; wait for nodule ``index`` (or the end)."""
        self.page.click("#next-case")
        return self.wait(f"window.hiseg.state().phase === 'done' || window.hiseg.state().case_index === {index}")


_KEYS: dict[str, Callable[[dict], str]] = {
    "undo": lambda a: "z",
    "accept": lambda a: "Enter",
    "next": lambda a: "ArrowDown",
    "prev": lambda a: "ArrowUp",
    "propagate": lambda a: "p" if int(a.get("direction", 1)) > 0 else "Shift+P",
}


@dataclass
class ReplayedSession:
    """One replayed person: page participant id, the page's session id, actions, and the exported trace."""

    participant: str
    session_id: str
    n_actions: int
    trace: list[dict] = field(default_factory=list)
    path: Path | None = None
    wall_s: float = 0.0


def replay_session(
    page: Any,
    url: str,
    session: Session,
    participant: str | None = None,
    *,
    group: str = "replay",
    study: str = "roundtrip",
    t0_ms: int = _T0_MS,
) -> ReplayedSession:
    """Replay one session's actions through the page (see the module docstring); the page's server
    must serve this participant the session's plan. Returns the page's session, trace included.

    Raises:
        ReplayError: the page showed another nodule, or ended a nodule sooner or later than the trace.
    """
    t_wall = time.perf_counter()
    who = participant or session.participant
    person = PagePerson(page, url)
    st = person.start(who, group, study, t0_ms)
    n = 0
    for i, ep in enumerate(session.episodes):
        where = f"{who}, nodule {i + 1} ({ep.case})"
        if st["phase"] != "annotating" or st["case_index"] != i or st["case_key"] != ep.case:
            raise ReplayError(
                f"{where}: the page shows {st.get('case_key')!r} (phase {st['phase']}); serve it the session's plan"
            )
        size = int(st["size"])
        shown_ms = person.now()
        total = 0.0
        for rec in ep.records:
            if st["phase"] != "annotating":
                raise ReplayError(f"{where}: the page ended the nodule before action {rec['step']}")
            total += float(rec["seconds"])
            person.advance_to(shown_ms + round(total * 1000.0))
            person.act(rec["action"], size)
            n += 1
            st = person.wait(f"window.hiseg.state().next_seq === {n + 1}")
        if st["phase"] != "feedback":
            raise ReplayError(f"{where}: the trace ends the nodule, the page does not (phase {st['phase']})")
        person.advance_to(person.now() + _GAP_MS)
        st = person.next_nodule(i + 1)
    if st["phase"] != "done":
        raise ReplayError(f"{who}: the page has more nodules than the session ({st['n_cases']})")
    sid = st["session_id"]
    with urllib.request.urlopen(url + f"api/sessions/{sid}/trace.jsonl", timeout=60) as r:
        trace = [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]
    return ReplayedSession(who, sid, n, trace, None, time.perf_counter() - t_wall)


def launch_chromium(playwright: Any, executable: str | Path = CHROMIUM) -> Any:
    """System Chromium through Playwright, headless, without its calls home."""
    return playwright.chromium.launch(executable_path=str(executable), args=CHROMIUM_ARGS)


def replay_sessions(
    url: str,
    sessions: Sequence[Session],
    out_dir: str | Path,
    names: Sequence[str] | None = None,
    *,
    executable: str | Path = CHROMIUM,
    group: str = "replay",
    study: str = "roundtrip",
    on_page_error: Callable[[str], None] | None = None,
) -> list[ReplayedSession]:
    """Replay every session (each in a fresh browser context) and write each page session's
    exported trace to ``out_dir/<participant>.jsonl``: a sessions folder ``fit-profile`` reads.

    Raises:
        ReplayError: a session did not replay (see :func:`replay_session`), or the page raised an error.
    """
    from playwright.sync_api import sync_playwright

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [s.participant for s in sessions] if names is None else list(names)
    done: list[ReplayedSession] = []
    with sync_playwright() as p:
        browser = launch_chromium(p, executable)
        try:
            for who, s in zip(names, sessions):
                ctx = browser.new_context(viewport=PAGE_VIEWPORT)
                errors: list[str] = []
                try:
                    page = ctx.new_page()
                    page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
                    r = replay_session(page, url, s, who, group=group, study=study)
                finally:
                    ctx.close()
                if errors:
                    if on_page_error is None:
                        raise ReplayError(f"{who}: the page raised {errors}")
                    for e in errors:
                        on_page_error(e)
                r.path = out / f"{who}.jsonl"
                r.path.write_text("".join(json.dumps(rec, sort_keys=True) + "\n" for rec in r.trace))
                done.append(r)
        finally:
            browser.close()
    return done


# ---- comparisons -----------------------------------------------------------------------------
_COORDS = ("x", "y", "x0", "y0", "x1", "y1")


def compare_traces(env_session: Session, page_trace: Sequence[dict]) -> dict:
    """How the page's trace of a replayed session differs from the env trace it replayed.

    Returns ``{"actions", "kinds_equal", "cases_equal", "viewports_equal", "max_seconds_diff",
    "max_coord_diff", "max_dice_diff", "dice_differs"}``: seconds in s, coordinates in viewport
    pixels, ``dice_differs`` the number of actions whose Dice differ by more than 1e-9.
    """
    env_recs = [r for ep in env_session.episodes for r in ep.records]
    page = sorted(page_trace, key=lambda r: (int(r["episode"]), int(r["step"])))
    out: dict[str, Any] = {"actions": len(page), "env_actions": len(env_recs)}
    out["kinds_equal"] = [r["action"]["kind"] for r in env_recs] == [r["action"]["kind"] for r in page]
    out["cases_equal"] = [(r["case"], r["episode"], r["step"]) for r in env_recs] == [
        (r["case"], r["episode"], r["step"]) for r in page
    ]
    out["viewports_equal"] = all(a["viewport"] == b["viewport"] for a, b in zip(env_recs, page))
    sec = [abs(float(a["seconds"]) - float(b["seconds"])) for a, b in zip(env_recs, page)]
    crd = [
        abs(float(a["action"][k]) - float(b["action"][k]))
        for a, b in zip(env_recs, page)
        for k in _COORDS
        if k in a["action"] and k in b["action"]
    ]
    dice = [abs(float(a["dice"]) - float(b["dice"])) for a, b in zip(env_recs, page)]
    out["max_seconds_diff"] = max(sec, default=0.0)
    out["max_coord_diff"] = max(crd, default=0.0)
    out["max_dice_diff"] = max(dice, default=0.0)
    out["dice_differs"] = sum(d > 1e-9 for d in dice)
    return out


def fit_profile(
    sessions_dir: str | Path,
    base: str,
    out: str | Path,
    work_dir: str | Path,
    *,
    cohort: str = "default",
    calibration_persons: int | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> dict:
    """Run ``hiseg-sim fit-profile SESSIONS --base BASE --out OUT --json`` (``calibration_persons``:
    the command's default when ``None``); returns its JSON line."""
    args = [
        "fit-profile",
        str(sessions_dir),
        "--base",
        base,
        "--out",
        str(out),
        "--cohort",
        cohort,
        "--work-dir",
        str(work_dir),
        "--seed",
        str(seed),
        "--json",
    ]
    if calibration_persons is not None:
        args += ["--calibration-persons", str(calibration_persons)]
    if cache_dir is not None:
        args += ["--cache-dir", str(cache_dir)]
    return json.loads(_cli(*args).stdout.strip().splitlines()[-1])


def compare_fits(env_fit: dict, page_fit: dict) -> list[dict]:
    """Per parameter identified in the env fit: env value and 90 % interval, the page fit's value,
    whether it lies inside (``inside``), and whether the page fit identifies it too."""
    rows = []
    for name, e in sorted(env_fit["parameters"].items()):
        if not e.get("identified"):
            continue
        b = page_fit["parameters"][name]
        v = float(b["value"])
        rows.append(
            {
                "parameter": name,
                "env": float(e["value"]),
                "lo": float(e["lo"]),
                "hi": float(e["hi"]),
                "page": v,
                "page_identified": bool(b.get("identified")),
                "inside": float(e["lo"]) <= v <= float(e["hi"]),
            }
        )
    return rows


# ---- the whole measurement ---------------------------------------------------------------------
def roundtrip(
    annotator: str,
    n_persons: int,
    n_cases: int,
    work_dir: str | Path,
    *,
    cohort: str = "default",
    seed: int = 0,
    calibration_persons: int | None = None,
    cache_dir: str | Path | None = None,
    executable: str | Path = CHROMIUM,
    log: Callable[[str], None] = print,
) -> dict:
    """Simulate ``n_persons`` of ``annotator`` on the cohort's first ``n_cases`` nodules (2-D, LiteMedSAM),
    replay them through the page (served in this process with their plan), export the page's
    sessions, fit both folders with ``fit-profile`` (base: ``annotator``) and compare.

    Returns ``{"annotator", "trace_checks": [compare_traces per person], "masks_checked",
    "fits": {"env", "page"}, "rows": compare_fits, "seconds": {stage: wall s}}``.
    """
    from hiseg_sim import segmenters
    from hiseg_sim.annotate.app import create_app
    from hiseg_sim.annotate.cli import listen, server, url_of
    from hiseg_sim.annotate.export import check_replay

    work = Path(work_dir)
    cache = str(cache_dir if cache_dir is not None else segmenters.default_cache_dir())
    tag = f"{Path(annotator).stem}-{n_persons}x{n_cases}-seed{seed}"
    secs: dict[str, float] = {}

    t = time.perf_counter()
    sessions = simulate_persons(annotator, n_persons, n_cases, work, cohort=cohort, seed=seed, cache_dir=cache)
    env_dir = sessions[0].path.parent
    secs["simulate"] = time.perf_counter() - t
    log(f"{annotator}: {len(sessions)} persons simulated in {secs['simulate']:.0f} s ({env_dir})")

    t = time.perf_counter()
    page_dir = work / f"page-{tag}"
    store = page_dir.with_suffix(".sqlite")
    store.unlink(missing_ok=True)
    app = create_app(
        store,
        cohort,
        "litemedsam",
        env="2d",
        cache_dir=cache,
        prefetch=False,
        threads=1,
        plan=session_plan(sessions),
    )
    svc = app.state.service
    sock = listen()
    srv = server(app)
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    try:
        replayed = replay_sessions(url_of(sock), sessions, page_dir, executable=executable)
        secs["replay"] = time.perf_counter() - t
        n_act = sum(r.n_actions for r in replayed)
        log(f"{annotator}: {n_act} actions replayed through the page in {secs['replay']:.0f} s")
        checks = [compare_traces(s, r.trace) for s, r in zip(sessions, replayed)]
        t = time.perf_counter()
        env = svc.make_env()
        try:
            masks = sum(check_replay(svc.store, r.session_id, env) for r in replayed)
        finally:
            env.close()
        secs["check_replay"] = time.perf_counter() - t
    finally:
        srv.should_exit = True
        th.join(30)

    t = time.perf_counter()
    fits_dir = work / "fits"
    fits_dir.mkdir(parents=True, exist_ok=True)
    kw: dict[str, Any] = dict(
        cohort=cohort, calibration_persons=calibration_persons, seed=seed, cache_dir=cache, work_dir=work / "fit-work"
    )
    env_fit = fit_profile(env_dir, annotator, fits_dir / f"env-{tag}.toml", **kw)
    secs["fit_env"] = time.perf_counter() - t
    t = time.perf_counter()
    page_fit = fit_profile(page_dir, annotator, fits_dir / f"page-{tag}.toml", **kw)
    secs["fit_page"] = time.perf_counter() - t
    rows = compare_fits(env_fit, page_fit)
    log(f"{annotator}: fits {secs['fit_env']:.0f} s (env, calibration included) + {secs['fit_page']:.0f} s (page)")
    return {
        "annotator": annotator,
        "persons": n_persons,
        "nodules": n_cases,
        "env_dir": str(env_dir),
        "page_dir": str(page_dir),
        "trace_checks": checks,
        "masks_checked": masks,
        "fits": {"env": env_fit, "page": page_fit},
        "rows": rows,
        "seconds": secs,
    }


def table(result: dict) -> str:
    """The comparison of :func:`roundtrip` as a Markdown table (env value [90 % interval] vs page value)."""
    lines = ["| parameter | env fit [90 %] | page fit | inside |", "|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(
            f"| `{r['parameter']}` | {r['env']:.4g} [{r['lo']:.4g}, {r['hi']:.4g}] | {r['page']:.4g} | "
            f"{'yes' if r['inside'] else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m hiseg_sim.annotate.replay ANNOTATOR PERSONS NODULES WORK_DIR``: :func:`roundtrip`,
    printed as a table and written to ``WORK_DIR/roundtrip-<annotator>.json``."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m hiseg_sim.annotate.replay", description=roundtrip.__doc__)
    ap.add_argument("annotator")
    ap.add_argument("persons", type=int)
    ap.add_argument("nodules", type=int)
    ap.add_argument("work_dir", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--calibration-persons", type=int, default=None)
    a = ap.parse_args(argv)
    t = time.perf_counter()
    res = roundtrip(
        a.annotator, a.persons, a.nodules, a.work_dir, seed=a.seed, calibration_persons=a.calibration_persons
    )
    res["seconds"]["total"] = time.perf_counter() - t
    out = a.work_dir / f"roundtrip-{Path(a.annotator).stem}.json"
    out.write_text(json.dumps(res, indent=1, default=str))
    checks = res["trace_checks"]
    print(table(res))
    print(
        f"actions {sum(c['actions'] for c in checks)} (env {sum(c['env_actions'] for c in checks)}); "
        f"max |seconds diff| {max(c['max_seconds_diff'] for c in checks) * 1000:.2f} ms; "
        f"max |coordinate diff| {max(c['max_coord_diff'] for c in checks):.3f} px; "
        f"Dice differs on {sum(c['dice_differs'] for c in checks)} actions (max {max(c['max_dice_diff'] for c in checks):.3f}); "
        f"masks replayed {res['masks_checked']}; wall {res['seconds']['total']:.0f} s -> {out}"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
