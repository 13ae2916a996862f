"""Webhooks: signed the fal way (Ed25519) and the Standard Webhooks way, delivered from the outbox.

fal signature (protocol §8): headers ``X-Fal-Webhook-Request-Id``, ``-User-Id``,
``-Timestamp`` (Unix seconds) and ``-Signature``: hex Ed25519 over
``request_id\\nuser_id\\ntimestamp\\nhex(sha256(body))``. The public key is served as a
JWKS (``kty: OKP, crv: Ed25519``) at ``/.well-known/jwks.json``.

Standard Webhooks: ``webhook-id`` (stable across retries), ``webhook-timestamp`` and
``webhook-signature`` holding ``v1a,<base64 Ed25519 over id.timestamp.body>`` (same key;
its ``whpk_`` form is ``whpk_`` + standard base64 of the JWKS ``x``), plus
``v1,<base64 HMAC-SHA256>`` when a ``whsec_`` secret is configured.

Delivery: completions put a row in the outbox (in the job's own transaction); the
:class:`WebhookDeliverer` posts due rows, retries failures (non-2xx, timeouts, refused
connections) with exponential back-off and jitter, and gives up after the last try.
Delivery is at least once: a crash between a receiver's 2xx and our record of it
sends the webhook again, with the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from framewire.gateway.requests.addresses import refusal
from framewire.gateway.requests.job_store import Delivery, JobStore
from framewire.gateway.requests.outcomes import Outcome

log = logging.getLogger("framewire.webhooks")

#: Deliveries in flight at once.
MAX_CONCURRENT_DELIVERIES = 16
#: Longest the deliverer sleeps before looking at the outbox again.
MAX_IDLE_S = 5.0


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """The server's Ed25519 key, kept in ``path`` (PEM, 0600, created on first use)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path} does not hold an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return key


class WebhookSigner:
    def __init__(self, key: Ed25519PrivateKey, secret: str | None = None) -> None:
        self._key = key
        self.public_raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.kid = hashlib.sha256(self.public_raw).hexdigest()[:16]
        self._hmac_key = base64.b64decode(secret.removeprefix("whsec_")) if secret else None

    def jwks(self) -> dict[str, Any]:
        return {
            "keys": [
                {
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": _b64url(self.public_raw),
                    "kid": self.kid,
                    "use": "sig",
                    "alg": "EdDSA",
                }
            ]
        }

    @property
    def standard_public_key(self) -> str:
        return "whpk_" + base64.b64encode(self.public_raw).decode()

    def fal_signature(self, request_id: str, user_id: str, timestamp: int, body: bytes) -> str:
        message = f"{request_id}\n{user_id}\n{timestamp}\n{hashlib.sha256(body).hexdigest()}".encode()
        return self._key.sign(message).hex()

    def headers(self, delivery: Delivery, timestamp: int) -> dict[str, str]:
        msg_id = f"msg_{delivery.job_id}_{delivery.id}"
        signed = f"{msg_id}.{timestamp}.".encode() + delivery.body
        signatures = ["v1a," + base64.b64encode(self._key.sign(signed)).decode()]
        if self._hmac_key is not None:
            digest = hmac.new(self._hmac_key, signed, hashlib.sha256).digest()
            signatures.append("v1," + base64.b64encode(digest).decode())
        return {
            "content-type": "application/json",
            "x-fal-webhook-request-id": delivery.job_id,
            "x-fal-webhook-user-id": delivery.owner,
            "x-fal-webhook-timestamp": str(timestamp),
            "x-fal-webhook-signature": self.fal_signature(delivery.job_id, delivery.owner, timestamp, delivery.body),
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(signatures),
        }


