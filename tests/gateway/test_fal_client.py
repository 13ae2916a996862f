"""The official fal Python client against a real `framewire serve` process.

The client is pointed at the server through its module globals (protocol spec §10.1,
option C). The queue surface is reached on ``--queue-port``; run, stream, tokens and
storage on the main port.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fal_client
import fal_client.client as fal_module
import httpx
import pytest

from tests.conftest import ROOT, free_port, serve_process
from tests.gateway.test_live import make_self_signed_cert

KEY = "k1:s3cret"
APP = "tests.gateway.queue_apps:SteppingApp"
IMAGE_APP = "tests.gateway.queue_apps:ImageApp"


@pytest.fixture(scope="module")
def ports() -> Iterator[tuple[int, int]]:
    queue_port = free_port()
    args = ("--auth", "--api-key", KEY, "--queue-port", str(queue_port), "--app", APP, "--app", IMAGE_APP)
    with serve_process(*args) as port:
        yield port, queue_port


@pytest.fixture
def client(ports: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> Iterator[fal_client.SyncClient]:
    port, queue_port = ports
    monkeypatch.setattr(fal_module, "RUN_URL_FORMAT", f"http://127.0.0.1:{port}/")
    monkeypatch.setattr(fal_module, "QUEUE_URL_FORMAT", f"http://127.0.0.1:{queue_port}/")
    monkeypatch.setattr(fal_module, "REST_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setattr(fal_module, "CDN_URL", f"http://127.0.0.1:{port}")
    opened: list[httpx.Client] = []
    original = fal_module.SyncClient._get_cdn_client

    def tracked(self: fal_client.SyncClient) -> httpx.Client:
        cdn = original(self)
        opened.append(cdn)
        return cdn

    # The client opens an httpx.Client per upload and never closes it; close them here.
    monkeypatch.setattr(fal_module.SyncClient, "_get_cdn_client", tracked)
    c = fal_client.SyncClient(key=KEY)
    try:
        yield c
    finally:
        c._client.close()
        for cdn in opened:
            cdn.close()


def test_submit_status_with_logs_and_result(client: fal_client.SyncClient, ports: tuple[int, int]) -> None:
    handle = client.submit("test/stepping", {"steps": 3, "delay_ms": 30})
    assert handle.status_url.startswith(f"http://127.0.0.1:{ports[1]}/test/stepping/requests/")
    seen: list[Any] = []
    for status in handle.iter_events(with_logs=True, interval=0.02):
        seen.append(status)
    assert isinstance(seen[-1], fal_client.Completed) and seen[-1].error is None
    assert any("Running on test/stepping" in log["message"] for log in seen[-1].logs)
    assert seen[-1].metrics["inference_time"] > 0
    assert handle.get() == {"done": 3, "preview": False, "batch_size": 1}


def test_subscribe_reports_queue_updates(client: fal_client.SyncClient) -> None:
    updates: list[Any] = []
    enqueued: list[str] = []
    out = client.subscribe(
        "fal-ai/stepping",
        {"steps": 2, "delay_ms": 20},
        with_logs=True,
        on_enqueue=enqueued.append,
        on_queue_update=updates.append,
        interval=0.02,
    )
    assert out["done"] == 2 and len(enqueued) == 1
    assert isinstance(updates[-1], fal_client.Completed)
    assert all(isinstance(u, fal_client.Queued | fal_client.InProgress | fal_client.Completed) for u in updates)


def test_cancel_a_running_request(client: fal_client.SyncClient) -> None:
    handle = client.submit("test/stepping", {"steps": 500, "delay_ms": 20})
    deadline = time.monotonic() + 10
    while not isinstance(handle.status(), fal_client.InProgress):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    handle.cancel()
    status = list(handle.iter_events(interval=0.02))[-1]
    assert isinstance(status, fal_client.Completed) and status.error_type == "request_cancelled"
    with pytest.raises(fal_client.client.FalClientHTTPError) as err:
        handle.get()
    assert err.value.status_code == 499 and err.value.error_type == "request_cancelled"
    with pytest.raises(fal_client.client.FalClientHTTPError) as again:
        handle.cancel()
    assert again.value.status_code == 400


def test_failed_request_raises_with_the_error_type(client: fal_client.SyncClient) -> None:
    handle = client.submit("test/stepping", {"steps": 1, "fail": True})
    with pytest.raises(fal_client.client.FalClientHTTPError) as err:
        handle.get()
    assert err.value.status_code == 422 and err.value.error_type == "invalid_input"


def test_run_and_stream(client: fal_client.SyncClient) -> None:
    assert client.run("test/stepping", {"steps": 2}) == {"done": 2, "preview": False, "batch_size": 1}
    events = list(client.stream("test/stepping", {"steps": 3, "delay_ms": 10}))
    assert [e["done"] for e in events] == [1, 2, 3, 3] and events[-1]["preview"] is False


def test_upload_both_repositories_and_use_the_url_as_input(client: fal_client.SyncClient) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x01" * 50
    v3_url = client.upload(png, "image/png", file_name="in.png")
    gcs_url = client.upload(png, "image/png", repository="fal", fallback_repository=[])
    for url in (v3_url, gcs_url):
        got = httpx.get(url)
        assert got.content == png and got.headers["content-type"] == "image/png"
    out = client.run("test/image", {"image_url": v3_url, "sync_mode": True})
    assert out["input_size"] == len(png)
    assert out["images"][0]["url"].startswith("data:image/png;base64,")


def test_wrong_key_is_refused_everywhere(ports: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    port, queue_port = ports
    monkeypatch.setattr(fal_module, "RUN_URL_FORMAT", f"http://127.0.0.1:{port}/")
    monkeypatch.setattr(fal_module, "QUEUE_URL_FORMAT", f"http://127.0.0.1:{queue_port}/")
    bad = fal_client.SyncClient(key="k1:wrong")
    try:
        for call in (lambda: bad.run("test/stepping", {}), lambda: bad.submit("test/stepping", {})):
            with pytest.raises(fal_client.client.FalClientHTTPError) as err:
                call()
            assert err.value.status_code == 401
    finally:
        bad._client.close()


def test_only_the_hosts_changed_over_tls_queue_and_run(tmp_path: Path) -> None:
    """Setup B of the protocol spec: FAL_RUN_HOST, FAL_QUEUE_RUN_HOST and SSL_CERT_FILE, nothing patched."""
    cert, key = make_self_signed_cert(tmp_path)
    port, queue_port = free_port(), free_port()
    cmd = [
        sys.executable, "-m", "framewire.cli", "serve", "--port", str(port), "--queue-port", str(queue_port),
        "--ssl-certfile", cert, "--ssl-keyfile", key, "--data-dir", str(tmp_path / "data"), "--log-level", "warning",
        "--app", APP,
    ]  # fmt: skip
    script = textwrap.dedent(
        """
        import fal_client
        handle = fal_client.submit("test/stepping", {"steps": 2})
        print(handle.status_url.split("/requests/")[0])
        print(handle.get()["done"], fal_client.run("test/stepping", {"steps": 3})["done"])
        """
    )
    env = {
        **os.environ,
        "FAL_RUN_HOST": f"localhost:{port}",
        "FAL_QUEUE_RUN_HOST": f"localhost:{queue_port}",
        "SSL_CERT_FILE": cert,
        "FAL_KEY": "any:key",
    }
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            context = ssl.create_default_context(cafile=cert)
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"https://localhost:{port}/ready", context=context, timeout=1):
                        break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline
                    time.sleep(0.1)
            done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
        finally:
            proc.terminate()
            proc.communicate(timeout=15)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"https://localhost:{queue_port}/test/stepping", "2", "3"]
