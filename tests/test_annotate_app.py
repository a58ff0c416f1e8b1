"""The annotation app over HTTP: the command prints its URL first, the routes answer as documented, every
asset is local, and the layer imports only what lies below it. TEST STUB segmenter (``stub_env``)."""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STATIC = ROOT / "hiseg_sim" / "annotate" / "static"
STUB_ARGS = ["--cohort", "stub_synthetic_cases", "--segmenter", "stub_env", "--n-cases", "3"]


# ---- helpers shared with the browser tests ------------------------------------------------------
class ServerProcess:
    """``python -m hiseg_sim.annotate.cli`` in a child process; :attr:`url` is the first line it prints."""

    def __init__(self, store: Path, cache: Path, *args: str, port: int = 0, timeout: float = 120.0):
        cmd = [
            sys.executable,
            "-m",
            "hiseg_sim.annotate.cli",
            "--store",
            str(store),
            "--cache-dir",
            str(cache),
            "--port",
            str(port),
            "--no-prefetch",
            *args,
        ]
        self.log = store.parent / f"server-{port}-{os.getpid()}-{id(self)}.log"
        with open(self.log, "w") as err:  # a file, not a pipe nobody drains: the server never blocks on it
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=store.parent, env=dict(os.environ)
            )
        self.url = ""
        box: list[str] = []
        reader = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not box or not box[0].startswith("http://"):
            self.proc.kill()
            raise AssertionError(f"the server printed {box!r} first; stderr: {self.log.read_text()[-2000:]}")
        self.url = box[0].strip()
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))

    def kill(self, sig=signal.SIGKILL) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(30)


