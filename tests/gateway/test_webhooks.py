"""Webhooks: a real receiver verifies fal's Ed25519 signature from the JWKS and sees retries."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from standardwebhooks.webhooks import Webhook

from framewire.gateway.requests.webhooks import retry_delay_s
from framewire.gateway.settings import Settings
from tests.conftest import ROOT, LocalHttp, live_server
from tests.gateway.queue_apps import SteppingApp

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


class Receiver(LocalHttp):
    """An HTTP server that answers 500 to the first ``failures`` webhooks, then 200."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.received: list[tuple[dict[str, str], bytes, float]] = []
        self.done = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()))
                status = 500 if len(receiver.received) <= receiver.failures else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()
                if status == 200:
                    receiver.done.set()

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(Handler, "/hook")


@pytest.fixture
def server() -> Iterator[str]:
    settings = Settings(  # the receivers listen on 127.0.0.1
        webhook_retry_base_s=0.15, webhook_secret=SECRET, webhook_max_attempts=4, private_networks=True
    )
    with live_server(settings, [SteppingApp()]) as address:
        yield address


def verify_fal_signature(jwks: dict[str, Any], headers: dict[str, str], body: bytes) -> None:
    """What a receiver following fal's docs does; raises on a bad signature."""
    timestamp = int(headers["x-fal-webhook-timestamp"])
    assert abs(time.time() - timestamp) <= 300
    message = "\n".join(
        [
            headers["x-fal-webhook-request-id"],
            headers["x-fal-webhook-user-id"],
            headers["x-fal-webhook-timestamp"],
            hashlib.sha256(body).hexdigest(),
        ]
    ).encode()
    signature = bytes.fromhex(headers["x-fal-webhook-signature"])
    assert len(signature) == 64
    (key,) = jwks["keys"]
    raw = base64.urlsafe_b64decode(key["x"] + "=" * (-len(key["x"]) % 4))
    Ed25519PublicKey.from_public_bytes(raw).verify(signature, message)


async def submit_with_hook(server: str, hook: str, body: dict[str, Any]) -> str:
    async with httpx.AsyncClient(base_url=f"http://{server}", headers={"host": "queue.local"}) as client:
        res = await client.post("/test/stepping", params={"fal_webhook": hook}, json=body)
        assert res.status_code == 200
        return str(res.json()["request_id"])


async def test_webhook_is_signed_retried_after_500s_and_verifiable(server: str) -> None:
    with Receiver(failures=2) as receiver:
        request_id = await submit_with_hook(server, receiver.url, {"steps": 2})
        assert await asyncio.to_thread(receiver.done.wait, 10)
        async with httpx.AsyncClient(base_url=f"http://{server}") as client:
            jwks = (await client.get("/.well-known/jwks.json")).json()
            result = (await client.get(f"/test/stepping/requests/{request_id}", headers={"host": "queue.local"})).json()
    assert len(receiver.received) == 3
    bodies = {body for _, body, _ in receiver.received}
    assert len(bodies) == 1  # the same payload every try
    first_id = receiver.received[0][0]["webhook-id"]
    for headers, body, _ in receiver.received:
        verify_fal_signature(jwks, headers, body)
        assert headers["x-fal-webhook-request-id"] == request_id
        assert headers["x-fal-webhook-user-id"] == "anonymous"
        assert headers["webhook-id"] == first_id  # stable across retries (Standard Webhooks)
        Webhook(SECRET).verify(body, headers)  # the v1 HMAC, checked by the reference library
    payload = json.loads(receiver.received[-1][1])
    assert payload == {
        "error": None,
        "gateway_request_id": request_id,
        "payload": result,
        "request_id": request_id,
        "status": "OK",
    }
    gaps = [b[2] - a[2] for a, b in itertools.pairwise(receiver.received)]
    assert gaps[1] > gaps[0]  # exponential back-off (0.15 s then 0.3 s, ±25 %)


