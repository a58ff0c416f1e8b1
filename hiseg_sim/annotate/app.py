"""The annotation web app: a local page where a person outlines nodules with the segmenter behind it.

``create_app(store_path)`` returns a FastAPI app; :mod:`hiseg_sim.annotate.cli` serves it with
uvicorn. Every asset (HTML, JS, CSS) is served from ``hiseg_sim/annotate/static``; nothing is
fetched from elsewhere.

Routes (JSON bodies are the models of :mod:`hiseg_sim.annotate.schema`):

=====================================================  =========================================
``GET  /``                                             the page
``POST /api/sessions``                                 StartRequest → SessionState (new or resumed)
``GET  /api/sessions/{id}``                            SessionState (after a reload)
``POST /api/sessions/{id}/actions``                    ActionRequest → SessionState, committed first
``POST /api/sessions/{id}/next``                       NextRequest → SessionState
``GET  /api/sessions/{id}/slices/{k}``                 SliceView of slab slice k (after Accept)
``GET  /api/sessions/{id}/trace.jsonl``                the session as an env trace
``GET  /api/sessions/{id}/actions.parquet``            every action, with masks and pointer
=====================================================  =========================================

Errors are JSON ``{"detail": "<one line naming the problem and the fix>"}``: 404 unknown
session, 409 a request that does not fit where the session is, 422 a bad request or action.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from hiseg_sim.annotate.export import actions_frame, trace_records
from hiseg_sim.annotate.schema import ActionRequest, NextRequest, SessionState, SliceView, StartRequest
from hiseg_sim.annotate.service import AnnotationService, Conflict, NotFound, ResumeError
from hiseg_sim.env.actions import InvalidActionError

__all__ = ["STATIC_DIR", "create_app"]

STATIC_DIR = Path(__file__).resolve().parent / "static"


def create_app(
    store_path: str | Path,
    cohort: str = "default",
    segmenter: str | object = "litemedsam",
    *,
    service: AnnotationService | None = None,
    **service_kwargs,
) -> FastAPI:
    """The app recording into ``store_path``; ``service_kwargs`` go to :class:`AnnotationService`
    (``env``, ``cases``, ``cache_dir``, ``feedback``, ``n_cases``, ``order``, ``prefetch``, ``env_kwargs``,
    ``threads``, ``plan``).

    ``service``: an existing service to serve instead of building one (then the other arguments
    are ignored). The service is ``app.state.service``; it is closed when the app shuts down.
    """
    svc = service if service is not None else AnnotationService(store_path, cohort, segmenter, **service_kwargs)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        svc.close()

    app = FastAPI(title="hiseg-sim annotation", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.service = svc

    @app.exception_handler(NotFound)
    def _not_found(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Conflict)
    def _conflict(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(InvalidActionError)
    @app.exception_handler(ValueError)
    def _invalid(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc).splitlines()[0]}, status_code=422)

    @app.exception_handler(ResumeError)
    def _resume(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=500)

    # Sync handlers run in the server's thread pool; the service serialises them with its lock.
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.post("/api/sessions", response_model=SessionState)
    def start(req: StartRequest) -> SessionState:
        return svc.start(req)

    @app.get("/api/sessions/{session_id}", response_model=SessionState)
    def state(session_id: str) -> SessionState:
        return svc.state(session_id)

    @app.post("/api/sessions/{session_id}/actions", response_model=SessionState)
    def act(session_id: str, req: ActionRequest) -> SessionState:
        return svc.act(session_id, req)

    @app.post("/api/sessions/{session_id}/next", response_model=SessionState)
    def next_case(session_id: str, req: NextRequest) -> SessionState:
        return svc.next(session_id, req)

    @app.get("/api/sessions/{session_id}/slices/{k}", response_model=SliceView)
    def slice_view(session_id: str, k: int) -> SliceView:
        return svc.view(session_id, k)

    @app.get("/api/sessions/{session_id}/trace.jsonl")
    def trace(session_id: str) -> Response:
        import json

        from hiseg_sim.codec import json_default

        svc.state(session_id)  # 404 for an unknown session
        lines = [json.dumps(r, default=json_default) for r in trace_records(svc.store, session_id)]
        return Response("\n".join(lines) + "\n", media_type="application/x-ndjson")

    @app.get("/api/sessions/{session_id}/actions.parquet")
    def parquet(session_id: str) -> Response:
        svc.state(session_id)
        buf = io.BytesIO()
        actions_frame(svc.store, session_id).to_parquet(buf, index=False)
        return Response(buf.getvalue(), media_type="application/vnd.apache.parquet")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
