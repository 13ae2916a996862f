"""What readiness, the catalog and the metrics say about engine workers.

Only an engine client made of worker processes (:class:`framewire.engine.api.WorkerView`)
has workers; for an in-process engine these add nothing. /ready and the catalog name
workers by label (device or id) and never show their addresses; /metrics (meant for a
private network) adds the address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from framewire.engine.api import EngineClient, WorkerStatus, WorkerView

#: Every state a worker can be in, so each state series exists (0 or 1) from the start.
STATES = ("connecting", "starting", "ready", "restarting", "draining", "lost", "refused")


def statuses(engine: EngineClient) -> list[WorkerStatus] | None:
    """The engine's workers, or None for an engine without any."""
    return engine.worker_status() if isinstance(engine, WorkerView) else None


def _public(status: WorkerStatus) -> dict[str, Any]:
    return {
        "worker": status.label,
        "device": status.device,
        "state": status.state,
        "apps": list(status.apps),
        "sessions": status.sessions_total,
    }


def readiness(engine: EngineClient) -> dict[str, Any]:
    """Extra fields of the /ready body: each worker and the apps no ready worker serves."""
    found = statuses(engine)
    if found is None:
        return {}
    served = {app for s in found if s.state == "ready" for app in s.apps}
    return {
        "workers": [_public(s) for s in found],
        "unserved_apps": [app.app_id for app in engine.registry if app.app_id not in served],
    }


def for_app(engine: EngineClient, app_id: str) -> list[dict[str, Any]] | None:
    """The catalog's ``workers`` of one app (None for an engine without workers)."""
    found = statuses(engine)
    if found is None:
        return None
    return [_public(s) for s in found if app_id in s.apps]


class WorkerCollector(Collector):
    """Per-worker series, read from the engine at each scrape."""

    def __init__(self, source: Callable[[], list[WorkerStatus]]) -> None:
        self.source = source

    def collect(self) -> Iterator[Any]:
        found = self.source()
        up = GaugeMetricFamily(
            "framewire_worker_up", "1 when the engine worker is ready for new work", labels=["worker", "address"]
        )
        state = GaugeMetricFamily(
            "framewire_worker_state", "1 for the engine worker's current state", labels=["worker", "state"]
        )
        sessions = GaugeMetricFamily(
            "framewire_worker_sessions", "Realtime sessions this edge has on the worker", labels=["worker"]
        )
        sessions_all = GaugeMetricFamily(
            "framewire_worker_sessions_all", "Realtime sessions on the worker from every edge", labels=["worker"]
        )
        requests = GaugeMetricFamily(
            "framewire_worker_requests", "Requests this edge has queued or running on the worker", labels=["worker"]
        )
        fill = GaugeMetricFamily(
            "framewire_worker_batch_fill",
            "Recent mean batch size over the maximum batch size",
            labels=["worker", "endpoint"],
        )
        size = GaugeMetricFamily("framewire_worker_batch_size", "Recent mean batch size", labels=["worker", "endpoint"])
        delay = GaugeMetricFamily(
            "framewire_worker_queue_delay_seconds",
            "Recent mean wait of a batch's inputs in the worker's scheduler",
            labels=["worker", "endpoint"],
        )
        rtt = GaugeMetricFamily(
            "framewire_worker_link_rtt_seconds", "Last heartbeat round trip to the worker", labels=["worker"]
        )
        failovers = CounterMetricFamily(
            "framewire_worker_failovers",
            "Times the worker was lost while it held this edge's sessions or requests",
            labels=["worker"],
        )
        for s in found:
            up.add_metric([s.label, s.name], 1.0 if s.state == "ready" else 0.0)
            for name in STATES:
                state.add_metric([s.label, name], 1.0 if s.state == name else 0.0)
            sessions.add_metric([s.label], s.sessions)
            sessions_all.add_metric([s.label], s.sessions_total)
            requests.add_metric([s.label], s.requests)
            for endpoint, value in s.batch_fill.items():
                fill.add_metric([s.label, endpoint], value)
            for endpoint, value in s.batch_size.items():
                size.add_metric([s.label, endpoint], value)
            for endpoint, value in s.queue_ms.items():
                delay.add_metric([s.label, endpoint], value / 1000.0)
            if s.rtt_ms is not None:
                rtt.add_metric([s.label], s.rtt_ms / 1000.0)
            failovers.add_metric([s.label], s.failovers)
        yield from (up, state, sessions, sessions_all, requests, fill, size, delay, rtt, failovers)
