"""OpenAI's API over the served model: chat, completions, embeddings and the model list.

The official ``openai`` client, LangChain, LlamaIndex and curl recipes written for OpenAI work
against ``http://HOST:PORT/v1``. The same pieces serve these routes as the native ones: the
micro-batcher and its worker (``serving/generation.py``, ``serving/embeddings.py``), the text
limits (``check_text``), the metrics and the traffic log. What differs is the shape: OpenAI's
request fields, responses, SSE chunks (``data: {...}`` then ``data: [DONE]``) and errors
(``{"error": {"message", "type", "param", "code"}}``, ``serving/handlers.py``).

- ``model`` must be the served model's name: the registry name, or the run folder's name
  when a folder is served (``GET /v1/models`` lists it); another is 404 ``model_not_found``.
- The API key, when the server has one, is required as ``Authorization: Bearer KEY`` (what
  the client sends as ``api_key``); a server without one takes any key.
- A generation model serves chat and completions; an encoder serves embeddings; the other way
  round is 400 ``wrong_task`` naming the routes it serves.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from textloop.artifacts.feedback import FeedbackStore
from textloop.errors import TextloopError
from textloop.serving.embeddings import why_no_embeddings
from textloop.serving.generation import TokenStream, answer_whole, is_generation, prompt_tokens
from textloop.serving.http import ApiError, batched, key_matches
from textloop.serving.openai_schema import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from textloop.serving.sources import LoadedModel

OWNER = "textloop"
log = logging.getLogger(__name__)


def _model_card(model: LoadedModel) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": int(model.loaded_at),
        "owned_by": OWNER,
        "version": model.version,
        "stage": model.stage,
        "task": model.run.task.name,
        "format": model.format,
    }


def _fingerprint(model: LoadedModel) -> str:
    return f"{model.name}-v{model.version}"  # which version answered, across hot swaps


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _sse(data: dict[str, Any] | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n"


class _Trim:
    """Strip a streamed answer as the whole answer is stripped, without waiting for its end:
    leading whitespace is dropped, trailing whitespace held until more text follows it."""

    def __init__(self) -> None:
        self.started, self.held = False, ""

    def __call__(self, piece: str) -> str:
        text = self.held + piece if self.started else piece.lstrip()
        if not text:
            return ""
        self.started = True
        body = text.rstrip()
        self.held = text[len(body) :]
        return body


def add_openai_routes(app: FastAPI, state: Any, store: FeedbackStore | None, embed_op: str) -> None:
    """Register the OpenAI-compatible routes on ``app``.

    Args:
        app: the server's app.
        state: its ``ServerState`` (model, batcher, options, metrics).
        store: the traffic log: chat and completion requests are logged like predictions,
            and the logged id is the response's ``id`` (``chatcmpl-<prediction_id>``).
        embed_op: the batcher option value that asks the worker for embeddings.
    """
    opts = state.options

    def bearer_key(request: Request) -> None:
        if opts.api_key is not None and not key_matches(request.headers, opts.api_key):
            raise ApiError(
                401,
                "invalid_api_key",
                "missing or wrong API key; send it as 'Authorization: Bearer KEY' (the "
                "OpenAI client's api_key)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def served(name: str, wants_generation: bool) -> LoadedModel:
        model: LoadedModel = state.serving_model()
        if name != model.name:
            raise ApiError(
                404,
                "model_not_found",
                f"the model {name!r} does not exist on this server; it serves "
                f"{model.name!r} (GET /v1/models)",
                param="model",
            )
        if wants_generation and not is_generation(model):
            raise ApiError(
                400,
                "wrong_task",
                f"model {model.name!r} is a {model.run.task.name} model: it serves "
                "/v1/embeddings (and /v1/predict), not chat or completions",
                param="model",
            )
        return model

    def log_request(model: LoadedModel, texts: list[str], outputs: list[Any]) -> list[str]:
        if store is None:
            return [uuid.uuid4().hex for _ in texts]
        return store.log_predictions(model.name, model.version, texts, outputs)

    auth = [Depends(bearer_key)]

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> JSONResponse:
        """The served model (name, version, stage, task), as OpenAI lists models."""
        return JSONResponse({"object": "list", "data": [_model_card(state.serving_model())]})

    @app.get("/v1/models/{name}", dependencies=auth)
    async def get_model(name: str) -> JSONResponse:
        """One model by name: the served one, or 404 ``model_not_found``."""
        model = state.serving_model()
        if name != model.name:
            raise ApiError(
                404,
                "model_not_found",
                f"the model {name!r} does not exist on this server; it serves {model.name!r}",
                param="model",
            )
        return JSONResponse(_model_card(model))

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(req: ChatCompletionRequest) -> Any:
        """Answer a chat through the model's chat template; ``stream`` sends chunks (SSE)."""
        model = served(req.model, wants_generation=True)
        req.check()
        messages = req.chat(opts.max_chars)
        n_prompt = await asyncio.to_thread(prompt_tokens, model, messages, "messages")
        options = req.decoding(req.token_limit())
        last_user = messages[-1]["content"]
        if req.stream:
            return await _stream(model, messages, options, req, n_prompt, last_user, chat=True)
        [(by, out)] = await answer_whole(state, [messages], options)
        [pid] = log_request(by, [last_user], [out])
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": out["text"]},
            "logprobs": None,
            "finish_reason": out["finish_reason"],
        }
        return JSONResponse(
            {
                "id": f"chatcmpl-{pid}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": by.name,
                "system_fingerprint": _fingerprint(by),
                "choices": [choice],
                "usage": _usage(n_prompt, out["tokens"]),
            }
        )

    @app.post("/v1/completions", dependencies=auth)
    async def completions(req: CompletionRequest) -> Any:
        """Answer prompts as ``/v1/generate`` does (the run's prompt and chat template)."""
        model = served(req.model, wants_generation=True)
        req.check()
        prompts = req.prompts(opts.max_texts, opts.max_chars)
        where = ["prompt"] if len(prompts) == 1 else [f"prompt[{i}]" for i in range(len(prompts))]
        n_prompt = [
            await asyncio.to_thread(prompt_tokens, model, p, w) for p, w in zip(prompts, where)
        ]
        options = req.decoding(req.max_tokens)
        if req.stream:
            return await _stream(model, prompts[0], options, req, n_prompt[0], prompts[0], False)
        results = await answer_whole(state, list(prompts), options)
        by = results[0][0]
        outs = [out for _, out in results]
        ids = log_request(by, prompts, outs)
        choices = [
            {"text": o["text"], "index": i, "logprobs": None, "finish_reason": o["finish_reason"]}
            for i, o in enumerate(outs)
        ]
        return JSONResponse(
            {
                "id": f"cmpl-{ids[0]}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": by.name,
                "system_fingerprint": _fingerprint(by),
                "choices": choices,
                "usage": _usage(sum(n_prompt), sum(o["tokens"] for o in outs)),
            }
        )

    async def _stream(
        model: LoadedModel,
        item: Any,
        options: dict[str, Any],
        req: ChatCompletionRequest | CompletionRequest,
        n_prompt: int,
        logged_text: str,
        chat: bool,
    ) -> StreamingResponse:
        stream = TokenStream(state, model, item, options)
        await stream.start()  # errors before the first byte still get their HTTP status
        [pid] = log_request(model, [logged_text], [{}])
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{pid}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model.name,
            "system_fingerprint": _fingerprint(model),
        }
        with_usage = req.include_usage()

        def chunk(piece: dict[str, Any] | str | None, finish: str | None = None) -> str:
            """A chat chunk with ``piece`` as its delta, or a completion chunk with it as text."""
            if chat:
                delta = {"content": piece} if isinstance(piece, str) else piece or {}
                choice: dict[str, Any] = {"index": 0, "delta": delta}
            else:
                choice = {"index": 0, "text": piece or ""}
            choice.update(logprobs=None, finish_reason=finish)
            body: dict[str, Any] = {**head, "choices": [choice]}
            if with_usage:  # OpenAI's chunks carry usage: null until the last one
                body["usage"] = None
            return _sse(body)

        async def events() -> AsyncIterator[str]:
            trim, tokens = _Trim(), 0
            if chat:  # the role comes first, as OpenAI sends it
                yield chunk({"role": "assistant", "content": ""})
            try:
                async with aclosing(stream.steps()) as steps:  # closed with this generator
                    async for step in steps:
                        tokens = step.tokens
                        text = trim(step.text)
                        if text:
                            yield chunk(text)
                        if step.finish_reason is not None:
                            yield chunk(None, step.finish_reason)
            except Exception as exc:  # the status line is out: an error event, the client raises
                log.exception("streaming an answer failed")
                error = {
                    "message": f"generation failed: {exc}",
                    "type": "server_error",
                    "param": None,
                    "code": "generation_failed",
                }
                yield _sse({"error": error})
                return
            if with_usage:
                yield _sse({**head, "choices": [], "usage": _usage(n_prompt, tokens)})
            yield _sse("[DONE]")

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
        )

    @app.post("/v1/embeddings", dependencies=auth)
    async def embeddings(req: EmbeddingRequest) -> JSONResponse:
        """Unit-length mean-pooled embeddings from an encoder, micro-batched on the worker."""
        model = served(req.model, wants_generation=False)
        reason = why_no_embeddings(model)
        if reason is not None:
            raise ApiError(400, "wrong_task", reason, param="model")
        texts = req.texts(opts.max_texts, opts.max_chars)
        if req.dimensions is not None:
            raise ApiError(
                400,
                "unsupported_parameter",
                "dimensions is not supported: the vectors have the model's hidden size "
                "(leave it out; shortening would need a model trained for it)",
                param="dimensions",
            )
        try:
            results = await batched(
                state.batcher,
                texts,
                None,
                {"op": embed_op},
                opts.request_timeout_s,
                answer="embeddings",
            )
        except TextloopError as exc:
            raise ApiError(400, "wrong_task", str(exc), param="model") from None
        by, limit = results[0][0], results[0][0].run.task.max_seq_len
        data, counts = [], []
        for i, (_, (vector, n)) in enumerate(results):
            if vector is None:
                raise ApiError(
                    400,
                    "context_length_exceeded",
                    f"input[{i}] has {n} tokens; this model reads at most {limit} (the "
                    "max_seq_len it was trained with) — shorten or split it",
                    param="input",
                )
            if req.encoding_format == "base64":  # little-endian float32, as OpenAI sends
                value: Any = base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
            else:
                value = vector
            data.append({"object": "embedding", "index": i, "embedding": value})
            counts.append(n)
        total = sum(counts)
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": by.name,
                "usage": {"prompt_tokens": total, "total_tokens": total},
            }
        )
