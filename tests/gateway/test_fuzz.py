"""Property-based fuzzing of what hostile clients control: realtime frames, app inputs, HTTP bodies.

Each property holds for every generated case: an answer within the error contract (an
output, or a refusal with a known code or status), never a crash, the session and the
server alive afterwards, and memory that stays bounded. The first group runs the pure
decoders; the second drives a real ``framewire serve`` process. Budgets are small so the
whole file runs in seconds.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import msgpack
import psutil
import pytest
import websockets.sync.client
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from framewire.engine.api import AppError
from framewire.engine.apps.echo import EchoInput
from framewire.engine.apps.lcm import LcmApp, LcmInput
from framewire.engine.apps.sdxl_turbo import TurboInput
from framewire.engine.media import decoded_pixels
from framewire.gateway import http
from framewire.gateway.budget import OverBudget, StructureBudget, check_json, check_msgpack
from framewire.gateway.realtime import protocol
from framewire.gateway.realtime.protocol import ErrorCode, ProtocolError
from tests.conftest import serve_process

BUDGET = StructureBudget(max_items=200, max_depth=8)
LCM = LcmApp()  # batch_key needs no model
QUICK = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
LIVE = settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True)
    | st.text(max_size=40)
    | st.binary(max_size=40)
)
structures = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=12) | st.dictionaries(st.text(max_size=12), inner, max_size=12),
    max_leaves=120,
)


def items(value: Any) -> tuple[int, int]:
    """(items, depth) as the budget counts them: each container one, plus one per element or
    entry; depth is how many non-empty containers nest."""
    children = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else []
    if not isinstance(value, dict | list):
        return 0, 0
    inner = [items(child) for child in children]
    count = 1 + len(children) + sum(i for i, _ in inner)
    return count, (1 + max((d for _, d in inner), default=0)) if children else 0


# -- the pure decoders --------------------------------------------------------------------------


@QUICK
@given(st.binary(max_size=512))
@example(b"\x81\xa2at\xc7\x0c\xff" + bytes(4) + (2**62).to_bytes(8, "big"))  # a timestamp past year 9999
@example(b"\x81\xaarequest_id\xdd\x00\x01\x00\x00" + b"\x80" * 65536)  # 65536 empty maps
def test_any_bytes_decode_to_a_map_or_a_protocol_error(data: bytes) -> None:
    try:
        fields = protocol.decode_frame(data, BUDGET)
    except ProtocolError as exc:
        assert exc.code in (ErrorCode.INVALID_MSGPACK, ErrorCode.INVALID_FRAME, ErrorCode.FRAME_TOO_LARGE)
        return
    assert isinstance(fields, dict)


@QUICK
@given(structures)
def test_the_budget_walk_agrees_with_what_decoding_builds(value: Any) -> None:
    """A frame the walk passes decodes within the budget; one it refuses is over it."""
    data = msgpack.packb(value, use_bin_type=True)
    count, depth = items(value)
    try:
        check_msgpack(data, BUDGET)
    except OverBudget:
        assert count > BUDGET.max_items or depth > BUDGET.max_depth
        return
    assert count <= BUDGET.max_items and depth <= BUDGET.max_depth


@QUICK
@given(structures.filter(lambda v: not isinstance(v, bytes)))
def test_json_budget_never_lets_more_through_than_the_limit(value: Any) -> None:
    text = json.dumps(value, default=repr).encode()
    try:
        check_json(text, BUDGET)
    except OverBudget:
        return
    decoded = json.loads(text)
    count, depth = items(decoded)
    assert depth <= BUDGET.max_depth
    assert count <= 2 * BUDGET.max_items  # keys are not counted in JSON, entries are


@QUICK
@given(st.binary(max_size=512) | st.text(max_size=200).map(str.encode))
def test_any_body_decodes_or_is_refused_with_a_client_status(raw: bytes) -> None:
    try:
        http.decode_json(raw, BUDGET)
    except http.BodyError as exc:
        assert exc.status in (400, 413)


@QUICK
@given(st.dictionaries(st.sampled_from(["prompt", "image_url", "strength", "seed", "num_images",
                                        "num_inference_steps", "image_size", "guidance_scale", "sync_mode",
                                        "request_id", "junk"]), structures, max_size=8))  # fmt: skip
def test_input_models_accept_or_name_the_field(fields: dict[str, Any]) -> None:
    lcm = LCM
    model: type[BaseModel]
    for model in (EchoInput, LcmInput, TurboInput):
        try:
            inp = model.model_validate(fields)
        except ValidationError as exc:
            assert all(err["loc"] for err in exc.errors())
            continue
        if isinstance(inp, LcmInput):
            try:
                lcm.admit("", inp)
            except AppError as exc:
                assert exc.code in ("OVER_BUDGET", "INVALID_INPUT")
            lcm.batch_key("", inp)


@QUICK
@given(
    st.integers(1, 65535),
    st.integers(1, 65535),
    st.integers(64, 2048),
    st.integers(64, 2048),
    st.sampled_from([b"\xff\xd8", b"\x89PNG\r\n\x1a\n"]),
)
def test_decode_cost_is_never_more_than_the_image_nor_less_than_a_pixel(
    width: int, height: int, target_w: int, target_h: int, head: bytes
) -> None:
    assert 1 <= decoded_pixels(head, width, height, (target_w, target_h)) <= width * height


# -- a real server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    limits = ("--max-input-items", "200", "--max-frame-bytes", "65536", "--max-body-bytes", "65536")
    with serve_process("--builtin-apps", "echo", *limits) as port:
        yield port


def _pid(port: int) -> int:
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return int(conn.pid)
    raise LookupError(port)


safe_text = st.text(max_size=40).filter(lambda s: "http" not in s.lower())  # no fetches of made-up hosts
frame_fields = st.dictionaries(
    st.sampled_from(["prompt", "image_url", "request_id", "junk", "x_url", "nested"]) | st.text(max_size=8),
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | safe_text | st.binary(max_size=64),
        lambda inner: st.lists(inner, max_size=20) | st.dictionaries(safe_text, inner, max_size=20),
        max_leaves=60,
    ),
    max_size=6,
)
frames = frame_fields.map(lambda f: msgpack.packb(f, use_bin_type=True)) | st.binary(max_size=300)
KNOWN = {str(code) for code in ErrorCode} | {"INVALID_INPUT", "FILE_DOWNLOAD_ERROR"}


def test_a_session_answers_every_hostile_frame_and_stays_open(server: int) -> None:
    pid = _pid(server)
    rss_before = psutil.Process(pid).memory_info().rss
    with websockets.sync.client.connect(f"ws://127.0.0.1:{server}/framewire/echo/realtime", max_size=None) as ws:

        @LIVE
        @given(frames)
        def one_frame(frame: bytes) -> None:
            ws.send(frame)
            answer = ws.recv(timeout=10)
            if isinstance(answer, bytes):
                assert isinstance(msgpack.unpackb(answer, raw=False), dict)
            else:
                message = json.loads(answer)
                assert message["type"] == "x-fal-error" and message["error"] in KNOWN, message

        one_frame()
        bomb = b"\x81\xaarequest_id" + msgpack.packb([{}] * 60_000)  # 60 kB that would decode to ~4 MB
        for _ in range(20):
            ws.send(bomb)
            assert json.loads(ws.recv(timeout=10))["error"] == "FRAME_TOO_LARGE"
        ws.send(msgpack.packb({"prompt": "still here", "request_id": "end"}))
        assert msgpack.unpackb(ws.recv(timeout=10), raw=False)["request_id"] == "end"
    growth_mb = (psutil.Process(pid).memory_info().rss - rss_before) / 2**20
    assert growth_mb < 64, f"the server grew by {growth_mb:.0f} MB"


ROUTES = [
    ("POST", "/framewire/echo", "127.0.0.1"),
    ("POST", "/framewire/echo", "queue.localhost"),
    ("POST", "/tokens/", "127.0.0.1"),
    ("POST", "/v1/keys", "127.0.0.1"),
    ("POST", "/storage/upload/initiate", "127.0.0.1"),
]
bodies = (
    st.binary(max_size=600)
    | frame_fields.map(lambda f: json.dumps(f, default=repr).encode())
    | st.integers(1, 40_000).map(lambda n: b"[" * n + b"]" * n)
)
content_types = st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""])


def _request(port: int, method: str, path: str, host: str, content_type: str, body: bytes) -> int:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    if content_type:
        head += f"Content-Type: {content_type}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + b"\r\n" + body)
        answer = sock.recv(64)
    return int(answer.split(b" ", 2)[1])


def test_every_json_route_answers_hostile_bodies_with_a_client_status(server: int) -> None:
    pid = _pid(server)
    rss_before = psutil.Process(pid).memory_info().rss

    @LIVE
    @given(st.sampled_from(ROUTES), content_types, bodies)
    def one_request(route: tuple[str, str, str], content_type: str, body: bytes) -> None:
        status = _request(server, *route, content_type, body)
        assert status in (200, 201, 400, 413, 415, 422), (route, content_type, body[:80], status)

    one_request()
    assert _request(server, "POST", "/framewire/echo", "127.0.0.1", "application/json", b'{"prompt": "ok"}') == 200
    growth_mb = (psutil.Process(pid).memory_info().rss - rss_before) / 2**20
    assert growth_mb < 64, f"the server grew by {growth_mb:.0f} MB"
