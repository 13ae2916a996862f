"""deploy/: the compose example's structure, and its services' commands run as processes.

There is no Docker daemon here. What the compose file does is the image's entrypoint
(``framewire``) with each service's command and environment, the Dockerfile's ENV, the
.env file, and Redis with deploy/redis.conf: these tests run exactly that, with the
service names and container ports mapped to 127.0.0.1 and free ports, and check that the
result is a working cluster (two edges sharing Redis and a data dir, two workers found
through the registry).
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from tests.cluster.processes import Proc, http_json
from tests.conftest import ROOT, free_port
from tests.redis_server import REDIS_SERVER, RedisServer
from tests.test_docker import stages

DEPLOY = ROOT / "deploy"
DATA_DIR = "/var/lib/framewire"  # the image's data dir (Dockerfile ENV)


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def env_example() -> dict[str, str]:
    pairs = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            pairs[name.strip()] = value.strip()
    return pairs


def redis_conf() -> dict[str, str]:
    settings = {}
    for line in (DEPLOY / "redis.conf").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.strip().partition(" ")
            settings[name] = value.strip()
    return settings


def framewire_services() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in compose()["services"].items() if s.get("image", "").startswith("framewire")}


def test_the_example_holds_redis_two_edges_two_workers_and_a_balancer() -> None:
    services = compose()["services"]
    assert set(services) == {"redis", "worker-1", "worker-2", "edge-a", "edge-b", "lb"}
    ours = framewire_services()
    assert {n for n, s in ours.items() if s["command"][0] == "serve"} == {"edge-a", "edge-b"}
    assert {n for n, s in ours.items() if s["command"][0] == "worker"} == {"worker-1", "worker-2"}
    for name, service in ours.items():
        assert service["environment"]["FRAMEWIRE_REDIS_URL"] == "redis://redis:6379/0", name
        assert service["depends_on"]["redis"]["condition"] == "service_healthy", name
        assert service["env_file"] == ".env" and service["build"]["context"] == "..", name
        assert service["stop_grace_period"] == "40s", name  # longer than the 30 s drain
    for edge in ("edge-a", "edge-b"):  # one data dir for both: uploads and results are shared
        assert services[edge]["volumes"] == ["framewire-data:/var/lib/framewire"]
    for worker in ("worker-1", "worker-2"):
        command = services[worker]["command"]
        port = command[command.index("--port") + 1]
        assert command[command.index("--advertise") + 1] == f"{worker}:{port}"  # reachable by that name
        assert services[worker]["healthcheck"] == {"disable": True}
    assert {s.name for s in stages().values()} >= {services["edge-a"]["build"]["target"]}
    assert services["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in services["redis"]["volumes"]


def test_redis_is_configured_so_an_acknowledged_submit_survives_a_restart() -> None:
    conf = redis_conf()
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "always"
    assert conf["maxmemory-policy"] == "noeviction"  # an evicted job record would be a lost job
    assert conf["save"] == '""'


def test_the_balancer_sends_http_websockets_and_queue_calls_to_both_edges() -> None:
    text = (DEPLOY / "nginx.conf").read_text()
    services = compose()["services"]
    for edge in ("edge-a", "edge-b"):
        command = services[edge]["command"]
        for flag in ("--port", "--queue-port"):
            assert f"server {edge}:{command[command.index(flag) + 1]}" in text
    assert "proxy_set_header Upgrade $http_upgrade;" in text and "proxy_buffering off;" in text
    published = {p.split(":")[0] for p in services["lb"]["ports"]}
    assert {re.search(r"listen (\d+);", block).group(1) for block in text.split("server {")[1:]} == published  # type: ignore[union-attr]


def test_env_example_gives_what_the_services_need() -> None:
    env = env_example()
    assert len(env["FRAMEWIRE_WORKER_SECRET"]) >= 32
    key_id, sep, secret = env["FRAMEWIRE_API_KEYS"].partition(":")
    assert key_id and sep and secret  # --auth on the edges needs a key to start with
    assert "deploy/.env" in (ROOT / ".gitignore").read_text()


# -- the same commands as processes ------------------------------------------------------------


class Ports:
    """Container (service, port) → a free port on 127.0.0.1."""

    def __init__(self) -> None:
        self.mapped: dict[tuple[str, int], int] = {}

    def __call__(self, service: str, port: int | str) -> int:
        return self.mapped.setdefault((service, int(port)), free_port())


def localized(service: str, command: list[str], ports: Ports) -> list[str]:
    """The command with container ports and service names mapped to this machine."""
    out = list(command)
    for flag in ("--port", "--queue-port"):
        if flag in out:
            i = out.index(flag) + 1
            out[i] = str(ports(service, out[i]))
    if "--advertise" in out:
        i = out.index("--advertise") + 1
        host, _, port = out[i].rpartition(":")
        out[i] = f"127.0.0.1:{ports(host, port)}"
    return out


def environment(service: dict[str, Any], ports: Ports, data_dir: Path) -> dict[str, str]:
    """The Dockerfile's ENV (cpu stage), then .env, then the service's environment, mapped here."""
    env = {**stages()["cpu"].env, **env_example(), **{k: str(v) for k, v in service["environment"].items()}}
    url = re.match(r"redis://(?P<host>[^:/]+):(?P<port>\d+)/(?P<db>\d+)", env["FRAMEWIRE_REDIS_URL"])
    assert url is not None
    env["FRAMEWIRE_REDIS_URL"] = f"redis://127.0.0.1:{ports(url['host'], url['port'])}/{url['db']}"
    env["FRAMEWIRE_HOST"] = "127.0.0.1"
    env.pop("FRAMEWIRE_DEMO_DIR", None)
    for volume in service.get("volumes", []):
        if volume.endswith(":" + DATA_DIR):
            env["FRAMEWIRE_DATA_DIR"] = str(data_dir)
    env.update(FRAMEWIRE_LOG_FORMAT="text", FRAMEWIRE_SHUTDOWN_TIMEOUT_S="5")
    return env


def request(port: int, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
    return http_json(port, method, path, body, {"authorization": f"Key {key}"} if key else None)


@pytest.fixture
def deployed() -> Iterator[tuple[Ports, dict[str, Proc]]]:
    if not Path(REDIS_SERVER).is_file():
        pytest.skip(f"{REDIS_SERVER} is missing: `make test` installs Debian's redis-server")
    folder = Path(tempfile.mkdtemp(prefix="framewire-deploy-"))
    ports = Ports()
    (folder / "redis").mkdir()
    server = RedisServer(folder / "redis", ports("redis", 6379))
    procs: dict[str, Proc] = {}
    try:
        # redis-server with deploy/redis.conf; only where it listens and writes differs here.
        server.start(config=[str(DEPLOY / "redis.conf"), "--port", str(server.port), "--bind", "127.0.0.1"])
        services = framewire_services()
        for name in ("worker-1", "worker-2", "edge-a", "edge-b"):
            cmd = [sys.executable, "-m", "framewire.cli", *localized(name, services[name]["command"], ports)]
            procs[name] = Proc(cmd, env=environment(services[name], ports, folder / "data"))
        yield ports, procs
    finally:
        for proc in procs.values():
            proc.stop()
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_the_services_commands_make_a_working_cluster(deployed: tuple[Ports, dict[str, Proc]]) -> None:
    ports, procs = deployed
    admin = env_example()["FRAMEWIRE_API_KEYS"]
    edges = {name: (ports(name, 8000), ports(name, 8001)) for name in ("edge-a", "edge-b")}
    deadline = time.monotonic() + 60
    for name, (port, _) in edges.items():
        while True:
            status, apps = request(port, "GET", "/v1/apps/framewire/echo", key=admin)
            if status == 200 and apps["ready_replicas"] == 2:
                break
            if time.monotonic() > deadline or procs[name].proc.poll() is not None:
                raise AssertionError(f"{name}: {status} {apps}\n{procs[name].output()[-3000:]}")
            time.sleep(0.2)
        assert sorted(w["worker"] for w in apps["workers"]) == ["worker-1", "worker-2"]
    (_, queue_a), (port_b, queue_b) = edges["edge-a"], edges["edge-b"]
    status, user = request(port_b, "POST", "/v1/keys", {"name": "user"}, key=admin)
    assert status == 201
    # A key created on b reaches a's mirror at b's notice, milliseconds later: a client retries a 401.
    while (answer := request(queue_a, "POST", "/framewire/echo", {"prompt": "through a"}, key=user["key"]))[0] == 401:
        assert time.monotonic() < deadline + 5, answer
        time.sleep(0.05)
    status, job = answer
    assert status == 200, job
    path = f"/framewire/echo/requests/{job['request_id']}"
    while request(queue_b, "GET", path + "/status", key=user["key"])[1]["status"] != "COMPLETED":
        assert time.monotonic() < deadline + 30
        time.sleep(0.05)
    status, result = request(queue_b, "GET", path, key=user["key"])
    assert status == 200 and result["prompt"] == "through a"
    store = redis.Redis(port=ports("redis", 6379), decode_responses=True)
    try:  # the server runs what deploy/redis.conf says
        assert store.info("persistence")["aof_enabled"] == 1
        assert store.config_get("appendfsync") == {"appendfsync": "always"}
        assert store.smembers("framewire:workers") == {"worker-1", "worker-2"}
    finally:
        store.close()
