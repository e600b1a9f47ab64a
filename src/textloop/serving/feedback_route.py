"""``POST /v1/feedback``: a labelled example for retraining, durably written before the answer.

Request: ``{"label": "...", "text": "...", "prediction_id": "..."}`` (text or prediction_id).
Response (201): ``{"id": 17, "model": "reviews", "new_label": false}``. The label is checked by
``continual.store.check_label`` (1-100 characters, no control or zero-width characters, no
``<`` ``>``); a label the model does not know is accepted, since class-incremental updates learn
new labels, and ``new_label`` says so. The text meets the limits of a ``/v1/predict`` text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from textloop.artifacts.feedback import FeedbackStore, check_label
from textloop.errors import TextloopError
from textloop.serving.http import ApiError, ErrorResponse, check_text


class FeedbackRequest(BaseModel):
    """A labelled example: the right label for a text, tied to a prediction when given."""

    model_config = ConfigDict(extra="forbid")
    label: StrictStr = Field(
        min_length=1,
        description="The correct label: 1-100 characters, no control characters, no '<' '>'. "
        "A label the model does not know is accepted (the next update can learn it).",
    )
    text: StrictStr | None = Field(
        None,
        description="The text, up to the server's max_chars (may be left out if the server "
        "logged it with the prediction).",
    )
    prediction_id: StrictStr | None = Field(
        None, max_length=100, description="Id returned by /v1/predict."
    )


def add_feedback_route(
    app: FastAPI,
    state: Any,
    store: FeedbackStore | None,
    require_api_key: Callable[[Request], None],
) -> None:
    """Register ``POST /v1/feedback`` on ``app`` (always behind the API key).

    Args:
        app: the server's app.
        state: its ``ServerState`` (the model being served, the options).
        store: the feedback store; None answers 404 ``feedback_off``.
        require_api_key: the app's key check.
    """
    opts = state.options

    @app.post(
        "/v1/feedback",
        status_code=201,
        dependencies=[Depends(require_api_key)],
        responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}},
    )
    async def feedback(req: FeedbackRequest) -> JSONResponse:
        """Record the right label for a text; answered only once it is durably written."""
        if store is None:
            raise ApiError(
                404, "feedback_off", "this server has no feedback store; start it with one"
            )
        if state.current is None:
            raise ApiError(503, "not_ready", "no model is loaded yet")
        served = state.current
        if req.text is not None:  # the same limits as a text sent to /v1/predict
            check_text(req.text, "text", opts.max_chars)
        try:
            label = check_label(req.label)
        except TextloopError as exc:
            raise ApiError(422, "invalid_label", str(exc)) from None
        try:
            fid = await asyncio.to_thread(
                store.add_feedback, served.name, label, req.text, req.prediction_id
            )
        except TextloopError as exc:
            raise ApiError(422, "invalid_feedback", str(exc)) from None
        known = served.run.task.state().get("labels", [])
        return JSONResponse(
            {"id": fid, "model": served.name, "new_label": label not in known}, status_code=201
        )
