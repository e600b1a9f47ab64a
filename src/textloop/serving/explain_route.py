"""``POST /v1/explain``: integrated-gradients word attributions, the same as ``textloop explain``.

Request: ``{"inputs": ["..."], "target": null, "steps": 50, "output": "logit"}``.
Response: ``{"model": {...}, "explanations": [...]}``, one per input, each as
``textloop.evaluation.explain.explain`` returns it (label, score, words with attributions,
completeness); for a NER model, each input's ``entities``, each with its text, label, start,
end, score, words with attributions toward the entity's tags, and completeness
(``textloop.evaluation.explain_spans``).

Attributions cost ``steps`` forward and backward passes per text (per entity for NER), so:

- **one user of the model at a time**: Captum hooks the model's embedding layer while it
  integrates, and a prediction running through the same module at that moment would get the
  hooked (steps x larger) embeddings. Each text is explained as one job on the batcher's single
  worker thread, between prediction batches, so predictions never see the hooks and wait at
  most one text's explanation. (A second copy of the model would also keep the hooks away from
  predictions, but doubles memory, must follow every hot swap, and still needs a lock between
  two explain requests.)
- **bounded**: texts, steps and steps x tokens per request are limited (``ServeOptions``), 413
  beyond; a request running past ``explain_timeout_s`` is stopped (503 ``timeout``);
- **stopped when nobody waits**: a client that disconnects, a request cancelled by the server,
  or a server shutting down stops the work at the next forward/backward pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from textloop.errors import TextloopError
from textloop.evaluation.explain import DEFAULT_STEPS, Stopped, explain
from textloop.serving.http import ERROR_RESPONSES, ApiError, ErrorResponse, check_text

_DISCONNECT_POLL_S = 0.25


class ExplainRequest(BaseModel):
    """Texts to explain, and how."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[StrictStr] = Field(min_length=1, description="Texts to explain, in order.")
    target: StrictStr | None = Field(None, description="Explain this label, not the predicted.")
    steps: StrictInt = Field(DEFAULT_STEPS, ge=2, description="Integration steps per text.")
    output: Literal["logit", "probability"] = "logit"


def _token_counts(run: Any, texts: list[str]) -> list[int]:
    """Tokens of each text as the explainer sees it (truncated to the model's max_seq_len)."""
    task = run.task
    enc = task.tokenizer(texts, truncation=True, max_length=task.max_seq_len)
    return [len(ids) for ids in enc["input_ids"]]


def add_explain_route(app: FastAPI, state: Any, require_api_key: Callable[[Request], None]) -> None:
    """Register ``POST /v1/explain`` on ``app``.

    Args:
        app: the server's app.
        state: its ``ServerState`` (model, batcher, options, ``stopping``).
        require_api_key: the app's key check, applied as ``options.explain_auth`` says.
    """
    opts = state.options

    def explain_auth(request: Request) -> None:
        if opts.explain_auth == "key" or (opts.explain_auth == "auto" and opts.api_key):
            require_api_key(request)

    @app.post(
        "/v1/explain",
        dependencies=[Depends(explain_auth)],
        responses={
            **ERROR_RESPONSES,
            401: {"model": ErrorResponse},
            403: {"model": ErrorResponse},
        },
    )
    async def explain_texts(req: ExplainRequest, request: Request) -> JSONResponse:
        """Word attributions (integrated gradients) toward each text's label, or per entity."""
        model = state.serving_model()
        if getattr(model.run.task, "name", None) not in ("classification", "ner"):
            raise ApiError(
                400,
                "wrong_task",
                "explanations are available for classification and NER models only",
            )
        if len(req.inputs) > opts.explain_max_texts:
            raise ApiError(
                413,
                "too_many_texts",
                f"{len(req.inputs)} texts to explain; the limit is {opts.explain_max_texts} "
                "per request — split the request",
            )
        if req.steps > opts.explain_max_steps:
            raise ApiError(
                413,
                "too_many_steps",
                f"steps is {req.steps}; the limit is {opts.explain_max_steps} "
                f"(the default, {DEFAULT_STEPS}, keeps completeness errors small)",
            )
        for i, text in enumerate(req.inputs):
            check_text(text, f"inputs[{i}]", opts.max_chars)

        stop = threading.Event()  # set: the client left, or the request was cancelled
        deadline = time.monotonic() + opts.explain_timeout_s

        def should_stop() -> bool:
            return stop.is_set() or time.monotonic() > deadline or state.stopping()

        async def watch_client() -> None:
            while not stop.is_set():
                if await request.is_disconnected():
                    stop.set()
                await asyncio.sleep(_DISCONNECT_POLL_S)

        watcher = asyncio.create_task(watch_client())
        try:
            tokens = await state.batcher.run_exclusive(_token_counts, model.run, req.inputs)
            work = req.steps * sum(tokens)
            if work > opts.explain_max_token_steps:
                raise ApiError(
                    413,
                    "explain_too_large",
                    f"{req.steps} steps x {sum(tokens)} tokens = {work} token-steps; the limit "
                    f"is {opts.explain_max_token_steps} — use fewer steps, fewer or shorter texts",
                )
            out: list[dict[str, Any]] = []
            for text in req.inputs:  # one job per text: predictions run in between
                if should_stop():
                    raise Stopped("explanation stopped")
                out += await state.batcher.run_exclusive(
                    explain,
                    model.run,
                    [text],
                    target=req.target,
                    steps=req.steps,
                    output=req.output,
                    should_stop=should_stop,
                )
        except Stopped:
            if state.stopping():
                raise ApiError(503, "not_ready", "the server is shutting down") from None
            if stop.is_set():  # the client is gone; this answer goes nowhere
                raise ApiError(503, "cancelled", "the client disconnected") from None
            raise ApiError(
                503,
                "timeout",
                f"the explanation took longer than {opts.explain_timeout_s:g} s and was stopped; "
                "use fewer steps, fewer or shorter texts",
            ) from None
        except TextloopError as exc:
            raise ApiError(422, "invalid_input", str(exc)) from None
        except RuntimeError:
            if state.batcher.running:  # a real failure (torch raises RuntimeError): a 500
                raise
            raise ApiError(503, "not_ready", "the server is shutting down") from None
        finally:
            stop.set()  # also when this task is cancelled: the worker stops at its next pass
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        return JSONResponse(
            {"model": {"name": model.name, "version": model.version}, "explanations": out}
        )
