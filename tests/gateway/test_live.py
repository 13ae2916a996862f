"""Against a real uvicorn socket: the websockets client, fal's own Python client, TLS."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import fal_client
import fal_client.client as fal_client_module
import msgpack
import pytest
import websockets

from framewire.engine.apps.echo import EchoApp
from framewire.gateway.settings import Settings
from tests.conftest import ROOT, BatchingApp, live_server, serve_process

KEY = "k1:s3cret"
SECRET = "token-secret-0123456789abcdef0123456789"


@pytest.fixture
def server() -> Iterator[str]:
    with live_server(Settings(), [EchoApp(), BatchingApp()]) as address:
        yield address


@pytest.fixture
def auth_server() -> Iterator[str]:
    with live_server(Settings(auth=True, api_keys=(KEY,), token_secret=SECRET), [EchoApp()]) as address:
        yield address


async def test_websockets_client_round_trip_over_a_real_socket(server: str) -> None:
    async with websockets.connect(f"ws://{server}/framewire/echo/realtime") as ws:
        assert ws.protocol.extensions == []  # per-message compression is off
        for i in range(5):
            await ws.send(msgpack.packb({"image_url": bytes([i]) * 48_000, "request_id": i}))
            out = msgpack.unpackb(await ws.recv())
            assert out["image"] == bytes([i]) * 48_000 and out["request_id"] == i


async def test_many_real_sessions_batch_together(server: str) -> None:
    async def session(i: int) -> list[dict[str, object]]:
        async with websockets.connect(f"ws://{server}/test/batching/realtime") as ws:
            await ws.send(msgpack.packb({"n": i, "delay_ms": 100}))
            return [msgpack.unpackb(await ws.recv())]

    outs = await asyncio.gather(*(session(i) for i in range(8)))
    assert sorted(o[0]["n"] for o in outs) == list(range(8))
    assert max(o[0]["timings"]["batch_size"] for o in outs) > 1


async def test_oversized_frame_beyond_the_hard_cap_closes_with_1009() -> None:
    with live_server(Settings(max_frame_bytes=4096), [EchoApp()]) as address:
        async with websockets.connect(f"ws://{address}/framewire/echo/realtime", max_size=None) as ws:
            await ws.send(msgpack.packb({"image_url": b"x" * 20_000}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


def point_fal_client_at(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    # fal_client reads these module globals at call time (protocol spec §10.1, option C).
    monkeypatch.setattr(fal_client_module, "REALTIME_URL_FORMAT", f"ws://{address}/")
    monkeypatch.setattr(fal_client_module, "REST_URL", f"http://{address}")


def test_fal_client_realtime_with_key_header(auth_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    point_fal_client_at(monkeypatch, auth_server)
    client = fal_client.SyncClient(key=KEY)
    with client.realtime("framewire/echo", use_jwt=False) as conn:
        conn.send({"image_url": b"\xff\xd8frame", "prompt": "via fal-client"})
        out = conn.recv()
    assert out is not None and out["image"] == b"\xff\xd8frame" and out["prompt"] == "via fal-client"


def test_fal_client_realtime_with_a_token(auth_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    point_fal_client_at(monkeypatch, auth_server)
    client = fal_client.SyncClient(key=KEY)
    try:
        with client.realtime("framewire/echo", max_buffering=4) as conn:  # fetches a token from /tokens/
            conn.send({"prompt": "tokened"})
            out = conn.recv()
    finally:
        client._client.close()  # the client caches an httpx.Client it never closes
    assert out is not None and out["prompt"] == "tokened"


def test_fal_client_sees_errors_as_realtime_error(auth_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    point_fal_client_at(monkeypatch, auth_server)
    client = fal_client.SyncClient(key=KEY)
    with client.realtime("framewire/echo", use_jwt=False) as conn:
        conn.send({"delay_ms": "soon"})
        with pytest.raises(fal_client.client.RealtimeError) as err:
            conn.recv()
        assert err.value.error == "VALIDATION_ERROR" and "delay_ms" in err.value.reason
        conn.send({"prompt": "after the error"})
        out = conn.recv()
    assert out is not None and out["prompt"] == "after the error"


def test_fal_client_with_only_the_host_changed_over_tls(tmp_path: Path) -> None:
    """Setup B of the protocol spec: FAL_RUN_HOST + SSL_CERT_FILE, nothing patched."""
    cert, key = make_self_signed_cert(tmp_path)
    settings = Settings(auth=True, api_keys=(KEY,), token_secret=SECRET, ssl_certfile=cert, ssl_keyfile=key)
    with live_server(settings, [EchoApp()]) as address:
        port = address.rsplit(":", 1)[1]
        script = textwrap.dedent(
            """
            import fal_client
            with fal_client.realtime("framewire/echo", use_jwt=False) as conn:
                conn.send({"prompt": "over tls", "image_url": b"abc"})
                out = conn.recv()
            print(out["prompt"], out["size_bytes"])
            """
        )
        env = {**os.environ, "FAL_RUN_HOST": f"localhost:{port}", "SSL_CERT_FILE": cert, "FAL_KEY": KEY}
        done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "over tls 3"


def make_self_signed_cert(folder: Path) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)


def test_framewire_serve_and_the_example_client() -> None:
    """The documented path: `framewire serve`, then examples/echo_client.py."""
    with serve_process() as port:
        done = subprocess.run(
            [sys.executable, str(ROOT / "examples" / "echo_client.py"), f"ws://127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 10 and all("48002 bytes back" in line for line in lines)
