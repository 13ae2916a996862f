"""The listener's limits, against a real ``framewire serve`` process: head size, head deadline,
connection cap. Each refusal must come before the server spends memory or time on it."""

from __future__ import annotations

import contextlib
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest
import websockets.sync.client

from framewire.gateway.listener import FD_RESERVE
from tests.conftest import ROOT, free_port, serve_process

MB = 1024 * 1024
LIMITS = ("--max-header-bytes", "4096", "--read-timeout-s", "1", "--max-connections", "6")


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with serve_process("--builtin-apps", "echo", *LIMITS) as port:
        yield port


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _answer(sock: socket.socket, timeout_s: float = 10.0) -> bytes:
    """Everything the server sends until it closes (or ``timeout_s`` passes)."""
    sock.settimeout(timeout_s)
    data = b""
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def _health(port: int) -> bytes:
    with _connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        return _answer(sock)


def _rss_mb(pid: int) -> float:
    return float(psutil.Process(pid).memory_info().rss) / MB


def _server_pid(port: int) -> int:
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return int(conn.pid)
    raise LookupError(f"no process listens on {port}")


def test_header_lines_past_the_limit_get_431_before_memory_grows(port: int) -> None:
    pid = _server_pid(port)
    before = _rss_mb(pid)
    line = b"X-Pad: " + b"a" * 7 + b"\r\n"
    sent = 0
    with _connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        with contextlib.suppress(OSError):  # the server stops reading once it has answered
            while sent < 32 * MB:
                sock.sendall(line * 65536)
                sent += len(line) * 65536
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"4096 bytes (--max-header-bytes)" in answer
    assert sent < 8 * MB  # refused early, not after reading everything
    assert _rss_mb(pid) - before < 30
    assert _health(port).startswith(b"HTTP/1.1 200")


def test_one_huge_header_value_is_refused_while_it_arrives(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: ")
        with contextlib.suppress(OSError):
            for _ in range(64):
                sock.sendall(b"c" * MB)
        assert _answer(sock).startswith(b"HTTP/1.1 431 ")


def test_a_long_request_line_gets_414_naming_the_limit(port: int) -> None:
    with _connect(port) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /health?q=" + b"a" * (2 * MB))
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 414 "), answer[:200]
    assert b"request line" in answer and b"--max-header-bytes" in answer


def test_a_head_and_body_larger_than_the_limit_in_one_packet_still_work(port: int) -> None:
    """The limit counts the head only: a body arriving with it is not part of it."""
    body = b'{"prompt": "' + b"p" * 9000 + b'"}'
    request = (
        b"POST /framewire/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with _connect(port) as sock:
        sock.sendall(request + request.replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1))
        answer = _answer(sock)
    assert answer.count(b"HTTP/1.1 200 OK") == 2, answer[:300]


def test_a_head_arriving_with_the_end_of_the_previous_body_is_held_to_the_limit(port: int) -> None:
    """The second head comes in the same read as the first request's last body bytes."""
    first = (
        b"POST /framewire/echo HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    )
    second = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 6000 + b"\r\n\r\n"
    with _connect(port) as sock:
        sock.sendall(first)
        time.sleep(0.3)  # the first head is parsed; its body is awaited
        sock.sendall(b"{}" + second)
        answer = _answer(sock)
    assert b"HTTP/1.1 431 " in answer, answer[:300]
    assert b"4096 bytes (--max-header-bytes)" in answer
    assert _health(port).startswith(b"HTTP/1.1 200")


def test_a_silent_connection_is_closed_after_the_read_timeout(port: int) -> None:
    with _connect(port) as sock:
        started = time.monotonic()
        assert _answer(sock, timeout_s=8) == b""
        assert time.monotonic() - started < 6


def test_a_trickling_head_gets_408_at_its_deadline(port: int) -> None:
    with _connect(port) as sock:
        started = time.monotonic()
        sock.settimeout(0.3)
        answer = b""
        for byte in b"GET /health HTTP/1.1\r\nHost: x\r\n":
            try:
                sock.sendall(bytes([byte]))
                answer += sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
            if answer:
                break
        answer += _answer(sock, timeout_s=5)
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert b"--read-timeout-s" in answer
    assert time.monotonic() - started < 6


def test_idle_sockets_cannot_lock_clients_out(port: int) -> None:
    """At the connection cap a new client displaces the socket idle longest."""
    silent = [_connect(port) for _ in range(12)]
    try:
        for _ in range(5):
            assert _health(port).startswith(b"HTTP/1.1 200")
    finally:
        for sock in silent:
            sock.close()


def test_when_every_connection_is_busy_a_new_one_gets_503(port: int) -> None:
    url = f"ws://127.0.0.1:{port}/framewire/echo/realtime"
    with contextlib.ExitStack() as stack:
        for _ in range(6):
            stack.enter_context(websockets.sync.client.connect(url, open_timeout=10))
        answer = _health(port)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"retry-after: 1" in answer.lower() and b"--max-connections" in answer
    deadline = time.monotonic() + 10
    while not _health(port).startswith(b"HTTP/1.1 200"):
        assert time.monotonic() < deadline, "the server did not recover after the sessions closed"
        time.sleep(0.1)


def test_serve_refuses_a_connection_cap_the_open_file_limit_cannot_hold() -> None:
    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (400, 400))

    done = subprocess.run(
        [sys.executable, "-m", "framewire.cli", "serve", "--port", str(free_port()), "--max-connections", "1000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=low_limit,
    )
    assert done.returncode == 2
    assert f"lower --max-connections to {400 - FD_RESERVE}" in done.stderr
