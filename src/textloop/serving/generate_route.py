"""``POST /v1/generate``: answers of a generation model, whole or streamed as server-sent events.

Request: ``{"prompt": "..."}`` or ``{"messages": [{"role": "user", "content": "..."}]}``, plus
optional decoding options (max_new_tokens, temperature, top_p, top_k, repetition_penalty, stop,
seed) and ``"stream": true``.

Response without streaming: ``{"model": {...}, "output": {"text", "tokens", "finish_reason"}}``.
With streaming (``text/event-stream``): one ``data: {"text": "<piece>"}`` event per piece of text
as tokens are generated, then ``event: done`` with ``data: {"text": "<whole answer>"}`` (and its
``tokens`` and ``finish_reason``).

Generation runs as ``serving/generation.py`` says, on the path the OpenAI routes share: whole
answers micro-batched on the worker, streams a token per worker job, stopped when their client
leaves. A prompt longer than the model's ``max_seq_len`` keeps its last tokens here (the OpenAI
routes refuse it instead).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from textloop.serving.generation import TokenStream, answer_whole, is_generation
from textloop.serving.http import ERROR_RESPONSES, ApiError


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class GenerateRequest(BaseModel):
    """A prompt or a chat to answer, with decoding options (the run's defaults otherwise)."""

    model_config = ConfigDict(extra="forbid")
    prompt: StrictStr | None = Field(None, max_length=100_000)
    messages: list[ChatMessage] | None = Field(None, min_length=1, max_length=200)
    stream: bool = False
    max_new_tokens: int | None = Field(None, ge=1, le=4096)
    temperature: float | None = Field(None, ge=0.0, le=10.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=100.0)
    stop: list[StrictStr] | None = Field(None, max_length=16)
    seed: int | None = Field(None, ge=0)

    def decoding(self) -> dict[str, Any]:
        keys = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "stop")
        out = {k: getattr(self, k) for k in (*keys, "seed") if getattr(self, k) is not None}
        return out


def _sse(data: dict[str, Any], event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return head + f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def add_generate_route(app: FastAPI, state: Any) -> None:
    """Register ``POST /v1/generate`` on ``app``; ``state.current`` is the model being served."""

    @app.post("/v1/generate", responses=ERROR_RESPONSES)
    async def generate(req: GenerateRequest) -> Any:
        """Answer a prompt or chat with a generation model; ``stream`` sends pieces as SSE."""
        model = state.serving_model()
        if not is_generation(model):
            raise ApiError(
                400,
                "wrong_task",
                f"the served model is a {model.run.task.name} model; use /v1/predict",
            )
        if (req.prompt is None) == (req.messages is None):
            raise ApiError(422, "invalid_request", "give exactly one of 'prompt' or 'messages'")
        item: Any = (
            req.prompt if req.prompt is not None else [m.model_dump() for m in req.messages or []]
        )
        if req.messages is not None and req.messages[-1].role != "user":
            raise ApiError(422, "invalid_request", "the last message must be from the user")
        options = req.decoding()
        if "stop" in options:
            options["stop"] = tuple(options["stop"])  # batch keys compare options
        if not req.stream:
            [(by, out)] = await answer_whole(state, [item], options)
            return JSONResponse({"model": {"name": by.name, "version": by.version}, "output": out})
        stream = TokenStream(state, model, item, options)
        await stream.start()
        served = {"name": model.name, "version": model.version}

        async def events() -> AsyncIterator[str]:
            text: list[str] = []
            async with aclosing(stream.steps()) as steps:  # closed with this generator
                async for step in steps:
                    if step.text:
                        text.append(step.text)
                        yield _sse({"text": step.text})
                    if step.finish_reason is not None:
                        done = {"text": "".join(text).strip(), "model": served}
                        done.update(tokens=step.tokens, finish_reason=step.finish_reason)
                        yield _sse(done, event="done")

        return StreamingResponse(events(), media_type="text/event-stream")
