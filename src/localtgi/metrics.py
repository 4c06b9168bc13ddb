"""Prometheus metrics of one localtgi app, named like TGI's (`tgi_*`).

Use one `Metrics` per app (it owns its CollectorRegistry, so apps in one process do not share counts).
Counters are rendered by hand because TGI exposes them without prometheus_client's `_total` suffix;
histograms and gauges come from the registry.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest

from localtgi.errors import LocalTGIError

_SECONDS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TOKENS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0)


@dataclass(frozen=True)
class Timings:
    """Seconds spent on one request, as reported in x-* headers and histograms."""

    total: float
    validation: float
    queue: float
    inference: float

    def per_token(self, generated_tokens: int) -> float:
        return self.inference / max(generated_tokens, 1)


@dataclass
class Clock:
    """Marks the phases of one request for x-* headers and histograms."""

    start: float = field(default_factory=time.perf_counter)
    validated: float | None = None
    first_token: float | None = None

    def timings(self) -> Timings:
        end = time.perf_counter()
        validated = self.validated or self.start
        first = self.first_token or end
        return Timings(
            total=end - self.start,
            validation=validated - self.start,
            queue=first - validated,
            inference=end - first,
        )


def error_label(exc: LocalTGIError) -> str:
    """TGI's `err` label on tgi_request_failure for this error."""
    return {
        "validation": "validation",
        "overloaded": "overloaded",
        "incomplete_generation": "incomplete",
        "template_error": "template",
    }.get(exc.error_type, exc.error_type)


class Metrics:
    """Request counters and latency histograms for `/metrics`."""

    def __init__(self, queue_size: Callable[[], int], batch_size: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        self._count = 0
        self._success = 0
        self._failure: dict[str, int] = {}

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, buckets=buckets, registry=self.registry)

        self.duration = hist("tgi_request_duration", "Total request time (s)", _SECONDS)
        self.validation = hist("tgi_request_validation_duration", "Validation time (s)", _SECONDS)
        self.queue = hist("tgi_request_queue_duration", "Time queued (s)", _SECONDS)
        self.inference = hist("tgi_request_inference_duration", "Inference time (s)", _SECONDS)
        self.per_token = hist("tgi_request_mean_time_per_token_duration", "Mean time per token (s)", _SECONDS)
        self.generated = hist("tgi_request_generated_tokens", "Generated tokens", _TOKENS)
        self.input_length = hist("tgi_request_input_length", "Input tokens", _TOKENS)
        queue = Gauge("tgi_queue_size", "Requests waiting for a batch slot", registry=self.registry)
        queue.set_function(lambda: float(queue_size()))
        batch = Gauge("tgi_batch_current_size", "Requests in the batch", registry=self.registry)
        batch.set_function(lambda: float(batch_size()))

    def request(self) -> None:
        """Count a generation request as it arrives."""
        self._count += 1

    def failure(self, err: str) -> None:
        """Count a failed request; `err` is TGI's label (validation, overloaded, generation, ...)."""
        self._failure[err] = self._failure.get(err, 0) + 1

    def success(self, timings: Timings, generated_tokens: int, input_length: int) -> None:
        self._success += 1
        self.duration.observe(timings.total)
        self.validation.observe(timings.validation)
        self.queue.observe(timings.queue)
        self.inference.observe(timings.inference)
        self.per_token.observe(timings.per_token(generated_tokens))
        self.generated.observe(generated_tokens)
        self.input_length.observe(input_length)

    def render(self) -> bytes:
        """Prometheus text exposition (format 0.0.4)."""
        lines = [
            "# TYPE tgi_request_count counter",
            f"tgi_request_count {self._count}",
            "# TYPE tgi_request_success counter",
            f"tgi_request_success {self._success}",
            "# TYPE tgi_request_failure counter",
        ]
        lines += [f'tgi_request_failure{{err="{k}"}} {v}' for k, v in sorted(self._failure.items())]
        return ("\n".join(lines) + "\n").encode() + generate_latest(self.registry)