async def test_a_tampered_body_fails_verification(server: str) -> None:
    with Receiver(failures=0) as receiver:
        await submit_with_hook(server, receiver.url, {"steps": 1})
        assert await asyncio.to_thread(receiver.done.wait, 10)
        async with httpx.AsyncClient(base_url=f"http://{server}") as client:
            jwks = (await client.get("/.well-known/jwks.json")).json()
    headers, body, _ = receiver.received[0]
    with pytest.raises(InvalidSignature):
        verify_fal_signature(jwks, headers, body.replace(b'"OK"', b'"ER"'))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    v1a = next(s for s in headers["webhook-signature"].split() if s.startswith("v1a,"))
    (key,) = jwks["keys"]
    raw = base64.urlsafe_b64decode(key["x"] + "=")
    Ed25519PublicKey.from_public_bytes(raw).verify(base64.b64decode(v1a[4:]), signed)


async def test_failed_jobs_send_an_error_webhook(server: str) -> None:
    with Receiver(failures=0) as receiver:
        request_id = await submit_with_hook(server, receiver.url, {"steps": 1, "fail": True})
        assert await asyncio.to_thread(receiver.done.wait, 10)
    payload = json.loads(receiver.received[0][1])
    assert payload["request_id"] == request_id and payload["status"] == "ERROR"
    assert payload["error"] == "Invalid status code: 422"
    assert payload["payload"]["error_type"] == "invalid_input"


async def test_delivery_gives_up_after_the_last_try(server: str) -> None:
    with Receiver(failures=100) as receiver:
        await submit_with_hook(server, receiver.url, {"steps": 1})
        deadline = time.monotonic() + 10
        while len(receiver.received) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)  # longer than the next back-off would be
    assert len(receiver.received) == 4  # webhook_max_attempts


def test_default_schedule_spreads_ten_tries_over_about_two_hours() -> None:
    rng = random.Random(7)
    delays = [retry_delay_s(n, 14.0, rng) for n in range(1, 10)]  # the 9 waits between 10 tries
    assert 0.75 * 14.0 * 511 <= sum(delays) <= 1.25 * 14.0 * 511
    assert 1.5 * 3600 < sum(delays) < 2.5 * 3600
    assert all(b > a for a, b in itertools.pairwise(delays))


def test_webhook_key_command_prints_the_key_the_server_signs_with(tmp_path: Path) -> None:
    from framewire.gateway.requests.webhooks import WebhookSigner, load_signing_key

    done = subprocess.run(
        [sys.executable, "-m", "framewire.cli", "webhook-key", "--data-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    signer = WebhookSigner(load_signing_key(tmp_path / "webhook_ed25519.pem"))  # the same file the server uses
    assert printed["jwks"] == signer.jwks()
    assert printed["standard_webhooks_public_key"] == "whpk_" + base64.b64encode(signer.public_raw).decode()


async def test_webhooks_to_private_addresses_are_refused_unless_allowed(tmp_path: Path) -> None:
    with live_server(Settings(), [SteppingApp()]) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", headers={"host": "queue.local"}) as client:
            for hook in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "http://[::1]/x"):
                res = await client.post("/test/stepping", params={"fal_webhook": hook}, json={"steps": 1})
                assert res.status_code == 400, hook
                assert res.json()["detail"].startswith("fal_webhook: ") and "--private-networks" in res.json()["detail"]
            unknown = await client.post(
                "/test/stepping", params={"fal_webhook": "http://no-such-host.invalid/x"}, json={"steps": 1}
            )
            assert unknown.status_code == 400 and "cannot resolve" in unknown.json()["detail"]

    # Delivery checks again (a name's answer may change after the submit): no request is sent.
    from framewire.gateway.requests.job_store import Delivery
    from framewire.gateway.requests.webhooks import WebhookDeliverer, WebhookSigner, load_signing_key

    signer = WebhookSigner(load_signing_key(tmp_path / "webhook_ed25519.pem"))
    deliverer = WebhookDeliverer(None, signer, timeout_s=1, max_attempts=1, retry_base_s=1)  # type: ignore[arg-type]
    try:
        with Receiver(failures=0) as receiver:
            delivery = Delivery(1, "job", "owner", receiver.url, b"{}", 0)
            error = await deliverer._post(delivery)
            assert error is not None and "not a public address" in error and receiver.received == []
            deliverer.private_networks = True
            assert await deliverer._post(delivery) is None and len(receiver.received) == 1
    finally:
        await deliverer.stop()
