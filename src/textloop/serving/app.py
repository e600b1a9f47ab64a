"""The HTTP API: FastAPI over a task's predict, with micro-batching, limits and hot swap.

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``):

- ``POST /v1/predict``: ``{"inputs": [...], "pairs": [...]?, "top_k": 1}`` ->
  ``{"model": {...}, "predictions": [...]}``, one prediction per input, in order.
- ``GET /v1/model``: name, version, task, labels, metrics of the model being served.
- ``GET /healthz`` (the process answers), ``GET /readyz`` (a model is loaded and the batcher runs).
- ``GET /metrics``: Prometheus text format.
- ``POST /v1/admin/reload``: check the registry for a new production version now (API key).

Every error is JSON: ``{"error": {"code": "...", "message": "...", "details": [...]}}``.

Example:
    >>> from textloop.serving.app import serve
    >>> from textloop.serving.sources import RegistrySource, ServeOptions
    >>> serve(RegistrySource(Registry("registry"), "reviews"), port=8080)
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from textloop.errors import TextloopError
from textloop.serving.batcher import MicroBatcher, QueueFullError
from textloop.serving.metrics import ServerMetrics
from textloop.serving.sources import LoadedModel, ModelSource, ServeOptions

log = logging.getLogger(__name__)

_UNION_TAGS = {"list[str]", "str", "int"}
_KNOWN_PATHS = {"/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics", "/v1/admin/reload"}


# ---- schema --------------------------------------------------------------------------------
class PredictRequest(BaseModel):
    """Texts to predict. A single string counts as a list of one."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": ["arrived broken", "love it"], "top_k": 1}]},
    )
    inputs: list[StrictStr] | StrictStr = Field(description="Texts to predict, in order.")
    pairs: list[StrictStr] | None = Field(
        None, description="Second texts for a sentence-pair model, one per input."
    )
    top_k: StrictInt = Field(1, ge=1, le=1000, description="Labels (with scores) per input.")


class ModelRef(BaseModel):
    name: str
    version: int


class PredictResponse(BaseModel):
    """Predictions in input order; their shape is the task's (classification: label + score)."""

    model: ModelRef
    predictions: list[dict[str, Any]]


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class ApiError(Exception):
    """An error answered as JSON with an HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def _error(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)


_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse, "description": d}
    for s, d in {
        413: "Body, number of texts or a text too large.",
        422: "Malformed request.",
        503: "Busy, shutting down or timed out.",
    }.items()
}


# ---- state ---------------------------------------------------------------------------------
class ServerState:
    """The live model, the batcher and the metrics of one app (no module-level state)."""

    def __init__(self, source: ModelSource, options: ServeOptions) -> None:
        self.source = source
        self.options = options
        self.metrics = ServerMetrics()
        self.current: LoadedModel | None = None
        self.failed_version: int | None = None
        self.swap_lock = asyncio.Lock()
        self.batcher = MicroBatcher(
            self._predict_batch,
            options.max_batch_size,
            options.max_wait_ms,
            options.max_queue,
            on_batch=self.metrics.record_batch,
        )
        self.ready = False

    def set_model(self, model: LoadedModel) -> None:
        self.current = model  # one reference assignment: batches see the old or the new model
        self.metrics.record_swap(model.version)

    def _predict_batch(
        self, inputs: list[str], pairs: list[str] | None, options: dict[str, Any]
    ) -> list[tuple[LoadedModel, Any]]:
        model = self.current  # taken once, so a swap mid-batch cannot mix two models
        assert model is not None
        preds = model.run.predict(inputs, pairs=pairs, **options)
        return [(model, p) for p in preds]

    async def check_for_new_version(self) -> None:
        """Load and switch to the source's wanted version if it differs from the live one."""
        async with self.swap_lock:
            wanted = await asyncio.to_thread(self.source.wanted_version)
            live = self.current.version if self.current else None
            if wanted is None or wanted == live or wanted == self.failed_version:
                return
            try:
                model = await asyncio.to_thread(self.source.load, wanted)
            except TextloopError as exc:
                self.failed_version = wanted
                self.metrics.record_error("swap_failed")
                log.error("keeping version %s: cannot load version %s: %s", live, wanted, exc)
                return
            self.failed_version = None
            self.set_model(model)
            log.info("now serving %s version %d (was %s)", model.name, model.version, live)

    async def watch(self) -> None:
        while True:
            await asyncio.sleep(self.options.poll_seconds)
            try:
                await self.check_for_new_version()
            except Exception:  # a registry hiccup must not stop the watcher
                log.exception("checking for a new model version failed")


