"""Schemathesis over the OpenAPI documents a running server publishes, as a library.

:func:`check_documents` loads an app's document from the run listener and from the queue
listener and runs Schemathesis' phases (examples, coverage, fuzzing, stateful over the
queue's links) with every default check, bounded in examples and seconds, and reports the
run's size and each failure. Beyond the checks, a report counts the statuses answered to
schema-valid cases and names any refused for its data (:data:`DATA_REFUSALS`) where the
operation's own state answers (:data:`QUEUE_STATE_ANSWERS`) do not explain it.

What a schema cannot say is supplied the way a real client would: a file field's text
(a ``data:`` URI or an http(s) URL, which is all its schema can ask for) is swapped for
a real JPEG in the same form, since an app reading an image needs one that decodes and a
URL must name something the server can fetch; every other value is sent as generated.
Every other POST run asks for msgpack (``Accept: application/msgpack``), so the msgpack
answers are validated too, by the deserializer below.

The realtime WebSocket operations (tag ``realtime``) are left out: Schemathesis speaks
HTTP only, and a ``101`` leaves a WebSocket on its connection pool.
"""

from __future__ import annotations

import base64
import collections
import concurrent.futures
import contextlib
import http.server
import io
import itertools
import json
import multiprocessing
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import msgpack
import schemathesis
from PIL import Image
from schemathesis.engine import events, from_schema
from schemathesis.generation import GenerationMode

from framewire.engine.api import FILE_TEXT_PATTERN

_FILE_TEXT = re.compile(FILE_TEXT_PATTERN)


@schemathesis.deserializer("application/msgpack")
def _msgpack(ctx: schemathesis.DeserializationContext, response: schemathesis.Response) -> Any:
    """A msgpack body as JSON values: ``bin`` becomes text (Latin-1), which ``format: binary`` names."""
    return _as_text(msgpack.unpackb(response.content, raw=False))


def _as_text(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, dict):
        return {k: _as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_text(v) for v in value]
    return value


@dataclass
class Report:
    """One Schemathesis run: its size and what failed."""

    document: str
    operations: set[str] = field(default_factory=set)
    cases: int = 0
    seconds: float = 0.0
    failures: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: list[str] = field(default_factory=list)
    stop_reason: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    timed_out: bool = False
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    examples: dict[str, str] = field(default_factory=dict)  # a failing request per operation and status
    #: Statuses answered to schema-valid (positive) cases, and one such case refused per operation and status.
    positive: collections.Counter[int] = field(default_factory=collections.Counter)
    refused_positive: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.document}: {len(self.operations)} operations, {self.cases} requests "
            f"({sum(self.positive.values())} schema-valid, {self.accepted_positive} accepted), {self.seconds:.1f} s, "
            f"{sum(self.failures.values())} failures, {len(self.errors)} errors ({self.stop_reason}; "
            + ", ".join(f"{name} {s:.1f} s" for name, s in self.phases.items() if s > 0.05)
            + ")"
        )

    @property
    def ok(self) -> bool:
        """No check failed, nothing went wrong, no schema-valid case was refused for its data."""
        return not (self.failures or self.errors or self.timed_out or self.refused_positive)

    @property
    def accepted_positive(self) -> int:
        return sum(n for status, n in self.positive.items() if 200 <= status < 300)

    def problems(self) -> str:
        lines = [f"{count}x {text}" for text, count in self.failures.most_common()]
        statuses = "statuses: " + ", ".join(f"{code} x{n}" for code, n in sorted(self.statuses.items()))
        examples = [f"  e.g. {example}" for example in self.examples.values()]
        refused = [f"schema-valid but refused: {where}: {example}" for where, example in self.refused_positive.items()]
        return "\n".join([self.summary(), statuses, *lines, *examples, *refused, *self.errors])


def sample_jpeg(width: int = 96, height: int = 64) -> bytes:
    pixels = Image.new("RGB", (width, height), (200, 120, 40))
    buffer = io.BytesIO()
    pixels.save(buffer, format="JPEG")
    return buffer.getvalue()


