"""Dynamic micro-batching: concurrent requests share one forward pass on a worker thread.

Requests wait in a queue; a collector takes the first, then keeps taking more until the batch
holds ``max_batch_size`` inputs or ``max_wait_ms`` has passed, and hands the batch to a single
worker thread. While the worker computes, new requests queue up, so under load batches fill
without waiting. The event loop only moves requests around: it never tokenizes or computes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)

# predict(inputs, pairs, options) -> one result per input, in order; inputs are texts, or
# prompts and chats (message lists) for a generation model
PredictFn = Callable[[list[Any], list[str] | None, dict[str, Any]], list[Any]]
T = TypeVar("T")


class QueueFullError(Exception):
    """More inputs are waiting than the server accepts; the client should retry later."""


@dataclass
class _Pending:
    inputs: list[Any]
    pairs: list[str] | None
    key: Hashable
    options: dict[str, Any]
    future: asyncio.Future[list[Any]]
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Group concurrent predict calls into batches run one at a time on a worker thread.

    Args:
        predict: called on the worker thread with the inputs of several requests at once.
        max_batch_size: most inputs in one batch (a larger single request runs alone).
        max_wait_ms: how long the first request of a batch waits for company.
        max_queue: most inputs waiting; beyond it ``submit`` raises ``QueueFullError``.
        on_batch: called with (batch size, seconds) after each batch, for metrics.
    """

    def __init__(
        self,
        predict: PredictFn,
        max_batch_size: int = 32,
        max_wait_ms: float = 2.0,
        max_queue: int = 2048,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_wait_ms < 0 or max_queue < 1:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_ms >= 0")
        self.predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_ms / 1000
        self.max_queue = max_queue
        self.on_batch = on_batch
        self.queued_inputs = 0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the collector on the running event loop and the worker thread."""
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="textloop-predict")
        self._task = asyncio.create_task(self._collect(), name="textloop-batcher")

    async def stop(self) -> None:
        """Finish the batch in flight, fail what is still queued, and stop the worker."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue is not None and not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(RuntimeError("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(
        self,
        inputs: Sequence[Any],
        pairs: Sequence[str] | None = None,
        options: dict[str, Any] | None = None,
    ) -> list[Any]:
        """Queue one request's inputs and wait for their results (in input order).

        Requests are only batched with others that have the same ``options``.

        Raises:
            QueueFullError: the queue holds ``max_queue`` inputs already.
            RuntimeError: the batcher is not running.
            Exception: whatever ``predict`` raised for this request's batch.
        """
        if self._queue is None or not self.running:
            raise RuntimeError("the batcher is not running")
        if self.queued_inputs + len(inputs) > self.max_queue:
            raise QueueFullError(f"{self.queued_inputs} inputs are already waiting")
        opts = dict(options or {})
        key = (pairs is not None, tuple(sorted(opts.items())))
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        item = _Pending(list(inputs), list(pairs) if pairs is not None else None, key, opts, future)
        self.queued_inputs += len(item.inputs)
        self._queue.put_nowait(item)
        return await future

    async def run_exclusive(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the worker thread, between batches: the model has one user at a time.

        Work that changes the model while it runs (Captum's integrated gradients hooks the
        embedding layer) must never overlap a batch; it queues behind the batch in flight and
        the next batch queues behind it. Keep each call short (one text's explanation), so
        predictions wait at most that long.

        Raises:
            RuntimeError: the batcher is not running.
            Exception: whatever ``fn`` raised.
        """
        if self._executor is None or not self.running:
            raise RuntimeError("the batcher is not running")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def _collect(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        held: list[_Pending] = []  # taken from the queue but with other options than the batch
        while True:
            first = held.pop(0) if held else await self._queue.get()
            batch, size = [first], len(first.inputs)
            deadline = loop.time() + self.max_wait_s
            # take compatible requests: those already held back first, then the queue
            for item in list(held):
                if item.key == first.key and size + len(item.inputs) <= self.max_batch_size:
                    held.remove(item)
                    batch.append(item)
                    size += len(item.inputs)
            while size < self.max_batch_size:
                try:
                    if self._queue.empty():
                        timeout = deadline - loop.time()
                        if timeout <= 0:
                            break
                        item = await asyncio.wait_for(self._queue.get(), timeout)
                    else:
                        item = self._queue.get_nowait()
                except asyncio.TimeoutError:
                    break
                if item.key != first.key or size + len(item.inputs) > self.max_batch_size:
                    held.append(item)
                    if item.key == first.key:
                        break  # full: the next batch starts with it
                    continue
                batch.append(item)
                size += len(item.inputs)
            await self._run(batch, size, loop)

    async def _run(self, batch: list[_Pending], size: int, loop: asyncio.AbstractEventLoop) -> None:
        self.queued_inputs -= size
        live = [b for b in batch if not b.future.done()]  # a client may have gone away
        if not live:
            return
        inputs = [x for b in live for x in b.inputs]
        pairs = [x for b in live for x in b.pairs or []] if live[0].pairs is not None else None
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(
                self._executor, self.predict, inputs, pairs, live[0].options
            )
        except Exception as exc:  # the whole batch failed: each request sees the error
            if len(live) > 1:
                # one bad request must not fail its neighbours: retry each on its own
                for b in live:
                    await self._run([b], 0, loop)
                return
            if not live[0].future.done():
                live[0].future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(inputs), time.perf_counter() - started)
        start = 0
        for b in live:
            end = start + len(b.inputs)
            if not b.future.done():
                b.future.set_result(results[start:end])
            start = end