class ThreadServer:
    """The app served by uvicorn in a thread of this process (``stop()`` ends it)."""

    def __init__(self, app):
        from hiseg_sim.annotate.cli import listen, server, url_of

        sock = listen()
        self.url = url_of(sock)
        self.server = server(app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def http(method: str, url: str, body: dict | None = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


# ---- tests ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from hiseg_sim.annotate.app import create_app

    tmp = tmp_path_factory.mktemp("app")
    app = create_app(
        tmp / "s.sqlite",
        "stub_synthetic_cases",
        "stub_env",
        cache_dir=tmp / "cache",
        prefetch=False,
        feedback="score",
        n_cases=2,
    )
    srv = ThreadServer(app)
    yield srv.url, app.state.service
    srv.stop()


def test_routes_answer_as_documented(served):
    url, svc = served
    code, page = http("GET", url)
    assert code == 200 and b'<canvas id="view"' in page
    assert http("GET", url + "static/app.js")[0] == 200 and http("GET", url + "static/style.css")[0] == 200
    code, body = http(
        "POST", url + "api/sessions", {"participant": "p01", "group": "g", "study": "pilot", "client_ms": 1}
    )
    st = json.loads(body)
    assert code == 200 and st["phase"] == "annotating" and st["next_seq"] == 1 and st["n_cases"] == 2
    act = url + f"api/sessions/{st['session_id']}/actions"
    box = {
        "seq": 1,
        "action": {"kind": "box", "x0": 30, "y0": 30, "x1": 66, "y1": 66},
        "client_ms": 2,
        "pointer": [66, 66],
    }
    code, body = http("POST", act, box)
    assert code == 200 and json.loads(body)["next_seq"] == 2
    assert json.loads(http("POST", act, box)[1])["next_seq"] == 2  # a retry is answered, not applied
    code, body = http("POST", act, {"seq": 2, "action": {"kind": "accept"}, "client_ms": 3, "pointer": None})
    assert code == 200 and json.loads(body)["feedback"]["mode"] == "score"
    code, body = http("POST", act, {"seq": 3, "action": {"kind": "undo"}, "client_ms": 4, "pointer": None})
    assert code == 409 and json.loads(body)["detail"] == "this nodule is finished: press Next to go on"
    code, body = http("GET", url + f"api/sessions/{st['session_id']}/slices/0")
    assert code == 200 and json.loads(body)["slice"] == 0
    code, body = http("GET", url + f"api/sessions/{st['session_id']}/trace.jsonl")
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert code == 200 and [r["action"]["kind"] for r in lines] == ["box", "accept"]
    code, body = http("GET", url + f"api/sessions/{st['session_id']}/actions.parquet")
    assert code == 200 and body[:4] == b"PAR1"
    code, body = http("POST", url + f"api/sessions/{st['session_id']}/next", {"case_index": 1, "client_ms": 5})
    assert code == 200 and json.loads(body)["case_key"] == "synth-1"


def test_errors_are_one_line_with_the_fix(served):
    url, _ = served
    code, body = http("GET", url + "api/sessions/nope")
    assert code == 404 and json.loads(body)["detail"].endswith("start a new one")
    code, _ = http(
        "POST", url + "api/sessions", {"participant": "Jane Doe", "group": "g", "study": "s", "client_ms": 1}
    )
    assert code == 422  # a name with a space is not a pseudonymous id
    st = json.loads(
        http("POST", url + "api/sessions", {"participant": "p02", "group": "g", "study": "s", "client_ms": 1})[1]
    )
    code, body = http(
        "POST",
        url + f"api/sessions/{st['session_id']}/actions",
        {"seq": 1, "action": {"kind": "point", "x": 400, "y": 3, "positive": True}, "client_ms": 2},
    )
    detail = json.loads(body)["detail"]
    assert code == 422 and "outside the 96x96 viewport" in detail and "\n" not in detail
    code, body = http(
        "POST", url + f"api/sessions/{st['session_id']}/actions", {"seq": 1, "action": {"kind": "next"}, "client_ms": 3}
    )
    assert code == 200 and json.loads(body)["next_seq"] == 2  # the refused click took no number


def test_the_command_prints_its_url_first(tmp_path, monkeypatch, capsys):
    from hiseg_sim.annotate import cli

    made, real = [], cli.server
    monkeypatch.setattr(cli, "server", lambda app: made.append(real(app)) or made[-1])
    run = threading.Thread(
        target=cli.annotate,
        daemon=True,
        kwargs=dict(
            port=0,
            cohort="stub_synthetic_cases",
            store=tmp_path / "s.sqlite",
            segmenter="stub_env",
            cache_dir=tmp_path / "cache",
            prefetch=False,
            n_cases=1,
        ),
    )
    run.start()
    out = ""
    for _ in range(600):
        out += capsys.readouterr().out
        if made and out:
            break
        run.join(0.05)
    try:
        first = out.splitlines()[0]
        assert first.startswith("http://127.0.0.1:") and first.endswith("/") and not first.endswith(":0/")
        assert http("GET", first)[0] == 200
    finally:
        made[0].should_exit = True
        run.join(10)
    assert not run.is_alive()


def test_a_bad_cohort_is_one_line_naming_the_fix(tmp_path):
    from hiseg_sim.annotate.cli import annotate

    with pytest.raises(SystemExit) as err:
        annotate(cohort="./no/such/folder", segmenter="stub_env", store=tmp_path / "s.sqlite")
    assert str(err.value).startswith(
        "hiseg-sim annotate: cohort './no/such/folder' looks like a path but does not exist; give an existing folder"
    )
    assert not (tmp_path / "s.sqlite").exists()


def test_every_asset_is_local():
    for f in STATIC.iterdir():
        text = f.read_text()
        for bad in ("http://", "https://", 'src="//', 'href="//', "@import", "url("):
            assert bad not in text, f"{f.name} loads something from elsewhere ({bad})"
    html = (STATIC / "index.html").read_text()
    assert 'src="/static/app.js"' in html and 'href="/static/style.css"' in html


def test_the_app_layer_imports_only_the_layers_below_it():
    """annotate imports env, segmenters, data, annotators, experiments and the base modules; only the
    command line (hiseg_sim/cli.py) imports annotate."""
    pkg = ROOT / "hiseg_sim"
    allowed = {
        "annotate",
        "env",
        "segmenters",
        "data",
        "annotators",
        "experiments",
        "registry",
        "codec",
        "seeding",
        "metrics",
        "timing",
        "limits",
        "progress",
        "resources",
    }
    wrong, importers = [], []
    for path in pkg.rglob("*.py"):
        inside = path.is_relative_to(pkg / "annotate")
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            for name in names:
                parts = name.split(".")
                if parts[0] != "hiseg_sim":
                    continue
                if inside and len(parts) > 1 and parts[1] not in allowed:
                    wrong.append(f"{path.name} imports {name}")
                if not inside and path != pkg / "cli.py" and len(parts) > 1 and parts[1] == "annotate":
                    importers.append(f"{path.relative_to(pkg)} imports {name}")
    assert wrong == [] and importers == []
