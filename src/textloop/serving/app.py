"""The HTTP API: FastAPI over a task's predict, with micro-batching, limits and hot swap.

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``):

- ``POST /v1/predict``: ``{"inputs": [...], "pairs": [...]?, "top_k": 1}`` ->
  ``{"model": {...}, "predictions": [...]}``, one prediction per input, in order.
- ``GET /v1/model``: name, version, task, labels, metrics of the model being served.
- ``GET /healthz`` (the process answers), ``GET /readyz`` (a model is loaded and the batcher runs).
- ``GET /metrics``: Prometheus text format.
- ``POST /v1/admin/reload``: check the registry for a new production version now (API key).
- ``POST /v1/generate``: a generation model's answer to ``{"prompt"}`` or ``{"messages"}``,
  streamed as server-sent events with ``"stream": true`` (``serving/generate_route.py``).
- ``POST /v1/explain``: ``{"inputs": [...], "steps": 50}`` -> integrated-gradients word
  attributions per input, as ``textloop explain`` (``serving/explain_route.py``): bounded,
  on the predict worker between batches, API key when the server has one.
- ``POST /v1/feedback``: ``{"label": ..., "text": ..., "prediction_id": ...}``, a labelled
  example for retraining (API key; only with a feedback store, which also logs every
  prediction and adds its ``prediction_id`` to the response).
- OpenAI's API (``serving/openai_routes.py``): ``POST /v1/chat/completions``,
  ``POST /v1/completions`` (generation models), ``POST /v1/embeddings`` (encoders),
  ``GET /v1/models``; the API key as a Bearer token when the server has one.

Every error is JSON: ``{"error": {"code": "...", "message": "...", "details": [...]}}``, and
in OpenAI's shape on its routes (``serving/handlers.py``).

Example:
    >>> from textloop.serving.app import serve
    >>> from textloop.serving.sources import RegistrySource, ServeOptions
    >>> serve(RegistrySource(Registry("registry"), "reviews"), port=8080)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import torch
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from textloop.artifacts.feedback import FeedbackStore
from textloop.errors import TextloopError
from textloop.serving.batcher import MicroBatcher
from textloop.serving.embeddings import embed_batch
from textloop.serving.feedback_route import add_feedback_route
from textloop.serving.handlers import add_error_handlers
from textloop.serving.http import (
    ERROR_RESPONSES,
    LOOPBACK_HOSTS,
    ApiError,
    ErrorResponse,
    PredictRequest,
    PredictResponse,
    batched,
    check_texts,
    error_response,
    key_matches,
)
from textloop.serving.metrics import ServerMetrics
from textloop.serving.middleware import BodyLimit, Instrument
from textloop.serving.openai_routes import add_openai_routes
from textloop.serving.sources import LoadedModel, ModelSource, ServeOptions
from textloop.training.precision import choose_precision

log = logging.getLogger(__name__)
EMBED = "embed"  # the batcher option that asks for embeddings instead of predictions


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
        self.active_streams = 0  # answers being streamed (serving/generation.py)
        chosen = choose_precision(options.precision, torch.device("cpu"))
        log.info("precision: %s (%s)", chosen.name, chosen.reason)
        self.precision = chosen.name
        self.autocast = chosen.dtype  # None: fp32
        self.ready = False
        self.shutting_down = False
        # set by make_server: uvicorn's exit flag, so long work stops as soon as SIGTERM arrives
        self.server_exiting: Callable[[], bool] = lambda: False

    def stopping(self) -> bool:
        """The server is shutting down: long-running work (explanations) should stop now."""
        return self.shutting_down or self.server_exiting()

    def serving_model(self) -> LoadedModel:
        """The model requests are answered with.

        Raises:
            ApiError: 503 ``not_ready`` while no model is loaded (start-up, shutdown).
        """
        if self.current is None or not self.ready:
            raise ApiError(503, "not_ready", "no model is loaded yet; retry shortly")
        return self.current

    def set_model(self, model: LoadedModel) -> None:
        self.current = model  # one reference assignment: batches see the old or the new model
        self.metrics.record_swap(model.version)

    def _predict_batch(
        self, inputs: list[Any], pairs: list[str] | None, options: dict[str, Any]
    ) -> list[tuple[LoadedModel, Any]]:
        model = self.current  # taken once, so a swap mid-batch cannot mix two models
        assert model is not None
        with self._precision(model):  # on the worker thread: autocast is per thread
            if options.get("op") == EMBED:  # /v1/embeddings: never batched with predictions
                return [(model, v) for v in embed_batch(model, inputs)]
            preds = model.run.predict(inputs, pairs=pairs, **options)
        return [(model, p) for p in preds]

    def _precision(self, model: LoadedModel) -> contextlib.AbstractContextManager[Any]:
        if self.autocast is None or not isinstance(model.run.model, torch.nn.Module):
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=self.autocast)

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


# ---- app -----------------------------------------------------------------------------------
def create_app(
    source: ModelSource,
    options: ServeOptions | None = None,
    preloaded: LoadedModel | None = None,
    store: FeedbackStore | None = None,
) -> FastAPI:
    """The FastAPI app serving ``source``'s model.

    Args:
        source: where the model comes from (``RunDirSource`` or ``RegistrySource``).
        options: batching, limits, polling and the API key.
        preloaded: an already loaded model (else it is loaded at startup).
        store: traffic and feedback store: logs every prediction and takes ``/v1/feedback``.
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
            state.shutting_down = True
            if watcher is not None:
                watcher.cancel()
                with suppress(asyncio.CancelledError):
                    await watcher
            await state.batcher.stop()
            if store is not None:
                await asyncio.to_thread(store.flush)

    app = FastAPI(
        title="textloop model server",
        version="1",
        description="Predictions from a textloop model, micro-batched on a worker thread.",
        lifespan=lifespan,
    )
    app.state.textloop = state
    app.add_middleware(BodyLimit, max_bytes=opts.max_body_bytes)
    app.add_middleware(Instrument, metrics=state.metrics)  # added last: outermost, sees 413s

    add_error_handlers(app)  # JSON errors; OpenAI's shape on the OpenAI routes

    def require_api_key(request: Request) -> None:
        """Guard for write endpoints: the key must match, compared in constant time."""
        if opts.api_key is None:
            raise ApiError(
                403,
                "writes_disabled",
                "this server has no API key, so write endpoints are off; "
                "start it with --api-key-file",
            )
        if not key_matches(request.headers, opts.api_key):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong API key; send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERROR_RESPONSES)
    async def predict(req: PredictRequest) -> JSONResponse:
        """Predict a batch of texts; concurrent requests are batched together."""
        model = state.serving_model()
        texts = check_texts(req, model, opts)
        try:
            results = await batched(
                state.batcher,
                texts,
                req.pairs,
                {"top_k": req.top_k},
                opts.request_timeout_s,
                answer="prediction",
            )
        except TextloopError as exc:
            raise ApiError(422, "invalid_input", str(exc)) from None
        served = results[0][0]
        predictions = [p for _, p in results]
        if store is not None:  # queued to a writer thread: no disk wait in the request
            ids = store.log_predictions(served.name, served.version, texts, predictions)
            predictions = [{**p, "prediction_id": i} for p, i in zip(predictions, ids)]
        return JSONResponse(
            {
                "model": {"name": served.name, "version": served.version},
                "predictions": predictions,
            }
        )

    @app.get("/v1/model")
    async def model_info() -> JSONResponse:
        """Name, version, task, labels and metrics of the model being served."""
        if state.current is None:
            raise ApiError(503, "not_ready", "no model is loaded yet")
        return JSONResponse({**state.current.info(), "precision": state.precision})

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is up and answering."""
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"model": ErrorResponse}})
    async def readyz() -> JSONResponse:
        """A model is loaded and predictions are being served."""
        if not state.ready or state.current is None or not state.batcher.running:
            return error_response(
                503, "not_ready", "the model is not loaded or the server is stopping"
            )
        return JSONResponse({"status": "ready", "version": state.current.version})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        """Prometheus text format: requests, latency, batch sizes, errors, swaps."""
        return PlainTextResponse(
            state.metrics.render(state.batcher.queued_inputs, state.active_streams),
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

    add_feedback_route(app, state, store, require_api_key)  # POST /v1/feedback
    from textloop.serving.generate_route import add_generate_route

    add_generate_route(app, state)  # POST /v1/generate (generation models, SSE streaming)
    from textloop.serving.explain_route import add_explain_route

    add_explain_route(app, state, require_api_key)  # POST /v1/explain (attributions)
    add_openai_routes(app, state, store, EMBED)  # chat, completions, embeddings, models
    return app


def serve(
    source: ModelSource,
    host: str = "127.0.0.1",
    port: int = 8080,
    options: ServeOptions | None = None,
    threads: int | None = None,
    log_level: str = "info",
    access_log: bool = False,
    store: FeedbackStore | None = None,
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
        store: traffic and feedback store (logs predictions, enables ``/v1/feedback``).

    Raises:
        TextloopError: the model cannot be loaded (checked before the port is opened).
    """
    if threads:
        import torch

        torch.set_num_threads(threads)
    opts = options or ServeOptions()
    if host not in LOOPBACK_HOSTS and opts.api_key is None:
        log.warning("serving on %s without an API key: write endpoints are off", host)
    model = source.load(None)
    app = create_app(source, opts, preloaded=model, store=store)
    make_server(app, host, port, log_level, access_log).run()


def make_server(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    access_log: bool = False,
) -> Any:
    """A ``uvicorn.Server`` for an app of ``create_app``, told to stop long work on exit.

    On SIGTERM uvicorn first waits (up to 10 s) for requests in flight; an explanation in
    flight sees the exit flag at its next forward pass and answers 503 at once, so the
    process exits promptly instead of computing for nobody.
    """
    import uvicorn

    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
            timeout_graceful_shutdown=10,
        )
    )
    app.state.textloop.server_exiting = lambda: server.should_exit
    return server