# ---- middleware ----------------------------------------------------------------------------
class BodyLimit:
    """Read the whole body before the app sees it, answering 413 as soon as it is too large."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        too_big = _error(
            413,
            "body_too_large",
            f"the request body is larger than the server's limit of {self.max_bytes} bytes; "
            "send fewer or shorter texts per request",
        )
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await too_big(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await too_big(scope, receive, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
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
            path = scope["path"] if scope["path"] in _KNOWN_PATHS else "other"
            self.metrics.record_request(path, status, time.perf_counter() - started)
            if status >= 400:
                self.metrics.record_error(str(status))


def _validation_message(errors: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    details: list[dict[str, Any]] = []
    for e in errors:
        # drop "body" and union-branch tags ("list[str]", "str") pydantic puts in the location
        loc = [str(x) for x in e.get("loc", ()) if x != "body" and str(x) not in _UNION_TAGS]
        detail = {"loc": loc, "msg": str(e.get("msg", ""))}
        if detail not in details:
            details.append(detail)
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return f"the request body is not valid JSON ({first.get('msg')})", details
    if tuple(first.get("loc", ())) == ("body",):
        return (
            'the request body must be a JSON object like {"inputs": ["a text", ...]}, sent with '
            "content-type: application/json",
            details,
        )
    parts = [f"{'.'.join(d['loc']) or 'body'}: {d['msg']}" for d in details[:5]]
    return "invalid request: " + "; ".join(parts), details


def _check_texts(req: PredictRequest, model: LoadedModel, opts: ServeOptions) -> list[str]:
    texts = [req.inputs] if isinstance(req.inputs, str) else list(req.inputs)
    if not texts:
        raise ApiError(422, "no_inputs", "inputs is empty; send at least one text")
    if len(texts) > opts.max_texts:
        raise ApiError(
            413,
            "too_many_texts",
            f"{len(texts)} texts in one request; the limit is {opts.max_texts} — split the request",
        )
    pair_model = bool(model.run.task.state().get("pair"))
    if pair_model and req.pairs is None:
        raise ApiError(422, "pairs_required", "this model classifies text pairs; send 'pairs'")
    if not pair_model and req.pairs is not None:
        raise ApiError(422, "pairs_not_supported", "this model takes single texts; drop 'pairs'")
    if req.pairs is not None and len(req.pairs) != len(texts):
        raise ApiError(
            422, "pairs_mismatch", f"{len(texts)} inputs but {len(req.pairs)} pairs; send one each"
        )
    for field_name, values in (("inputs", texts), ("pairs", req.pairs or [])):
        for i, text in enumerate(values):
            if len(text) > opts.max_chars:
                raise ApiError(
                    413,
                    "text_too_long",
                    f"{field_name}[{i}] has {len(text)} characters; the limit is {opts.max_chars}",
                )
            if not text.strip():
                raise ApiError(422, "empty_text", f"{field_name}[{i}] is empty or only whitespace")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(
                    422, "invalid_text", f"{field_name}[{i}] is not valid Unicode (lone surrogate)"
                ) from None
    return texts


# ---- app -----------------------------------------------------------------------------------
def create_app(
    source: ModelSource, options: ServeOptions | None = None, preloaded: LoadedModel | None = None
) -> FastAPI:
    """The FastAPI app serving ``source``'s model.

    Args:
        source: where the model comes from (``RunDirSource`` or ``RegistrySource``).
        options: batching, limits, polling and the API key.
        preloaded: an already loaded model (else it is loaded at startup).
    """
    opts = options or ServeOptions()
    state = ServerState(source, opts)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model = preloaded if preloaded is not None else await asyncio.to_thread(source.load, None)
        state.set_model(model)
        await state.batcher.start()
        watcher = asyncio.create_task(state.watch()) if opts.poll_seconds > 0 else None
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            if watcher is not None:
                watcher.cancel()
                with suppress(asyncio.CancelledError):
                    await watcher
            await state.batcher.stop()

    app = FastAPI(
        title="textloop model server",
        version="1",
        description="Predictions from a textloop model, micro-batched on a worker thread.",
        lifespan=lifespan,
    )
    app.state.textloop = state
    app.add_middleware(BodyLimit, max_bytes=opts.max_body_bytes)
    app.add_middleware(Instrument, metrics=state.metrics)  # added last: outermost, sees 413s

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = _validation_message(list(exc.errors()))
        return _error(422, "invalid_request", message, details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            f"{exc.detail}: {request.method} {request.url.path}",
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, "internal_error", "the server failed on this request; see its log")

    def require_api_key(request: Request) -> None:
        """Guard for write endpoints: the key must match, compared in constant time."""
        if opts.api_key is None:
            raise ApiError(
                403,
                "writes_disabled",
                "this server has no API key, so write endpoints are off; "
                "start it with --api-key-file",
            )
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
        if not given or not hmac.compare_digest(given.encode(), opts.api_key.encode()):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong API key; send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.post("/v1/predict", response_model=PredictResponse, responses=_ERRORS)
    async def predict(req: PredictRequest) -> JSONResponse:
        """Predict a batch of texts; concurrent requests are batched together."""
        model = state.current
        if model is None or not state.ready:
            raise ApiError(503, "not_ready", "no model is loaded yet; retry shortly")
        texts = _check_texts(req, model, opts)
        try:
            results = await asyncio.wait_for(
                state.batcher.submit(texts, req.pairs, {"top_k": req.top_k}),
                opts.request_timeout_s,
            )
        except QueueFullError:
            raise ApiError(
                503, "busy", "too many texts are waiting; retry later", {"Retry-After": "1"}
            ) from None
        except asyncio.TimeoutError:
            raise ApiError(
                503, "timeout", f"no prediction within {opts.request_timeout_s:g} s; retry later"
            ) from None
        except TextloopError as exc:
            raise ApiError(422, "invalid_input", str(exc)) from None
        served = results[0][0]
        return JSONResponse(
            {
                "model": {"name": served.name, "version": served.version},
                "predictions": [p for _, p in results],
            }
        )

    @app.get("/v1/model")
    async def model_info() -> JSONResponse:
        """Name, version, task, labels and metrics of the model being served."""
        if state.current is None:
            raise ApiError(503, "not_ready", "no model is loaded yet")
        return JSONResponse(state.current.info())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up and answering."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz() -> JSONResponse:
        """A model is loaded and predictions are being served."""
        if not state.ready or state.current is None or not state.batcher.running:
            return _error(503, "not_ready", "the model is not loaded or the server is stopping")
        return JSONResponse({"status": "ready", "version": state.current.version})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        """Prometheus text format: requests, latency, batch sizes, errors, swaps."""
        return PlainTextResponse(
            state.metrics.render(state.batcher.queued_inputs),
            media_type="text/plain; version=0.0.4; charset=utf-8",
        )

    @app.post(
        "/v1/admin/reload",
        dependencies=[Depends(require_api_key)],
        responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}},
    )
    async def reload() -> JSONResponse:
        """Check the registry for a new production version now (needs the API key)."""
        await state.check_for_new_version()
        assert state.current is not None
        return JSONResponse({"name": state.current.name, "version": state.current.version})

    return app


def serve(
    source: ModelSource,
    host: str = "127.0.0.1",
    port: int = 8080,
    options: ServeOptions | None = None,
    threads: int | None = None,
    log_level: str = "info",
    access_log: bool = False,
) -> None:
    """Load the model, then serve it over HTTP until interrupted (blocks).

    Args:
        source: where the model comes from.
        host: interface to bind; loopback unless told otherwise.
        port: TCP port.
        options: batching, limits, polling and the API key.
        threads: intra-op threads for PyTorch (default: all cores).
        log_level: uvicorn's log level.
        access_log: log every request (costs throughput).

    Raises:
        TextloopError: the model cannot be loaded (checked before the port is opened).
    """
    import uvicorn

    if threads:
        import torch

        torch.set_num_threads(threads)
    opts = options or ServeOptions()
    if host not in ("127.0.0.1", "localhost", "::1") and opts.api_key is None:
        log.warning("serving on %s without an API key: write endpoints are off", host)
    model = source.load(None)
    app = create_app(source, opts, preloaded=model)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=10,
    )
