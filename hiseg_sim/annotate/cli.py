"""``hiseg-sim annotate``: serve the annotation page on this machine and print its address.

The first line printed is the URL with the real port (``--port 0`` lets the system pick one), so a
script can read it; uvicorn's own messages go to stderr. Ctrl-C (or SIGTERM) stops the server;
every action is already committed, so a killed server loses nothing either: start it again on
the same ``--store`` and each person resumes where they were.

Also runnable without the main CLI: ``python -m hiseg_sim.annotate.cli --help``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["DEFAULT_STORE", "annotate", "listen", "main", "serve", "server", "url_of"]

DEFAULT_STORE = Path("runs/annotate/sessions.sqlite")


def listen(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port; read it with ``getsockname()[1]``).
    Connections made before the server runs wait in the backlog."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port or 0 for any free one"
        ) from None
    sock.listen(128)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def server(app):
    """A uvicorn server for ``app``: ``.run(sockets=[sock])`` serves until ``.should_exit`` is set or a signal."""
    import uvicorn

    return uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2))


def serve(app, host: str = "127.0.0.1", port: int = 0, announce=None) -> None:
    """Serve ``app`` with uvicorn on ``host:port`` until stopped; ``announce(url)`` is called once the
    socket listens."""
    sock = listen(host, port)
    if announce is not None:
        announce(url_of(sock))
    server(app).run(sockets=[sock])


def annotate(
    port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one (the URL printed first has it).")] = 0,
    cohort: Annotated[
        str,
        typer.Option(
            help="A cohort name ('default'), an MSD Task06_Lung folder, a folder of LIDC-IDRI DICOM, or IMAGE::MASK."
        ),
    ] = "default",
    store: Annotated[
        Path, typer.Option(help="SQLite session store (made if missing; sessions resume from it).")
    ] = DEFAULT_STORE,
    segmenter: Annotated[str, typer.Option(help="Segmenter registry name.")] = "litemedsam",
    host: Annotated[str, typer.Option(help="Interface to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    env: Annotated[str, typer.Option(help="3d (scroll, propagate) or 2d (key slice only).")] = "3d",
    feedback: Annotated[
        str,
        typer.Option(help="After each nodule, for studies not shipped in experiments/: none, score or worked_example."),
    ] = "none",
    n_cases: Annotated[int | None, typer.Option(help="Nodules per session (default: all).")] = None,
    order: Annotated[str, typer.Option(help="cohort (same order for all) or shuffled (seeded per person).")] = "cohort",
    cache_dir: Annotated[
        Path | None, typer.Option(help="Embedding cache shared with studies (default ~/.cache/hiseg-sim/embeddings).")
    ] = None,
    prefetch: Annotated[bool, typer.Option(help="Encode the slices next to the one in view in the background.")] = True,
    threads: Annotated[
        int | None,
        typer.Option(help="Model threads (default $HISEG_THREADS, else 1: a decode waits least on shared cores)."),
    ] = None,
    plan: Annotated[
        Path | None,
        typer.Option(
            help='JSON {"<participant>": [{"case": KEY, "seed": N}, ...]}: these participants get these nodules '
            "in this order, each reset with its seed (as a simulated person met them; hiseg_sim.annotate.replay)."
        ),
    ] = None,
) -> None:
    """Serve the annotation page: people outline nodules with the segmenter; every action is recorded."""
    from hiseg_sim.annotate.app import create_app

    try:
        planned = None if plan is None else json.loads(plan.read_text())
        if threads is None:
            threads = int(os.environ.get("HISEG_THREADS") or 1)
        app = create_app(
            store,
            cohort,
            segmenter,
            env=env,
            feedback=feedback,
            n_cases=n_cases,
            order=order,
            cache_dir=cache_dir,
            prefetch=prefetch,
            threads=threads,
            plan=planned,
        )
    except (ValueError, FileNotFoundError, RuntimeError) as exc:
        raise SystemExit(f"hiseg-sim annotate: {str(exc).splitlines()[0]}") from None

    def announce(url: str) -> None:
        print(url, flush=True)
        print(f"recording to {store}; Ctrl-C stops (nothing recorded is lost)", file=sys.stderr, flush=True)

    serve(app, host, port, announce)


def main() -> None:
    """``python -m hiseg_sim.annotate.cli``: the ``annotate`` command alone."""
    typer.run(annotate)


if __name__ == "__main__":  # pragma: no cover
    main()