def upload(address: str, data: bytes, key: str | None) -> str:
    """Store ``data`` on the server (its storage API); returns the file's URL."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Key {key}"} if key else {})}
    body = json.dumps({"content_type": "image/jpeg", "file_name": "sample.jpg"}).encode()
    start = urllib.request.Request(
        f"http://{address}/storage/upload/initiate?storage_type=fal-cdn-v3", body, headers, method="POST"
    )
    with urllib.request.urlopen(start, timeout=10) as response:
        urls = json.load(response)
    put = urllib.request.Request(urls["upload_url"], data, {"Content-Type": "image/jpeg"}, method="PUT")
    with urllib.request.urlopen(put, timeout=10):
        pass
    return str(urls["file_url"])


class _Files:
    """Real targets swapped in for generated URLs, in the same form: a JPEG for a file field's
    text, a listening receiver for ``fal_webhook``."""

    def __init__(self, url: str, data: bytes, webhook: str) -> None:
        self.url = url
        self.data_uri = "data:image/jpeg;base64," + base64.b64encode(data).decode()
        self.webhook = webhook

    def swap(self, values: dict[str, Any]) -> dict[str, Any]:
        return {
            k: self.webhook if k == "fal_webhook" and isinstance(v, str) else self._file(v) for k, v in values.items()
        }

    def _file(self, value: Any) -> Any:
        if isinstance(value, str) and _FILE_TEXT.fullmatch(value):
            return self.data_uri if value.startswith("data:") else self.url
        if isinstance(value, dict):
            return {k: self._file(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._file(v) for v in value]
        return value


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver that takes every delivery."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def webhook_receiver() -> Iterator[str]:
    """A local webhook receiver (the server must allow private networks); yields its URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


#: fal's queue answers a valid call with a 4xx in two places, about the request's state rather
#: than the call: a result replays the request's own outcome (an app's refusal, 400 or 422; a
#: cancelled request, 499) or says it has not finished (400), and cancelling a finished request
#: is 400 ALREADY_COMPLETED. Schemathesis reads a 4xx to a valid call as a refusal, so these are
#: named to it as expected answers of those operations.
QUEUE_STATE_ANSWERS = {
    "queue_result": ["400", "422", "499"],
    "queue_cancel": ["400"],
    "queue_cancel_post": ["400"],
}
#: A schema cannot hold SDP's grammar: a video start-session offer that is a string but no SDP
#: is refused with 400, so that answer is expected of the operations tagged ``video``.
VIDEO_OFFER_ANSWERS = ["400"]
_ACCEPTED = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]  # Schemathesis' own list
#: Statuses that refuse a request for its data: a schema-valid case must never get one on a run.
DATA_REFUSALS = frozenset({400, 413, 415, 422})