def webhook_body(request_id: str, outcome: Outcome) -> bytes:
    """The POSTed JSON (fal's fields), keys sorted like fal's own bodies."""
    body: dict[str, Any] = {
        "request_id": request_id,
        "gateway_request_id": request_id,
        "status": "OK" if outcome.ok else "ERROR",
        "payload": outcome.body,
        "error": None if outcome.ok else f"Invalid status code: {outcome.http_status}",
    }
    try:
        return json.dumps(body, sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
        body["payload"] = None
        body["payload_error"] = f"the output is not JSON-serialisable ({exc})"
        return json.dumps(body, sort_keys=True).encode()


def retry_delay_s(failures: int, base_s: float, rng: random.Random | None = None) -> float:
    """Delay before the next try after ``failures`` failed tries: base·2^(n-1), ±25 % jitter."""
    jitter: float = (rng or random).uniform(0.75, 1.25)
    return base_s * 2.0 ** (failures - 1) * jitter


class WebhookDeliverer:
    """Background task posting the outbox's due webhooks."""

    def __init__(
        self,
        store: JobStore,
        signer: WebhookSigner,
        *,
        timeout_s: float,
        max_attempts: int,
        retry_base_s: float,
        private_networks: bool = False,
    ) -> None:
        self.store = store
        self.private_networks = private_networks
        self.signer = signer
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), follow_redirects=False)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[int] = set()
        self._limit = asyncio.Semaphore(MAX_CONCURRENT_DELIVERIES)
        self._deliveries: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-deliverer")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._deliveries) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._client.aclose()

    def wake(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                due = await self.store.due_deliveries(time.time(), MAX_CONCURRENT_DELIVERIES * 4)
            except Exception:
                log.exception("cannot read the webhook outbox")
                due = []
            for delivery in due:
                if delivery.id in self._in_flight:
                    continue
                self._in_flight.add(delivery.id)
                task = asyncio.create_task(self._deliver(delivery))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)
            next_at = await self.store.next_delivery_at()
            wait_s = MAX_IDLE_S if next_at is None else min(MAX_IDLE_S, max(0.01, next_at - time.time()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()

    async def _deliver(self, delivery: Delivery) -> None:
        try:
            async with self._limit:
                error = await self._post(delivery)
            attempt = delivery.attempts + 1
            if error is None:
                await self.store.delivery_done(delivery.id, delivered=True, error=None)
                log.info("webhook for %s delivered (try %d)", delivery.job_id, attempt)
            elif attempt >= self.max_attempts:
                await self.store.delivery_done(delivery.id, delivered=False, error=error)
                log.warning("webhook for %s failed %d times; giving up: %s", delivery.job_id, attempt, error)
            else:
                delay = retry_delay_s(attempt, self.retry_base_s)
                await self.store.delivery_retry(delivery.id, time.time() + delay, error)
                log.info("webhook for %s failed (%s); retry %d in %.1f s", delivery.job_id, error, attempt, delay)
        except Exception:
            log.exception("webhook delivery for %s crashed", delivery.job_id)
        finally:
            self._in_flight.discard(delivery.id)
            self._wake.set()

    async def _post(self, delivery: Delivery) -> str | None:
        """One try; returns None on success, else why it failed."""
        headers = self.signer.headers(delivery, int(time.time()))
        if not self.private_networks:
            refused = await refusal(delivery.url)  # again at each try: the name's answer may have changed
            if refused is not None:
                return refused
        try:
            response = await self._client.post(delivery.url, content=delivery.body, headers=headers)
        except httpx.TimeoutException:
            return "timed out"
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"


class JwksRoutes:
    """``GET /.well-known/jwks.json``: the public key receivers verify ``x-fal-webhook-signature`` with."""

    def __init__(self, signer: WebhookSigner) -> None:
        self.signer = signer

    def routes(self) -> list[BaseRoute]:
        return [Route("/.well-known/jwks.json", self.jwks, methods=["GET"])]

    async def jwks(self, request: Request) -> JSONResponse:
        return JSONResponse(self.signer.jwks(), headers={"Cache-Control": "public, max-age=3600"})
