"""The composition root's side of workers: settings, the flags local workers get, the commands."""

from __future__ import annotations

import subprocess
import sys

import pytest

from framewire import cli
from framewire.cluster.edge import RemoteEngine
from framewire.engine.host import LocalEngine
from framewire.gateway import settings as settings_mod
from framewire.gateway.settings import Settings
from tests.conftest import ROOT

SECRET = "s" * 40


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"workers": ("10.0.0.5:7100",)}, "--workers needs --worker-secret"),
        ({"worker_secret": "short"}, "at least 32 bytes"),
        ({"app_devices": ("lcm=cuda:0",)}, "give --devices too"),
        ({"worker_cafile": "ca.pem"}, "give --workers too"),
        ({"worker_heartbeat_s": 2.0, "worker_timeout_s": 1.0}, "below --worker-timeout-s"),
    ],
)
def test_worker_settings_errors_name_the_fix(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings_mod.validate(Settings(**changes))  # type: ignore[arg-type]


def test_app_devices_keep_their_commas_from_flags_and_environment() -> None:
    parsed = settings_mod.from_sources(
        {"devices": "cuda:0,cuda:1,cuda:2", "app_devices": ["lcm=cuda:0,cuda:1", "sdxl-turbo=cuda:2"]}, env={}
    )
    assert parsed.app_devices == ("lcm=cuda:0,cuda:1", "sdxl-turbo=cuda:2")
    env = {"FRAMEWIRE_DEVICES": "cuda:0,cuda:1", "FRAMEWIRE_APP_DEVICES": "lcm=cuda:0,cuda:1; echo=cuda:1"}
    assert settings_mod.from_sources({}, env=env).app_devices == ("lcm=cuda:0,cuda:1", "echo=cuda:1")


def test_local_workers_get_the_edges_app_and_engine_flags() -> None:
    settings = Settings(
        builtin_apps=("echo", "lcm"),
        apps=("tests.cluster.apps:SleepApp",),
        weights=("lcm=/models/lcm",),
        tiny_vae=True,
        kernels=False,
        max_batch_size=4,
        batch_buckets=(1, 4),
        devices="cuda:0,cuda:1",
        app_devices=("lcm=cuda:1",),
    )
    registry = cli.build_registry(settings)
    commands = cli.local_worker_commands(settings, registry)
    assert [c.label for c in commands] == ["cuda:0", "cuda:1"]
    first, second = (list(c.argv) for c in commands)
    flags = first[first.index("worker") + 1 :]
    assert flags[flags.index("--builtin-apps") + 1] == "echo,lcm"
    assert flags[flags.index("--app") + 1] == "tests.cluster.apps:SleepApp"
    assert flags[flags.index("--weights") + 1] == "lcm=/models/lcm"
    assert "--tiny-vae" in flags and "--no-kernels" in flags
    assert flags[flags.index("--max-batch-size") + 1] == "4"
    assert flags[flags.index("--batch-buckets") + 1] == "1,4"
    assert flags[flags.index("--device") + 1] == "cuda:0"
    assert flags[flags.index("--only-apps") + 1] == "framewire/echo,test/sleep"  # lcm only on cuda:1
    assert second[second.index("--only-apps") + 1] == "framewire/echo,framewire/lcm,test/sleep"
    assert "--worker-secret" not in first  # the secret travels in the environment only


def test_the_engine_is_in_process_unless_workers_are_asked_for() -> None:
    assert isinstance(
        cli.build_engine(Settings(builtin_apps=("echo",)), cli.build_registry(Settings()), None), LocalEngine
    )
    remote = Settings(builtin_apps=("echo",), workers=("127.0.0.1:7100",), worker_secret=SECRET)
    assert isinstance(cli.build_engine(remote, cli.build_registry(remote), None), RemoteEngine)


def test_framewire_worker_refuses_to_start_without_a_good_secret() -> None:
    cmd = [sys.executable, "-m", "framewire.cli", "worker", "--builtin-apps", "echo", "--port", "0"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={"PATH": "/usr/bin"}, timeout=60)
    assert done.returncode == 2 and "needs --worker-secret" in done.stderr
    done = subprocess.run([*cmd, "--worker-secret", "short"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "at least 32 bytes" in done.stderr
    done = subprocess.run(
        [*cmd, "--only-apps", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin", "FRAMEWIRE_WORKER_SECRET": SECRET},
    )
    assert done.returncode == 2 and "--only-apps: no app 'nope'" in done.stderr
