"""Prometheus metrics: ``GET /metrics`` in the text exposition format.

Names follow Prometheus conventions: a ``framewire_`` prefix, base units (seconds),
``_total`` on counters. Every app's metrics live in its own registry (no process
globals), so several apps in one process (tests) do not share counters.

``/metrics`` needs no key: it is what a Prometheus server scrapes, it carries counts and
latencies but no inputs, outputs, secrets or key ids, and the usual deployment keeps it
on a private network. Put it behind the proxy's own access rules when the listener is
public.

| metric | type | labels |
| --- | --- | --- |
| ``framewire_ready``, ``framewire_draining`` | gauge | |
| ``framewire_realtime_sessions_open`` | gauge | app |
| ``framewire_realtime_sessions_opened_total`` | counter | app |
| ``framewire_realtime_sessions_refused_total`` | counter | code |
| ``framewire_realtime_frames_received_total`` | counter | app |
| ``framewire_realtime_frames_sent_total`` | counter | app |
| ``framewire_realtime_frames_dropped_total`` | counter | app, reason (superseded, closed, outbox) |
| ``framewire_realtime_errors_total`` | counter | app, code (the ``x-fal-error`` code) |
| ``framewire_realtime_degraded_frames_total`` | counter | app, level (the app's degradation level, 1..N) |
| ``framewire_realtime_skipped_frames_total`` | counter | app, kind (exact, similar: answered with the last output) |
| ``framewire_realtime_target_frames_total`` | counter | app, outcome (met, missed: frames with a latency target) |
| ``framewire_requests_total`` | counter | app, surface, outcome (ok, error) |
| ``framewire_request_duration_seconds`` | histogram | app, surface (realtime: frame in → output out) |
| ``framewire_rate_limited_total`` | counter | kind (requests, frames, sessions) |
| ``framewire_http_responses_total`` | counter | status (HTTP status code) |
| ``framewire_limits_refused_total`` | counter | limit (header_too_large, uri_too_long, header_timeout, idle, ...) |
| ``framewire_engine_batches_total`` | counter | endpoint, outcome (ok, failed) |
| ``framewire_engine_batch_size`` | histogram | endpoint |
| ``framewire_engine_inference_seconds`` | histogram | endpoint (one observation per batch) |
| ``framewire_engine_queue_seconds`` | histogram | endpoint (mean wait of a batch's inputs) |
| ``framewire_queue_jobs`` | gauge | app (jobs waiting in the durable queue) |
| ``framewire_usage_pending`` | gauge | (usage tallies not yet written) |
| ``framewire_worker_up`` | gauge | worker, address (with engine workers) |
| ``framewire_worker_state`` | gauge | worker, state (1 for the current one) |
| ``framewire_worker_sessions``, ``_sessions_all``, ``_requests`` | gauge | worker |
| ``framewire_worker_batch_fill``, ``_batch_size``, ``_queue_delay_seconds`` | gauge | worker, endpoint |
| ``framewire_worker_link_rtt_seconds`` | gauge | worker |
| ``framewire_worker_failovers_total`` | counter | worker |
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from framewire.engine.api import EngineClient
from framewire.gateway.platform.workers import WorkerCollector, statuses

log = logging.getLogger("framewire.metrics")

# The ``*_created`` timestamp series double the exposition for no use in the text format.
disable_created_metrics()  # type: ignore[no-untyped-call]

CONTENT_TYPE = CONTENT_TYPE_LATEST
#: Latency buckets in seconds: a realtime frame is tens of ms, a diffusion request seconds.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics:
    """Every instrument of one server, in its own registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.ready = Gauge("framewire_ready", "1 when the engine is warm and the server is not draining", registry=r)
        self.draining = Gauge("framewire_draining", "1 while the server drains before stopping", registry=r)
        self.sessions_open = Gauge("framewire_realtime_sessions_open", "Open realtime sessions", ["app"], registry=r)
        self.sessions_opened = Counter(
            "framewire_realtime_sessions_opened_total", "Realtime sessions accepted", ["app"], registry=r
        )
        self.sessions_refused = Counter(
            "framewire_realtime_sessions_refused_total",
            "Realtime sessions refused, by error code",
            ["code"],
            registry=r,
        )
        self.frames_received = Counter(
            "framewire_realtime_frames_received_total", "Realtime input frames received", ["app"], registry=r
        )
        self.frames_sent = Counter(
            "framewire_realtime_frames_sent_total", "Realtime outputs produced for the client", ["app"], registry=r
        )
        self.frames_dropped = Counter(
            "framewire_realtime_frames_dropped_total",
            "Realtime frames or outputs dropped: superseded by a newer frame, pending at close, or unread outputs",
            ["app", "reason"],
            registry=r,
        )
        self.realtime_errors = Counter(
            "framewire_realtime_errors_total", "x-fal-error messages sent, by code", ["app", "code"], registry=r
        )
        self.degraded_frames = Counter(
            "framewire_realtime_degraded_frames_total",
            "Realtime frames run at a degradation level under load (fewer steps, a smaller size)",
            ["app", "level"],
            registry=r,
        )
        self.skipped_frames = Counter(
            "framewire_realtime_skipped_frames_total",
            "Realtime frames answered with the session's last output without running (unchanged input)",
            ["app", "kind"],
            registry=r,
        )
        self.target_frames = Counter(
            "framewire_realtime_target_frames_total",
            "Realtime frames of sessions with a latency target, by whether the engine met it",
            ["app", "outcome"],
            registry=r,
        )
        self.requests = Counter(
            "framewire_requests_total",
            "Requests and realtime frames finished, by surface and outcome",
            ["app", "surface", "outcome"],
            registry=r,
        )
        self.request_duration = Histogram(
            "framewire_request_duration_seconds",
            "End-to-end latency: realtime frame received to output ready; HTTP request to answer; queue submit to done",
            ["app", "surface"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.rate_limited = Counter(
            "framewire_rate_limited_total", "Calls refused by a per-key limit", ["kind"], registry=r
        )
        self.http_responses = Counter(
            "framewire_http_responses_total", "HTTP responses by status code", ["status"], registry=r
        )
        self.limits_refused = Counter(
            "framewire_limits_refused_total",
            "Connections the listener refused or closed for a limit (request head size or deadline, connection cap)",
            ["limit"],
            registry=r,
        )
        self.batches = Counter(
            "framewire_engine_batches_total", "Engine batches run", ["endpoint", "outcome"], registry=r
        )
        self.batch_size = Histogram(
            "framewire_engine_batch_size",
            "Inputs per engine batch",
            ["endpoint"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "framewire_engine_inference_seconds",
            "Engine time per batch",
            ["endpoint"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.engine_queue = Histogram(
            "framewire_engine_queue_seconds",
            "Mean time a batch's inputs waited in the engine's scheduler",
            ["endpoint"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_jobs = Gauge("framewire_queue_jobs", "Jobs waiting in the durable queue", ["app"], registry=r)
        self.usage_pending = Gauge("framewire_usage_pending", "Usage tallies not yet written to the store", registry=r)
        self._responses: dict[int, Any] = {}

    def watch_workers(self, engine: EngineClient) -> None:
        """Export per-worker series when ``engine`` is made of worker processes."""
        if statuses(engine) is not None:
            self.registry.register(WorkerCollector(engine.worker_status))  # type: ignore[attr-defined]

    def on_batch(self, record: Any) -> None:
        """The engine's ``on_batch`` observer (``framewire.engine.host.BatchRecord``); runs on an engine thread.

        prometheus-client instruments are thread-safe. Never raises: a metrics bug must not
        take an engine worker down.
        """
        try:
            endpoint = record.endpoint_key
            self.batches.labels(endpoint, "failed" if record.failed else "ok").inc()
            self.batch_size.labels(endpoint).observe(record.size)
            self.inference.labels(endpoint).observe(record.inference_ms / 1000.0)
            self.engine_queue.labels(endpoint).observe(record.queue_ms / 1000.0)
        except Exception:
            log.exception("could not record an engine batch")

    def count_response(self, status: int) -> None:
        """One HTTP response (label children cached: this runs on every request)."""
        child = self._responses.get(status)
        if child is None:
            child = self._responses[status] = self.http_responses.labels(str(status))
        child.inc()

    def refused(self, limit: str) -> None:
        """One connection the listener refused or closed (``limit`` names which limit)."""
        self.limits_refused.labels(limit).inc()

    def set_queue_depths(self, lengths: dict[str, int], apps: list[str]) -> None:
        """Queue depth per app; apps with nothing queued read 0 rather than vanish."""
        for app in apps:
            self.queue_jobs.labels(app).set(lengths.get(app, 0))
        for app, length in lengths.items():
            if app not in apps:
                self.queue_jobs.labels(app).set(length)

    def render(self) -> bytes:
        """The text exposition (CPU work: call it from a thread)."""
        return generate_latest(self.registry)
