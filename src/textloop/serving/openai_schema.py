"""Request bodies of the OpenAI-compatible routes, and the checks OpenAI's API implies.

Fields this server honours are declared; any other field must be absent or carry its neutral
value (``null``, ``false``, ``[]``, ``{}``, ``n: 1``, a penalty of 0, ``response_format``
text, ``tool_choice`` none). Anything else (tools, logprobs, ``n`` > 1, ``logit_bias``, ...)
is a 400 ``unsupported_parameter`` naming the field: a client must never believe a parameter
took effect when it did not. ``top_k`` and ``repetition_penalty`` are honoured as extensions
(the names vLLM takes in ``extra_body``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

from textloop.serving.http import ApiError, check_text

MAX_MESSAGES = 200
# values of fields this server does not implement that ask for nothing (OpenAI's defaults)
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0, 0.0),
    "presence_penalty": (0, 0.0),
    "top_logprobs": (0,),
    "best_of": (1,),
    "response_format": ({"type": "text"},),
    "tool_choice": ("none",),
}
Number = StrictFloat | StrictInt  # JSON numbers; a string "0.5" or true is not a number


def _neutral(name: str, value: Any) -> bool:
    if value is None or value is False or (isinstance(value, (list, dict, str)) and not value):
        return True
    return any(type(value) is type(v) and value == v for v in _NEUTRAL.get(name, ()))


def reject_unsupported(extra: dict[str, Any] | None, where: str = "") -> None:
    """Refuse every field of ``extra`` (the undeclared ones) that asks for something.

    Raises:
        ApiError: 400 ``unsupported_parameter`` naming the first such field.
    """
    for name, value in (extra or {}).items():
        if not _neutral(name, value):
            raise ApiError(
                400,
                "unsupported_parameter",
                f"'{where}{name}' is not supported by this server (textloop answers with text "
                "only: no tools, logprobs, logit_bias, penalties other than "
                "repetition_penalty, or response formats); leave it out",
                param=f"{where}{name}",
            )


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: StrictBool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")  # checked by reject_unsupported, never ignored
    model: StrictStr = Field(description="The served model's name (GET /v1/models).")
    user: StrictStr | None = Field(None, description="An end-user id; it changes nothing.")


class _Decoding(_Request):
    """The decoding fields chat and completions share; unset ones take the run's defaults."""

    max_tokens: StrictInt | None = Field(None, ge=1, le=4096)
    temperature: Number | None = Field(None, ge=0.0, le=2.0)
    top_p: Number | None = Field(None, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(None, ge=0, description="Extension (vLLM's name).")
    repetition_penalty: Number | None = Field(None, gt=0.0, le=100.0)
    stop: StrictStr | list[StrictStr] | None = Field(None)
    seed: StrictInt | None = Field(None, ge=0)
    n: StrictInt = Field(1, ge=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None

    def check(self) -> None:
        """Refuse what this server does not do (``n`` > 1, undeclared fields, bad stop)."""
        if self.n != 1:
            raise ApiError(
                400,
                "unsupported_parameter",
                f"n is {self.n}; this server returns one choice per request (n = 1) — send "
                "n requests, with different seeds if sampling",
                param="n",
            )
        if self.stream_options is not None and not self.stream:
            raise ApiError(
                400,
                "invalid_value",
                "stream_options is only allowed with stream: true",
                param="stream_options",
            )
        stops = self.stop_list()
        if len(stops) > 16 or any(not s for s in stops):
            raise ApiError(
                400, "invalid_value", "stop takes 1 to 16 non-empty strings", param="stop"
            )
        reject_unsupported(self.model_extra)

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def decoding(self, max_tokens: int | None) -> dict[str, Any]:
        """Options for the task's decoder; what is unset keeps the run's default."""
        options: dict[str, Any] = {
            "max_new_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }
        if self.stop is not None:
            options["stop"] = tuple(self.stop_list())  # a tuple: batch keys compare options
        return {k: v for k, v in options.items() if v is not None}

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Decoding):
    """``POST /v1/chat/completions``: a chat answered through the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: StrictInt | None = Field(None, ge=1, le=4096)

    def chat(self, max_chars: int) -> list[dict[str, str]]:
        """The messages as the task takes them (``developer`` counts as ``system``).

        Raises:
            ApiError: 400 for tool or function messages, non-text content parts, a last
                message not from the user; the text limits of every route (``check_text``).
        """
        out = []
        for i, m in enumerate(self.messages):
            where = f"messages[{i}]"
            reject_unsupported(m.model_extra, f"{where}.")
            if m.role in ("tool", "function"):
                raise ApiError(
                    400,
                    "unsupported_parameter",
                    f"{where} has role '{m.role}'; this server has no tools — send system, "
                    "user and assistant messages",
                    param=f"{where}.role",
                )
            text = _content_text(m.content, f"{where}.content")
            check_text(text, f"{where}.content", max_chars)
            out.append({"role": "system" if m.role == "developer" else m.role, "content": text})
        if out[-1]["role"] != "user":
            raise ApiError(
                400,
                "invalid_value",
                "the last message must be from the user: the model answers it "
                f"(messages[{len(out) - 1}] is from the {out[-1]['role']})",
                param="messages",
            )
        return out

    def token_limit(self) -> int | None:
        """``max_completion_tokens`` (the current name) or ``max_tokens`` (the older one)."""
        a, b = self.max_completion_tokens, self.max_tokens
        if a is not None and b is not None and a != b:
            raise ApiError(
                400,
                "invalid_value",
                f"max_tokens ({b}) and max_completion_tokens ({a}) disagree; send one",
                param="max_tokens",
            )
        return a if a is not None else b


def _content_text(content: str | list[dict[str, Any]] | None, where: str) -> str:
    """A message's text: a string, or the text parts of a content list joined by newlines."""
    if content is None:
        raise ApiError(400, "invalid_value", f"{where} is missing; send the text", param=where)
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise ApiError(
                400,
                "unsupported_parameter",
                f"{where}[{j}] is a {part.get('type')!r} part; this server reads text only "
                "(parts like {'type': 'text', 'text': '...'})",
                param=f"{where}[{j}]",
            )
        texts.append(part["text"])
    return "\n".join(texts)


class CompletionRequest(_Decoding):
    """``POST /v1/completions``: prompts answered as ``/v1/generate`` answers a prompt."""

    prompt: StrictStr | list[Any]

    def prompts(self, max_texts: int, max_chars: int) -> list[str]:
        """The prompts (one string or a list of them), within the server's limits.

        Raises:
            ApiError: 400 for token-id prompts, an empty list, more than ``max_texts``
                prompts, or a list with ``stream``; the text checks of every route.
        """
        items = [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)
        if not items or not all(isinstance(p, str) for p in items):
            raise ApiError(
                400,
                "invalid_value",
                "prompt must be a string or a list of strings (token-id prompts are not "
                "supported: the server applies the model's own template to text)",
                param="prompt",
            )
        if len(items) > max_texts:
            raise ApiError(
                400,
                "too_many_texts",
                f"{len(items)} prompts in one request; the limit is {max_texts}",
                param="prompt",
            )
        if self.stream and len(items) > 1:
            raise ApiError(
                400, "unsupported_parameter", "stream one prompt per request", param="prompt"
            )
        for i, text in enumerate(items):
            check_text(text, f"prompt[{i}]" if len(items) > 1 else "prompt", max_chars)
        return items


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings``: unit-length mean-pooled vectors from an encoder."""

    input: StrictStr | list[Any]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, ge=1)

    def texts(self, max_texts: int, max_chars: int) -> list[str]:
        """The input texts, within the server's limits (token-id inputs are refused)."""
        items = [self.input] if isinstance(self.input, str) else list(self.input)
        if not items or not all(isinstance(t, str) for t in items):
            raise ApiError(
                400,
                "invalid_value",
                "input must be a string or a non-empty list of strings (token-id inputs are "
                "not supported)",
                param="input",
            )
        if len(items) > max_texts:
            raise ApiError(
                400,
                "too_many_texts",
                f"{len(items)} inputs in one request; the limit is {max_texts} — split it",
                param="input",
            )
        for i, text in enumerate(items):
            check_text(text, f"input[{i}]", max_chars)
        reject_unsupported(self.model_extra)
        return items
