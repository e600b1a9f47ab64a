"""Server metrics in the Prometheus text exposition format (version 0.0.4), without a client lib.

Counters and histograms are kept per server instance (no module-level state) and guarded by a
lock, since the batch worker thread records batch sizes while the event loop records requests.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Sequence

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Histogram:
    """Cumulative-bucket histogram, as Prometheus expects."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, running = [], 0
        sep = "," if labels else ""
        for bound, count in zip((*self.buckets, float("inf")), self.counts):
            running += count
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        braces = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{braces} {self.total:.6f}")
        out.append(f"{name}_count{braces} {self.n}")
        return out


class ServerMetrics:
    """Requests, latency, batch sizes, errors and model swaps of one server."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batch_size = Histogram(BATCH_BUCKETS)
        self.batch_seconds = Histogram(LATENCY_BUCKETS_S)
        self.inputs_total = 0
        self.generated_tokens_total = 0
        self.swaps_total = 0
        self.model_version = 0

    def record_request(self, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(path, status)] += 1
            self.latency.setdefault(path, Histogram(LATENCY_BUCKETS_S)).observe(seconds)

    def record_error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] += 1

    def record_batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self.batch_size.observe(size)
            self.batch_seconds.observe(seconds)
            self.inputs_total += size

    def record_tokens(self, n: int) -> None:
        with self._lock:
            self.generated_tokens_total += n

    def record_swap(self, version: int) -> None:
        with self._lock:
            self.swaps_total += 1
            self.model_version = version

    def render(self, queued_inputs: int, active_streams: int = 0) -> str:
        """The exposition text for ``GET /metrics``."""
        with self._lock:
            lines = [
                "# HELP textloop_requests_total HTTP requests by path and status code.",
                "# TYPE textloop_requests_total counter",
            ]
            for (path, status), n in sorted(self.requests.items()):
                lines.append(f'textloop_requests_total{{path="{path}",code="{status}"}} {n}')
            lines += [
                "# HELP textloop_request_duration_seconds Request latency, arrival to response.",
                "# TYPE textloop_request_duration_seconds histogram",
            ]
            for path, hist in sorted(self.latency.items()):
                lines += hist.lines("textloop_request_duration_seconds", f'path="{path}"')
            lines += [
                "# HELP textloop_errors_total Failed requests by kind.",
                "# TYPE textloop_errors_total counter",
            ]
            for kind, n in sorted(self.errors.items()):
                lines.append(f'textloop_errors_total{{kind="{kind}"}} {n}')
            lines += [
                "# HELP textloop_batch_size Inputs per model forward batch.",
                "# TYPE textloop_batch_size histogram",
                *self.batch_size.lines("textloop_batch_size"),
                "# HELP textloop_batch_duration_seconds Time of one batch on the worker.",
                "# TYPE textloop_batch_duration_seconds histogram",
                *self.batch_seconds.lines("textloop_batch_duration_seconds"),
                "# HELP textloop_inputs_total Texts predicted.",
                "# TYPE textloop_inputs_total counter",
                f"textloop_inputs_total {self.inputs_total}",
                "# HELP textloop_queued_inputs Texts waiting for the worker.",
                "# TYPE textloop_queued_inputs gauge",
                f"textloop_queued_inputs {queued_inputs}",
                "# HELP textloop_generated_tokens_total Tokens generated (whole and streamed).",
                "# TYPE textloop_generated_tokens_total counter",
                f"textloop_generated_tokens_total {self.generated_tokens_total}",
                "# HELP textloop_active_streams Answers being streamed to a client now.",
                "# TYPE textloop_active_streams gauge",
                f"textloop_active_streams {active_streams}",
                "# HELP textloop_model_swaps_total Hot swaps to a new model version.",
                "# TYPE textloop_model_swaps_total counter",
                f"textloop_model_swaps_total {self.swaps_total}",
                "# HELP textloop_model_version Version of the model being served.",
                "# TYPE textloop_model_version gauge",
                f"textloop_model_version {self.model_version}",
            ]
        return "\n".join(lines) + "\n"
