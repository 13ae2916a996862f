"""The platform's command line and options: start-up checks, health, usage tables."""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from framewire import cli
from framewire.gateway import settings as s
from framewire.gateway.app import MIGRATIONS
from framewire.gateway.db import Database
from framewire.gateway.platform.usage import UsageMeter
from tests.conftest import ROOT, free_port, serve_process


def test_auth_without_any_key_is_a_startup_error_naming_both_fixes(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "framewire.cli", "serve", "--auth", "--port", str(free_port())]
    done = subprocess.run([*cmd, "--data-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "--api-key" in done.stderr and "framewire keys create" in done.stderr


def test_auth_with_only_stored_keys_starts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keys", "create", "--admin", "--data-dir", str(tmp_path)]) == 0
    key = capsys.readouterr().out.strip()
    with serve_process("--auth", "--data-dir", str(tmp_path)) as port:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/keys", headers={"Authorization": f"Key {key}"})
        with urllib.request.urlopen(request) as response:
            assert response.status == 200


def test_platform_options_are_checked_naming_the_flag() -> None:
    def parse(argv: list[str]) -> s.Settings:
        parser = argparse.ArgumentParser()
        s.add_arguments(parser)
        return s.from_sources(parser.parse_args(argv), {})

    assert parse([]).log_format == "auto" and parse([]).shutdown_timeout_s == 30.0
    assert s.from_sources({}, {"FRAMEWIRE_USAGE_RETENTION_S": "0"}).usage_retention_s == 0.0
    with pytest.raises(ValueError, match="--log-format"):
        parse(["--log-format", "xml"])
    with pytest.raises(ValueError, match="--shutdown-timeout-s"):
        parse(["--shutdown-timeout-s", "0"])
    with pytest.raises(ValueError, match="--usage-flush-interval-s"):
        parse(["--usage-flush-interval-s", "0"])


def test_health_command_exits_0_only_when_the_server_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("FRAMEWIRE_PORT", str(port))
    monkeypatch.setenv("FRAMEWIRE_HOST", "0.0.0.0")
    assert cli.main(["health"]) == 1
    with serve_process(port=port):
        assert cli.main(["health"]) == 0
        assert cli.main(["health", "--ready"]) == 0
        assert cli.main(["health", "--url", f"http://127.0.0.1:{port}/nowhere"]) == 1


def test_usage_command_prints_a_table_with_totals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def record() -> None:
        db = Database(tmp_path / "framewire.db", MIGRATIONS)
        await db.open()
        meter = UsageMeter(db)
        for _ in range(3):
            meter.record("k1", "framewire/echo", "realtime", "ok", outputs=1, compute_ms=1.5)
        meter.record("k1", "framewire/echo", "realtime", "rate_limited")
        await meter.close()
        await db.close()

    asyncio.run(record())
    assert cli.main(["usage", "--granularity", "total", "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t") == ["BUCKET", "KEY", "APP", "REQUESTS", "OUTPUTS", "ERRORS", "COMPUTE_MS", "SESSION_S"]
    assert lines[1].split("\t") == ["total", "k1", "framewire/echo", "4", "3", "1", "4.5", "0.0"]
    assert lines[-1].split("\t") == ["total", "*", "*", "4", "3", "1", "4.5", "0.0"]
    assert cli.main(["usage", "--start", "last week", "--data-dir", str(tmp_path)]) == 2
