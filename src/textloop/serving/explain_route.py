"""``POST /v1/explain``: integrated-gradients word attributions, the same as ``textloop explain``.

Request: ``{"inputs": ["..."], "target": null, "steps": 50, "output": "logit"}``.
Response: ``{"model": {...}, "explanations": [...]}``, one per input, each as
``textloop.evaluation.explain.explain`` returns it (label, score, words with attributions,
completeness); for a NER model, each input's ``entities``, each with its text, label, start,
end, score, words with attributions toward the entity's tags, and completeness
(``textloop.evaluation.explain_spans``). Attributions cost ``steps`` forward and backward
passes per text (per entity for NER), so this route takes at most ``MAX_TEXTS`` texts per
request and runs on a worker thread.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr

from textloop.errors import TextloopError
from textloop.evaluation.explain import DEFAULT_STEPS, explain
from textloop.serving.http import ERROR_RESPONSES, ApiError

MAX_TEXTS = 16


class ExplainRequest(BaseModel):
    """Texts to explain, and how."""

    model_config = ConfigDict(extra="forbid")
    inputs: list[StrictStr] = Field(min_length=1, max_length=MAX_TEXTS)
    target: StrictStr | None = None
    steps: int = Field(DEFAULT_STEPS, ge=2, le=1000)
    output: Literal["logit", "probability"] = "logit"


def add_explain_route(app: FastAPI, state: Any) -> None:
    """Register ``POST /v1/explain`` on ``app``; ``state.current`` is the model being served."""

    @app.post("/v1/explain", responses=ERROR_RESPONSES)
    async def explain_texts(req: ExplainRequest) -> JSONResponse:
        """Word attributions (integrated gradients) toward each text's label, or per entity."""
        model = state.serving_model()
        if getattr(model.run.task, "name", None) not in ("classification", "ner"):
            raise ApiError(
                400,
                "wrong_task",
                "explanations are available for classification and NER models only",
            )
        try:
            out = await asyncio.to_thread(
                explain,
                model.run,
                req.inputs,
                target=req.target,
                steps=req.steps,
                output=req.output,
            )
        except TextloopError as exc:
            raise ApiError(422, "invalid_input", str(exc)) from None
        return JSONResponse(
            {"model": {"name": model.name, "version": model.version}, "explanations": out}
        )
