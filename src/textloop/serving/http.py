"""The HTTP surface of the server: request/response schema, JSON errors, text limits and the
micro-batcher's 503s (the middleware is in ``serving/middleware.py``)."""

from __future__ import annotations

import asyncio
import hmac
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from textloop.data.visible import has_visible_text
from textloop.serving.sources import LoadedModel, ServeOptions

_UNION_TAGS = {"list[str]", "str", "int"}
KNOWN_PATHS = {
    "/v1/predict",
    "/v1/model",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/admin/reload",
    "/v1/feedback",
    "/v1/explain",
    "/v1/generate",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/models",
}
# interfaces only this machine reaches: anywhere else needs an API key (serve, label)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
# routes that speak OpenAI's API: their errors take OpenAI's shape (``openai_error_response``)
OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/models")


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


async def batched(
    batcher: Any,
    items: list[Any],
    pairs: list[str] | None,
    options: dict[str, Any],
    timeout_s: float | None,
    waiting: str = "texts",
    answer: str = "answer",
) -> list[Any]:
    """Submit to the micro-batcher and wait; a full queue or a timeout is a 503 to retry.

    Raises:
        ApiError: 503 ``busy`` (too many ``waiting`` queued) or ``timeout`` (no ``answer``
            within ``timeout_s``; None waits as long as it takes).
        TextloopError: the task refused an item; the route says how that answers.
    """
    from textloop.serving.batcher import QueueFullError

    try:
        call = batcher.submit(items, pairs, options)
        return list(await (asyncio.wait_for(call, timeout_s) if timeout_s else call))
    except QueueFullError:
        raise ApiError(
            503, "busy", f"too many {waiting} are waiting; retry later", {"Retry-After": "1"}
        ) from None
    except asyncio.TimeoutError:
        raise ApiError(503, "timeout", f"no {answer} within {timeout_s:g} s; retry later") from None


class ApiError(Exception):
    """An error answered as JSON with an HTTP status (``param``: the request field at fault)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers
        self.param = param


def key_matches(headers: Any, key: str) -> bool:
    """Whether the request carries ``key`` as ``Authorization: Bearer KEY`` (what OpenAI
    clients send) or ``X-API-Key: KEY``; compared in constant time."""
    auth = headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else headers.get("x-api-key")
    return bool(given) and hmac.compare_digest(given.encode(), key.encode())


def error_response(
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


def is_openai_path(path: str) -> bool:
    """Whether ``path`` is one of the OpenAI-compatible routes (``/v1/models/{id}`` too)."""
    return path in OPENAI_PATHS or path.startswith("/v1/models/")


def openai_error_response(
    status: int,
    code: str,
    message: str,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``.

    OpenAI answers a request it cannot take with 400, so the 413 and 422 of the native routes
    become 400 here (except a body over the size limit, refused before it is read: 413); the
    ``type`` is ``invalid_request_error`` for 4xx and ``server_error`` for 5xx, as OpenAI's.
    """
    if status in (413, 422) and code != "body_too_large":
        status = 400
    kind = "server_error" if status >= 500 else "invalid_request_error"
    body = {"message": message, "type": kind, "param": param, "code": code}
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def error_for_path(
    path: str,
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> JSONResponse:
    """The error in the shape ``path``'s clients read: OpenAI's on its routes, else textloop's."""
    if is_openai_path(path):
        return openai_error_response(status, code, message, param, headers)
    return error_response(status, code, message, details, headers)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorResponse, "description": d}
    for s, d in {
        413: "Body, number of texts or a text too large.",
        422: "Malformed request.",
        503: "Busy, shutting down or timed out.",
    }.items()
}


# what each JSON route takes, for the messages of malformed requests
ROUTE_EXAMPLES = {
    "/v1/predict": '{"inputs": ["a text", ...]}',
    "/v1/explain": '{"inputs": ["a text", ...], "steps": 50}',
    "/v1/feedback": '{"label": "a label", "text": "a text"}',
    "/v1/generate": '{"prompt": "a question"}',
    "/v1/chat/completions": '{"model": "NAME", "messages": [{"role": "user", "content": "hi"}]}',
    "/v1/completions": '{"model": "NAME", "prompt": "a question"}',
    "/v1/embeddings": '{"model": "NAME", "input": ["a text", ...]}',
}


def is_json_content_type(content_type: str | None) -> bool:
    """``application/json`` or a ``+json`` type, any parameters."""
    media = (content_type or "").split(";")[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


def expected_body(path: str) -> str:
    """What ``path`` takes, in one phrase."""
    example = ROUTE_EXAMPLES.get(path, "a JSON object")
    return f"POST {path} takes a JSON body like {example}, sent with content-type: application/json"


def not_utf8_message(path: str, content_type: str | None) -> str:
    """The message for a body FastAPI could not decode (not UTF-8, or another charset)."""
    declared = f" (content-type: {content_type})" if content_type else ""
    return (
        f"the request body is not valid UTF-8{declared}; JSON must be sent as UTF-8 "
        f"(RFC 8259), other charsets are not accepted — {expected_body(path)}"
    )


def validation_message(
    errors: list[dict[str, Any]], path: str = "", content_type: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """One message for pydantic's errors, naming what ``path`` takes when the body is wrong."""
    details: list[dict[str, Any]] = []
    for e in errors:
        # drop "body" and union-branch tags ("list[str]", "str") pydantic puts in the location
        loc = [str(x) for x in e.get("loc", ()) if x != "body" and str(x) not in _UNION_TAGS]
        detail = {"loc": loc, "msg": str(e.get("msg", ""))}
        if detail not in details:
            details.append(detail)
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        problem = f"the request body is not valid JSON ({first.get('msg')})"
        return f"{problem}; {expected_body(path)}", details
    if tuple(first.get("loc", ())) == ("body",):
        if not is_json_content_type(content_type):
            found = f"content-type {content_type!r}" if content_type else "no content-type"
            return f"{expected_body(path)}; this request has {found}", details
        return f"the request body must be a JSON object: {expected_body(path)}", details
    parts = [f"{'.'.join(d['loc']) or 'body'}: {d['msg']}" for d in details[:5]]
    return "invalid request: " + "; ".join(parts), details


def check_texts(req: PredictRequest, model: LoadedModel, opts: ServeOptions) -> list[str]:
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
            check_text(text, f"{field_name}[{i}]", opts.max_chars)
    return texts


def check_text(text: str, where: str, max_chars: int) -> None:
    """The checks every text a route takes passes: length, visible content, valid Unicode.

    Args:
        text: the text.
        where: its place in the request, for the message (``inputs[3]``).
        max_chars: the server's ``max_chars``.

    Raises:
        ApiError: 413 ``text_too_long``; 422 ``empty_text`` (nothing visible: only whitespace,
            control, format or separator characters); 422 ``invalid_text`` (a lone surrogate).
    """
    if len(text) > max_chars:
        raise ApiError(
            413,
            "text_too_long",
            f"{where} has {len(text)} characters; the limit is {max_chars}",
        )
    if not has_visible_text(text):
        raise ApiError(
            422,
            "empty_text",
            f"{where} has no visible characters (empty, or only whitespace, control or "
            "zero-width characters); send the text itself",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            422, "invalid_text", f"{where} is not valid Unicode (lone surrogate)"
        ) from None
