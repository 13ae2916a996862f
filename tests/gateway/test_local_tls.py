"""``serve --tls-self-signed``: a local CA in the data dir, https/wss, and the official fal
client trusting it through SSL_CERT_FILE alone."""

from __future__ import annotations

import datetime
import os
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509

from framewire import cli
from framewire.gateway import certificates
from tests.conftest import ROOT, free_port

NAMES = ("localhost", "127.0.0.1", "::1")


def test_the_ca_is_kept_and_the_server_certificate_renewed_only_when_needed(tmp_path: Path) -> None:
    first = certificates.ensure(tmp_path, NAMES)
    assert oct(first.keyfile.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "ca-key.pem").stat().st_mode & 0o777) == "0o600"
    # The bundle holds public roots and the CA, and verifies the server certificate.
    context = ssl.create_default_context(cafile=str(first.ca_bundle))
    assert len(context.get_ca_certs()) > 10
    ca = x509.load_pem_x509_certificate(first.ca_file.read_bytes())
    server = x509.load_pem_x509_certificate(first.certfile.read_bytes())
    server.verify_directly_issued_by(ca)
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in sans.get_values_for_type(x509.DNSName)

    cert_1, ca_pem = first.certfile.read_bytes(), first.ca_file.read_bytes()
    assert certificates.ensure(tmp_path, NAMES).certfile.read_bytes() == cert_1  # still valid: kept
    cert_2 = certificates.ensure(tmp_path, (*NAMES, "framewire.lan")).certfile.read_bytes()
    assert cert_2 != cert_1  # a new name: made again
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=certificates.SERVER_DAYS - 10)
    assert certificates.ensure(tmp_path, NAMES, now=later).certfile.read_bytes() != cert_2  # about to expire
    assert first.ca_file.read_bytes() == ca_pem  # always by the same CA


def test_tls_self_signed_refuses_to_be_combined_with_a_certificate_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", "--tls-self-signed", "--ssl-certfile", "c.pem", "--ssl-keyfile", "k.pem"]
    assert cli.main([*argv, "--data-dir", str(tmp_path)]) == 2
    assert "--tls-self-signed makes its own certificate" in capsys.readouterr().err


def test_the_fal_client_works_against_a_self_signed_server_with_ssl_cert_file(tmp_path: Path) -> None:
    """Realtime (use_jwt=False: the key goes to this server, never to fal's token host), run and queue."""
    port, queue_port = free_port(), free_port()
    data = tmp_path / "data"
    cmd = [sys.executable, "-m", "framewire.cli", "serve", "--tls-self-signed", "--port", str(port)]
    cmd += ["--queue-port", str(queue_port), "--builtin-apps", "echo", "--data-dir", str(data)]
    cmd += ["--auth", "--api-key", "k1:s3cret", "--log-level", "warning", "--log-format", "json"]
    script = textwrap.dedent(
        """
        import fal_client
        with fal_client.realtime("framewire/echo", use_jwt=False) as conn:
            conn.send({"prompt": "over wss", "image_url": b"not really a jpeg"})
            out = conn.recv()
            print(out["prompt"], out["timings"]["batch_size"])
        print(fal_client.run("framewire/echo", {"prompt": "over https"})["prompt"])
        print(fal_client.submit("framewire/echo", {"prompt": "queued"}).get()["prompt"])
        """
    )
    bundle = data / "tls" / "ca-bundle.pem"
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    context = ssl.create_default_context(cafile=str(bundle))
                    with urllib.request.urlopen(f"https://localhost:{port}/ready", context=context, timeout=1):
                        break
                except (OSError, ssl.SSLError):
                    assert proc.poll() is None and time.monotonic() < deadline, "the server did not come up"
                    time.sleep(0.2)
            env = {
                **os.environ,
                "FAL_RUN_HOST": f"localhost:{port}",
                "FAL_QUEUE_RUN_HOST": f"localhost:{queue_port}",
                "SSL_CERT_FILE": str(bundle),
                "FAL_KEY": "k1:s3cret",
            }
            done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
            # Without the CA a client refuses the server: the trust comes from that one file.
            with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
                urllib.request.urlopen(f"https://localhost:{port}/health", context=ssl.create_default_context())
        finally:
            proc.terminate()
            output, _ = proc.communicate(timeout=15)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["over wss 1", "over https", "queued"]
    assert f"export SSL_CERT_FILE={bundle}" in output  # the line a user copies
