from __future__ import annotations

import pytest

from framewire.cluster import placement
from framewire.cluster.directory import WorkerAddress, parse_address, parse_addresses
from framewire.cluster.placement import Candidate


def test_least_loaded_counts_sessions_and_requests_then_queue_then_key() -> None:
    assert placement.least_loaded([]) is None
    assert placement.least_loaded([Candidate("a", 3, 0), Candidate("b", 1, 1), Candidate("c", 2, 1)]) == "b"
    assert placement.least_loaded([Candidate("a", 1, 0, queue_ms=5.0), Candidate("b", 1, 0, queue_ms=1.0)]) == "b"
    assert placement.least_loaded([Candidate("b", 1, 0), Candidate("a", 1, 0)]) == "a"


def test_devices_parse_and_name_the_fix() -> None:
    assert placement.parse_devices("cuda:0, cuda:1") == ["cuda:0", "cuda:1"]
    assert placement.parse_devices("cpu,cpu") == ["cpu", "cpu"]
    assert placement.parse_devices("auto") == ["auto"]
    with pytest.raises(ValueError, match="cuda:N"):
        placement.parse_devices("gpu0")
    with pytest.raises(ValueError, match="listed twice"):
        placement.parse_devices("cuda:0,cuda:0")
    with pytest.raises(ValueError, match="stands alone"):
        placement.parse_devices("auto,cpu")
    assert placement.auto_devices(2) == ["cuda:0", "cuda:1"]
    with pytest.raises(ValueError, match="--devices cpu"):
        placement.auto_devices(0)
    assert placement.worker_labels(["cuda:0", "cpu", "cpu"]) == ["cuda:0", "cpu#1", "cpu#2"]


def test_app_devices_place_apps_and_the_rest_go_everywhere() -> None:
    entries = placement.parse_app_devices(["lcm=cuda:0,cuda:1 sdxl-turbo=cuda:2"])
    assert entries == {"lcm": ["cuda:0", "cuda:1"], "sdxl-turbo": ["cuda:2"]}
    apps = ["framewire/echo", "framewire/lcm", "framewire/sdxl-turbo"]
    names = {"echo": apps[0], "lcm": apps[1], "sdxl-turbo": apps[2], "framewire/lcm": apps[1]}
    got = placement.assign_apps(apps, ["cuda:0", "cuda:1", "cuda:2"], entries, names)
    assert got == [
        ["framewire/echo", "framewire/lcm"],
        ["framewire/echo", "framewire/lcm"],
        ["framewire/echo", "framewire/sdxl-turbo"],
    ]
    # More than one app on one GPU; cpu names every CPU worker.
    assert placement.assign_apps(apps[:2], ["cpu", "cpu"], {"lcm": ["cpu"]}, names) == [apps[:2], apps[:2]]


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["lcm"], "expected APP=DEVICE"),
        (["lcm=cuda:0", "lcm=cuda:1"], "placed twice"),
    ],
)
def test_malformed_app_devices_name_the_fix(entries: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        placement.parse_app_devices(entries)


def test_app_devices_refuse_unknown_apps_devices_and_idle_workers() -> None:
    apps, names = ["framewire/lcm"], {"lcm": "framewire/lcm"}
    with pytest.raises(ValueError, match="no app 'sdxl'"):
        placement.assign_apps(apps, ["cuda:0"], {"sdxl": ["cuda:0"]}, names)
    with pytest.raises(ValueError, match="cuda:3 is not in --devices"):
        placement.assign_apps(apps, ["cuda:0"], {"lcm": ["cuda:3"]}, names)
    with pytest.raises(ValueError, match="without an app"):
        placement.assign_apps(apps, ["cuda:0", "cuda:1"], {"lcm": ["cuda:0"]}, names)


def test_worker_addresses_parse() -> None:
    assert parse_address("10.0.0.5:7100") == WorkerAddress("10.0.0.5", 7100)
    assert parse_address("[::1]:7100") == WorkerAddress("::1", 7100)
    assert str(WorkerAddress("::1", 7100)) == "[::1]:7100"
    assert parse_address("gpu-box:7100", tls=True).tls
    for bad in ("nohost", "host:", ":7100", "host:99999", "host:x"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_address(bad)
    with pytest.raises(ValueError, match="listed twice"):
        parse_addresses(["a:1", "a:1"])
