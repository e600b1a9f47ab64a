"""The server's pure ASGI middleware (not ``BaseHTTPMiddleware``, so the per-request cost stays
small): ``BodyLimit`` caps and times request bodies, ``Instrument`` counts every request in the
metrics."""

from __future__ import annotations

import asyncio
import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from textloop.serving.http import (
    KNOWN_PATHS,
    error_for_path,
)
from textloop.serving.metrics import ServerMetrics


class BodyLimit:
    """Read the whole body before the app sees it, answering 413 when it is too large.

    The 413 goes out only after the rest of the body has been read and thrown away (up to
    ``drain_bytes`` and ``drain_timeout_s``): a server that answers and closes while the client
    is still sending makes the kernel reset the connection, and the client (Python's urllib, for
    one) then sees a reset instead of the 413. A body beyond the drain bound, or one the client
    holds back for ``Expect: 100-continue``, is answered at once and the connection closed.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        drain_bytes: int = 32 * 1024 * 1024,
        drain_timeout_s: float = 10.0,
    ) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.drain_bytes, self.drain_timeout_s = drain_bytes, drain_timeout_s

    def _too_big(self, close: bool, path: str) -> JSONResponse:
        return error_for_path(
            path,
            413,
            "body_too_large",
            f"the request body is larger than the server's limit of {self.max_bytes} bytes; "
            "send fewer or shorter texts per request",
            headers={"connection": "close"} if close else None,
        )

    async def _drain(self, receive: Receive, size: int) -> bool:
        """Read and drop the rest of the body; whether it ended within the bounds."""
        deadline = time.monotonic() + self.drain_timeout_s
        while size <= self.drain_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                message = await asyncio.wait_for(receive(), left)
            except asyncio.TimeoutError:
                return False
            if message["type"] == "http.disconnect":
                return False
            size += len(message.get("body", b""))
            if not message.get("more_body", False):
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            waits = headers.get(b"expect", b"").lower() == b"100-continue"
            drained = (
                not waits and int(declared) <= self.drain_bytes and await self._drain(receive, 0)
            )
            await self._too_big(not drained, scope["path"])(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                drained = not more or await self._drain(receive, size)
                await self._too_big(not drained, scope["path"])(scope, receive, send)
                return
            chunks.append(chunk)
        body, sent = b"".join(chunks), False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class Instrument:
    """Count requests and time them, by path and status (unknown paths share one label)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
            self.metrics.record_request(path, status, time.perf_counter() - started)
            if status >= 400:
                self.metrics.record_error(str(status))