def check_document(
    url: str,
    *,
    key: str | None,
    files: _Files,
    max_examples: int,
    max_time_s: int,
    seed: int = 1,
) -> Report:
    """Run Schemathesis over the document at ``url`` (served by the server it describes)."""
    config = schemathesis.Config.from_dict(
        {
            "seed": seed,
            "generation": {"max-examples": max_examples},
            "phases": {"stateful": {"max-steps": max_examples}},
            "request-timeout": 30,
            "operations": [
                {
                    "include-operation-id": operation_id,
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, *statuses]}},
                }
                for operation_id, statuses in QUEUE_STATE_ANSWERS.items()
            ]
            + [
                {
                    "include-tag": "video",
                    "checks": {"positive_data_acceptance": {"expected-statuses": [*_ACCEPTED, *VIDEO_OFFER_ANSWERS]}},
                }
            ],
            **({"auth": {"openapi": {"falKey": {"api_key": f"Key {key}"}}}} if key else {}),
        }
    )
    headers = {"Authorization": f"Key {key}"} if key else {}
    schema = schemathesis.openapi.from_url(url, config=config, headers=headers).exclude(tag="realtime")
    msgpack_turn = itertools.cycle((False, True))

    @schema.hook
    def map_case(ctx: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
        if isinstance(case.body, dict):
            case.body = files.swap(case.body)
        if case.query:
            case.query = files.swap(case.query)
        operation = case.operation
        if operation.method.upper() == "POST" and not operation.path.endswith("/stream") and next(msgpack_turn):
            responses = operation.definition.raw.get("responses", {})
            if "application/msgpack" in responses.get("200", {}).get("content", {}):
                case.headers = {**(case.headers or {}), "Accept": "application/msgpack"}
        return case

    report = Report(url)
    started = phase_started = time.perf_counter()
    stream = from_schema(schema).execute()
    for event in stream:
        if time.perf_counter() - started > max_time_s and not report.timed_out:
            report.timed_out = True  # Schemathesis' own max-time would repeat the phases until it passes
            stream.stop()
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            report.operations.add(recorder.label)
            report.cases += len(recorder.interactions)
            for case_id, interaction in recorder.interactions.items():
                if interaction.response is None:
                    continue
                status = interaction.response.status_code
                report.statuses[status] += 1
                node = recorder.cases.get(case_id)
                meta = node.value.meta if node is not None else None
                if meta is not None and meta.generation.mode == GenerationMode.POSITIVE:
                    report.positive[status] += 1
                    raw = node.value.operation.definition.raw  # type: ignore[union-attr]
                    expected = [*QUEUE_STATE_ANSWERS.get(raw.get("operationId"), ())]
                    expected += VIDEO_OFFER_ANSWERS if "video" in raw.get("tags", ()) else []
                    if status in DATA_REFUSALS and str(status) not in expected:
                        request = interaction.request
                        where = f"{request.method} {node.value.operation.path} -> {status}"  # type: ignore[union-attr]
                        body = (request.body or b"")[:200]
                        report.refused_positive.setdefault(where, f"{request.uri[:200]} {body!r}")
            for case_id, checks in recorder.checks.items():
                for check in checks:
                    if check.failure_info is not None:
                        failure = check.failure_info.failure
                        case = recorder.cases[case_id].value
                        interaction = recorder.interactions.get(case_id)
                        status = interaction.response.status_code if interaction and interaction.response else None
                        where = f"{case.method} {case.operation.path} -> {status}"
                        message = (failure.message.splitlines() or [""])[0][:300]
                        report.failures[f"{where} [{check.name}] {failure.title}: {message}"] += 1
                        if interaction is not None:
                            request = interaction.request
                            body = (request.body or b"")[:200]
                            report.examples.setdefault(where, f"{request.method} {request.uri[:200]} {body!r}")
        elif isinstance(event, events.NonFatalError):
            report.errors.append(f"error in {event.label}: {event.info.format()[:1000]}")
        elif isinstance(event, events.FatalError):
            report.errors.append(f"fatal: {event.exception!r}")
        elif isinstance(event, events.PhaseStarted):
            phase_started = time.perf_counter()
        elif isinstance(event, events.PhaseFinished):
            report.phases[event.phase.name.value] = time.perf_counter() - phase_started
        elif isinstance(event, events.EngineFinished):
            report.stop_reason = str(event.stop_reason)
    report.seconds = time.perf_counter() - started
    return report


def check_apps(
    run_address: str,
    queue_address: str,
    app_ids: list[str],
    *,
    key: str | None = None,
    max_examples: int = 5,
    max_time_s: int = 60,
    processes: int = 2,
) -> list[Report]:
    """Schemathesis over each app's run and queue documents; one report each.

    The documents are checked in ``processes`` worker processes, beside the server (which
    may run in this one): generating cases is most of the work, and it needs a core."""
    data = sample_jpeg()
    with webhook_receiver() as webhook:
        files = _Files(upload(run_address, data, key), data, webhook)
        urls = [
            f"http://{address}/models/{app_id}/openapi.json"
            for app_id in app_ids
            for address in (run_address, queue_address)
        ]
        context = multiprocessing.get_context("spawn")  # the server's threads must not be forked
        with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
            runs = [
                pool.submit(check_document, url, key=key, files=files, max_examples=max_examples, max_time_s=max_time_s)
                for url in urls
            ]
            return [run.result() for run in runs]
