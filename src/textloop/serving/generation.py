"""Generation on the server: the one path ``/v1/generate`` and the OpenAI routes share.

- **Whole answers** go through the micro-batcher like predictions: concurrent requests with
  the same decoding options are decoded together in one left-padded batch on the worker.
- **Streams** run one token per job on the same single worker thread (``run_exclusive``), so
  concurrent streams take turns token by token between batches, and the model has one user at
  a time. A stream that loses its client stops at the next token: the HTTP layer cancels the
  wait for the token in flight, and the generator (with its KV cache) is dropped.

Both refuse a prompt longer than the model's ``max_seq_len`` when asked to (the OpenAI
routes: 400 ``context_length_exceeded``) instead of cutting its oldest tokens.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterator
from typing import Any

from textloop.errors import TextloopError
from textloop.serving.http import ApiError, batched
from textloop.serving.sources import LoadedModel

GENERATION_TASK = "generation"
_END = None  # what ``next`` returns when a step generator is exhausted


def is_generation(model: LoadedModel) -> bool:
    """Whether the model answers prompts (a decoder), rather than labelling texts (an encoder)."""
    return model.run.task.name == GENERATION_TASK


def prompt_tokens(model: LoadedModel, item: str | list[dict[str, str]], param: str) -> int:
    """How many tokens ``item`` (a prompt or a chat) takes, refused past ``max_seq_len``.

    Raises:
        ApiError: 400 ``context_length_exceeded`` naming both numbers; 422 ``invalid_input``
            when the tokenizer refuses the item.
    """
    task = model.run.task
    try:
        n = len(task.prompt_ids(item, truncate=False))
    except TextloopError as exc:
        raise ApiError(422, "invalid_input", str(exc), param=param) from None
    if n > task.max_seq_len:
        raise ApiError(
            400,
            "context_length_exceeded",
            f"this model's maximum context length is {task.max_seq_len} tokens (the "
            f"max_seq_len it was trained with); the {param} take {n} tokens once the chat "
            "template is applied — shorten them",
            param=param,
        )
    return n


async def answer_whole(state: Any, items: list[Any], options: dict[str, Any]) -> list[Any]:
    """Whole answers to prompts or chats, micro-batched on the worker.

    Returns:
        One ``(LoadedModel, {"text", "tokens", "finish_reason"})`` per item, in order.

    Raises:
        ApiError: 503 ``busy`` when too much is queued; 422 ``invalid_input`` when the task
            refuses an item or option.
    """
    try:
        results = await batched(state.batcher, items, None, options, None, waiting="requests")
    except TextloopError as exc:
        raise ApiError(422, "invalid_input", str(exc)) from None
    state.metrics.record_tokens(sum(out["tokens"] for _, out in results))
    return results


class TokenStream:
    """One streamed answer: steps taken from the worker one token at a time.

    ``await start()`` computes the first token before any byte of the response is sent, so a
    refused or failing request still gets an HTTP error status; ``steps()`` then yields every
    ``StreamStep`` (the first included) while counting the stream as active in the metrics.
    """

    def __init__(self, state: Any, model: LoadedModel, item: Any, options: dict[str, Any]) -> None:
        self.state, self.model, self.item, self.options = state, model, item, options
        self._steps: Iterator[Any] = iter(())
        self._first: Any = _END

    async def _next(self) -> Any:
        return await self.state.batcher.run_exclusive(next, self._steps, _END)

    async def start(self) -> None:
        """Compute the first token (prompt pass included), within the server's wait limit.

        Raises:
            ApiError: 503 ``busy`` (too many streams), ``timeout`` or ``not_ready``.
        """
        opts = self.state.options
        if self.state.active_streams >= opts.max_queue:
            raise ApiError(
                503, "busy", "too many answers are streaming; retry later", {"Retry-After": "1"}
            )
        run = self.model.run
        try:  # tokenizes the prompt: off the event loop
            self._steps = await asyncio.to_thread(
                run.task.stream_steps, run.model, self.item, **self.options
            )
            self._first = await asyncio.wait_for(self._next(), opts.request_timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(
                503, "timeout", f"no first token within {opts.request_timeout_s:g} s; retry later"
            ) from None
        except RuntimeError:
            if self.state.batcher.running:
                raise  # the model failed: a bug, answered 500 and logged
            raise ApiError(503, "not_ready", "the server is shutting down") from None
        except TextloopError as exc:
            raise ApiError(422, "invalid_input", str(exc)) from None

    async def steps(self) -> AsyncGenerator[Any, None]:
        """Every step, the closing one (with ``finish_reason``) last; stops with its client."""
        state = self.state
        state.active_streams += 1
        try:
            step = self._first
            while step is not _END:
                state.metrics.record_tokens(1 if step.finish_reason is None else 0)
                yield step
                if step.finish_reason is not None:
                    return
                step = await self._next()  # cancelled here when the client goes away
        finally:
            state.active_streams -= 1
