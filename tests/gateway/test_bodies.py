"""Every JSON route reads its body through one guarded path: type, size, pauses and structure
are refused before the body is decoded or any work starts (a real ``framewire serve``)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.conftest import serve_process

LIMIT = 64 * 1024

#: (method, path, Host) of every route that takes a JSON body.
ROUTES = [
    ("POST", "/framewire/echo", "127.0.0.1"),  # run
    ("POST", "/framewire/echo", "queue.localhost"),  # queue submit
    ("POST", "/tokens/", "127.0.0.1"),
    ("POST", "/v1/keys", "127.0.0.1"),
    ("PATCH", "/v1/keys/00000000-0000-0000-0000-000000000000", "127.0.0.1"),
    ("POST", "/storage/upload/initiate", "127.0.0.1"),
]


@pytest.fixture(scope="module")
def address() -> Iterator[tuple[str, int]]:
    limits = ("--max-body-bytes", str(LIMIT), "--read-timeout-s", "1", "--max-input-items", "1000")
    with serve_process("--builtin-apps", "echo", *limits) as port:
        yield "127.0.0.1", port


def _exchange(address: tuple[str, int], head: bytes, body_parts: list[bytes] = (), pause_s: float = 0.0) -> bytes:  # type: ignore[assignment]
    """Send ``head``, then each body part (pausing between), and read the answer."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head)
        with contextlib.suppress(OSError):
            for part in body_parts:
                if pause_s:
                    time.sleep(pause_s)
                sock.sendall(part)
        sock.settimeout(10)
        data = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
                if b"\r\n\r\n" in data and _complete(data):
                    break
        return data


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def _head(method: str, path: str, host: str, extra: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n".encode()


def _status_and_body(answer: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize(("method", "path", "host"), ROUTES)
def test_a_declared_length_over_the_limit_is_refused_before_reading(
    address: tuple[str, int], method: str, path: str, host: str
) -> None:
    head = _head(method, path, host, f"Content-Type: application/json\r\nContent-Length: {400 * 1024 * 1024}\r\n")
    status, body = _status_and_body(_exchange(address, head))  # no body sent at all
    assert status == 413
    assert body["error_type"] == "body_too_large" and f"{LIMIT} (--max-body-bytes)" in str(body["detail"])


@pytest.mark.parametrize(("method", "path", "host"), ROUTES)
def test_a_streamed_body_is_refused_once_it_passes_the_limit(
    address: tuple[str, int], method: str, path: str, host: str
) -> None:
    head = _head(method, path, host, "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n")
    chunk = b"a" * 16384
    parts = [b'4\r\n{"a"\r\n', *[f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * 64, b"0\r\n\r\n"]
    status, body = _status_and_body(_exchange(address, head, parts))
    assert status == 413 and "--max-body-bytes" in str(body["detail"])


def test_a_client_still_sending_a_refused_body_reads_the_refusal_not_a_reset(address: tuple[str, int]) -> None:
    """The rest of a refused body (up to 1 MiB, for a second) is read and dropped before the
    answer, so a client that has not finished sending is not cut off mid-write."""
    head = _head(
        "POST", "/framewire/echo", "127.0.0.1", "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    )
    chunk = b"a" * 16384
    parts = [b'4\r\n{"a"\r\n', *[f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"] * 20, b"0\r\n\r\n"]
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(head)
        for part in parts:  # raises (broken pipe, reset) if the server closed before the body ended
            time.sleep(0.005)
            sock.sendall(part)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, body = _status_and_body(answer)
    assert status == 413 and body["error_type"] == "body_too_large"


@pytest.mark.parametrize(("method", "path", "host"), ROUTES)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_browser_form_types_are_refused(
    address: tuple[str, int], method: str, path: str, host: str, content_type: str
) -> None:
    """A page on another site can send these without a CORS preflight."""
    body = b'{"prompt": "x", "allowed_apps": ["echo"]}'
    head = _head(method, path, host, f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n")
    status, answer = _status_and_body(_exchange(address, head, [body]))
    assert status == 415 and "application/json" in str(answer["detail"])


@pytest.mark.parametrize(("method", "path", "host"), ROUTES)
@pytest.mark.parametrize(
    ("payload", "words"),
    [
        (b"[" * 30_000 + b"]" * 30_000, "deeper than 32 levels"),
        (b"[" + b"{}," * 2000 + b"{}]", "more than 1000 items (--max-input-items)"),
    ],
)
def test_structures_over_the_budget_are_refused_not_a_crash(
    address: tuple[str, int], method: str, path: str, host: str, payload: bytes, words: str
) -> None:
    head = _head(method, path, host, f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n")
    status, body = _status_and_body(_exchange(address, head, [payload]))
    assert status == 413 and words in str(body["detail"])


@pytest.mark.parametrize(("method", "path", "host"), ROUTES)
def test_a_body_that_stops_arriving_gets_408(address: tuple[str, int], method: str, path: str, host: str) -> None:
    head = _head(method, path, host, "Content-Type: application/json\r\nContent-Length: 100\r\n")
    started = time.monotonic()
    status, body = _status_and_body(_exchange(address, head, [b'{"prompt": '], pause_s=0.0))
    assert status == 408 and "--read-timeout-s" in str(body["detail"])
    assert time.monotonic() - started < 5


def test_a_json_body_within_every_limit_still_runs(address: tuple[str, int]) -> None:
    body = json.dumps({"prompt": "p, " * 3000, "image_url": "data:image/png;base64," + "A" * 40000}).encode()
    head = _head(
        "POST", "/framewire/echo", "127.0.0.1", f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    )
    status, answer = _status_and_body(_exchange(address, head, [body]))
    assert status == 200 and answer["prompt"] == "p, " * 3000
