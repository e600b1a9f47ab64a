"""The app's exception handlers: every error is JSON, in the shape its route's clients read.

The native routes answer ``{"error": {"code", "message", "details"?}}``; the OpenAI-compatible
routes (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/models``)
answer OpenAI's ``{"error": {"message", "type", "param", "code"}}`` so that OpenAI clients raise
their own typed errors (``BadRequestError``, ``NotFoundError`` ...) with the message. Whichever
shape, the message is one line and a bug is a 500 without a traceback (the log has it).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from textloop.serving.http import (
    ApiError,
    error_for_path,
    not_utf8_message,
    validation_message,
)

log = logging.getLogger("textloop.serving.app")


def add_error_handlers(app: FastAPI) -> None:
    """Answer ``ApiError``, malformed requests, HTTP-layer refusals and crashes as JSON."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_for_path(
            request.url.path,
            exc.status,
            exc.code,
            exc.message,
            headers=exc.headers,
            param=exc.param,
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        path, errors = request.url.path, list(exc.errors())
        message, details = validation_message(errors, path, request.headers.get("content-type"))
        whole_body = errors[0].get("type") == "json_invalid" or not details[0]["loc"]
        param = None if whole_body else ".".join(details[0]["loc"])  # the field, OpenAI's way
        return error_for_path(path, 422, "invalid_request", message, details, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        if exc.status_code == 400 and str(exc.detail).startswith("There was an error parsing"):
            # FastAPI's answer to a body it cannot decode (not UTF-8): a malformed request
            return error_for_path(
                path,
                422,
                "invalid_request",
                not_utf8_message(path, request.headers.get("content-type")),
            )
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_for_path(
            path,
            exc.status_code,
            codes.get(exc.status_code, "http_error"),
            f"{exc.detail}: {request.method} {path}",
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error_for_path(
            request.url.path,
            500,
            "internal_error",
            "the server failed on this request; see its log",
        )
