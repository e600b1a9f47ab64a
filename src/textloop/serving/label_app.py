"""The labelling page: plain HTML/JS/CSS and a small JSON API over a ``LabelSession``.

Routes:

- ``GET /`` and ``GET /static/label.{js,css}``: the page (no data in it; a login form first).
- ``GET /api/state``: the current text, the model's suggestions, labels with their keys, progress.
- ``POST /api/label`` ``{"index", "label"}``: answered (200) only once the label is on disk.
- ``POST /api/skip`` ``{"index"}``, ``POST /api/undo``: skip for now; take back the last decision.
- ``GET /api/highlights/{index}``: word attributions (integrated gradients) as text pieces.

Every ``/api`` route needs the API key (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``,
compared in constant time); the page asks for it once and keeps it in the tab's session
storage, so no cookie exists for another site to ride on. Texts reach the page only as JSON and
are put in the document with ``textContent``; a Content-Security-Policy allowing nothing but the
page's own script, style and API backs that up.

Example:
    >>> session = LabelSession(read_queue("queue.jsonl"), load_run("runs/fs"), store, "fs", "ana")
    >>> serve_labels(session, api_key=key, port=8090)
"""

from __future__ import annotations

import asyncio
import logging
from importlib import resources
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from textloop.errors import DataError, TextloopError
from textloop.serving.handlers import add_error_handlers
from textloop.serving.http import LOOPBACK_HOSTS, ApiError, key_matches
from textloop.serving.label_session import LabelSession, SessionConflict
from textloop.serving.middleware import BodyLimit

log = logging.getLogger(__name__)
MIN_KEY_CHARS = 16
MAX_BODY_BYTES = 64 * 1024  # a label and an index; nothing larger is ever sent
# the page's own files and its own API, nothing else: no inline script or style, no frames,
# no forms posting elsewhere, no plugins
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
_STATIC = {
    "label.js": "text/javascript; charset=utf-8",
    "label.css": "text/css; charset=utf-8",
    "label.html": "text/html; charset=utf-8",
}


class SecurityHeaders:
    """Pure ASGI middleware adding the CSP and friends to every answer, API errors included."""

    HEADERS = (
        (b"content-security-policy", CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"cache-control", b"no-store"),  # texts must not linger in caches
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + list(self.HEADERS)
            await send(message)

        await self.app(scope, receive, with_headers if scope["type"] == "http" else send)


class LabelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: StrictInt = Field(ge=0, description="The item the label is for (from /api/state).")
    label: StrictStr = Field(min_length=1, max_length=1000, description="The label.")


class SkipRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    index: StrictInt = Field(ge=0, description="The item to pass over for now.")


def _static(name: str) -> bytes:
    return resources.files("textloop.serving").joinpath("static", name).read_bytes()


def create_label_app(session: LabelSession, api_key: str) -> FastAPI:
    """The FastAPI app of the labelling page over ``session``.

    Args:
        session: the queue, run and store being labelled.
        api_key: the key every API call must carry (at least 16 characters).

    Raises:
        DataError: a key that is too short.
    """
    if len(api_key) < MIN_KEY_CHARS:
        raise DataError(f"the labelling page needs an API key of >= {MIN_KEY_CHARS} characters")
    files = {name: _static(name) for name in _STATIC}  # read once: a bad install fails now
    app = FastAPI(title="textloop labelling page", version="1", docs_url=None, redoc_url=None)
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)
    app.add_middleware(SecurityHeaders)
    add_error_handlers(app)

    def require_key(request: Request) -> None:
        if not key_matches(request.headers, api_key):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong API key; send 'X-API-Key: KEY' (the page asks for it)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def page(name: str) -> Response:
        return Response(files[name], media_type=_STATIC[name])

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return page("label.html")

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in files or name == "label.html":
            raise ApiError(404, "not_found", f"no static file {name!r}")
        return page(name)

    async def answer(work: Any, *args: Any) -> JSONResponse:
        """Run a session call off the event loop, then answer with the new state."""
        try:
            out = await asyncio.to_thread(work, *args)
        except SessionConflict as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        except TextloopError as exc:
            raise ApiError(422, "invalid_request", str(exc)) from None
        state = await asyncio.to_thread(session.state)
        return JSONResponse({"done": out if isinstance(out, int) else None, "state": state})

    auth = [Depends(require_key)]

    @app.get("/api/state", dependencies=auth)
    async def state() -> JSONResponse:
        """The current item, its suggestions, the labels and their keys, and progress."""
        return JSONResponse(await asyncio.to_thread(session.state))

    @app.post("/api/label", dependencies=auth)
    async def label(req: LabelRequest) -> JSONResponse:
        """Label an item; the answer comes only once the label is durably written."""
        return await answer(session.label, req.index, req.label)

    @app.post("/api/skip", dependencies=auth)
    async def skip(req: SkipRequest) -> JSONResponse:
        """Pass over an item for this session."""
        return await answer(session.skip, req.index)

    @app.post("/api/undo", dependencies=auth)
    async def undo() -> JSONResponse:
        """Take back the last label or skip of this session."""
        return await answer(lambda: session.undo().index)

    @app.get("/api/highlights/{index}", dependencies=auth)
    async def highlights(index: int) -> JSONResponse:
        """Word attributions toward the run's predicted label, as shaded text pieces."""
        try:
            return JSONResponse(await asyncio.to_thread(session.highlights, index))
        except TextloopError as exc:
            raise ApiError(404, "not_found", str(exc)) from None

    return app


def check_bind(host: str, key_given: bool) -> None:
    """The serving rule for a page holding private texts: off loopback only with a key.

    Raises:
        DataError: a non-loopback ``host`` without an API key the user chose.
    """
    if host not in LOOPBACK_HOSTS and not key_given:
        raise DataError(
            f"refusing to serve the labelling page on {host} without an API key: give "
            "--api-key-file (or bind 127.0.0.1 and use the one-time key it prints)"
        )


def serve_labels(
    session: LabelSession, api_key: str, host: str = "127.0.0.1", port: int = 8090
) -> None:
    """Serve the labelling page until interrupted (blocks)."""
    import uvicorn

    app = create_label_app(session, api_key)
    uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
    ).run()
