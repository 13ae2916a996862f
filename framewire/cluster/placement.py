"""Where work goes: which worker takes a session or a request, which apps run on which device.

Pure functions over plain values; the edge (:mod:`framewire.cluster.edge`) and the
command line feed them what they know.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

_CUDA = re.compile(r"^cuda:(\d+)$")


@dataclass(frozen=True)
class Candidate:
    """A worker that serves the app and is ready, with what is known of its load."""

    key: str
    sessions: float  # realtime streams open there, from every edge (estimated between reports)
    calls: int  # requests queued or running there
    queue_ms: float = 0.0  # recent mean wait of a batch's inputs


def least_loaded(candidates: Iterable[Candidate]) -> str | None:
    """The key of the candidate with the fewest sessions and requests (None when there is none).

    Ties go to the shorter recent queue, then to the lower key, so the choice is stable.
    """
    best = min(candidates, key=lambda c: (c.sessions + c.calls, c.queue_ms, c.key), default=None)
    return None if best is None else best.key


def parse_devices(text: str) -> list[str]:
    """``"cuda:0,cuda:1"``, ``"cpu"``, ``"cpu,cpu"`` or ``"auto"`` → the list as written.

    ``auto`` stays a single item (the caller asks the machine for its GPUs). ValueError,
    naming the fix, for anything else.
    """
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError("--devices: give cuda:0,cuda:1,..., cpu, or auto")
    if "auto" in items:
        if items != ["auto"]:
            raise ValueError("--devices auto stands alone (it means every visible GPU)")
        return items
    seen: set[str] = set()
    for item in items:
        if item != "cpu" and not _CUDA.match(item):
            raise ValueError(f"--devices: {item!r} is not a device; write cuda:N (one worker per GPU) or cpu")
        if item != "cpu" and item in seen:
            raise ValueError(f"--devices: {item} is listed twice; one worker per GPU serves all the apps placed on it")
        seen.add(item)
    return items


def auto_devices(gpus: int) -> list[str]:
    """``--devices auto`` on a machine with ``gpus`` visible GPUs."""
    if gpus < 1:
        raise ValueError("--devices auto found no GPU (nvidia-smi lists none); use --devices cpu for a CPU worker")
    return [f"cuda:{i}" for i in range(gpus)]


def worker_labels(devices: Sequence[str]) -> list[str]:
    """One label per worker: the device, numbered when a device repeats (``cpu#1``, ``cpu#2``)."""
    counts = {d: devices.count(d) for d in devices}
    seen: dict[str, int] = {}
    labels = []
    for device in devices:
        seen[device] = seen.get(device, 0) + 1
        labels.append(device if counts[device] == 1 else f"{device}#{seen[device]}")
    return labels


def parse_app_devices(entries: Sequence[str]) -> dict[str, list[str]]:
    """``["lcm=cuda:0,cuda:1", "sdxl-turbo=cuda:2"]`` → ``{"lcm": ["cuda:0", "cuda:1"], ...}``.

    Each entry is ``APP=DEVICE[,DEVICE...]``; several may share one string, separated by
    spaces or semicolons.
    """
    out: dict[str, list[str]] = {}
    for entry in (part for text in entries for part in re.split(r"[;\s]+", text) if part):
        app, sep, devices = entry.partition("=")
        if not sep or not app or not devices:
            raise ValueError(f"--app-devices {entry!r}: expected APP=DEVICE[,DEVICE...], e.g. lcm=cuda:0,cuda:1")
        if app in out:
            raise ValueError(f"--app-devices: {app} is placed twice; list all its devices in one entry")
        out[app] = [d.strip() for d in devices.split(",") if d.strip()]
    return out


def assign_apps(
    apps: Sequence[str],
    devices: Sequence[str],
    app_devices: Mapping[str, Sequence[str]],
    names: Mapping[str, str],
) -> list[list[str]]:
    """The app ids each worker (one per entry of ``devices``) serves.

    ``apps`` are app ids in load order; ``names`` maps every accepted name of an app (its
    id, aliases and built-in short name) to its id. An app without an entry in
    ``app_devices`` runs on every device. ``cpu`` in an entry means every CPU worker.
    ValueError, naming the fix, for an unknown app or device, or a worker left without apps.
    """
    placed: dict[str, set[str]] = {}
    for name, wanted in app_devices.items():
        app_id = names.get(name)
        if app_id is None:
            raise ValueError(f"--app-devices: no app {name!r} is loaded (loaded: {', '.join(apps)})")
        for device in wanted:
            if device not in devices:
                raise ValueError(f"--app-devices {name}={device}: {device} is not in --devices ({', '.join(devices)})")
        placed[app_id] = set(wanted)
    out: list[list[str]] = []
    for label, device in zip(worker_labels(devices), devices, strict=True):
        mine = [app for app in apps if app not in placed or device in placed[app]]
        if not mine:
            raise ValueError(f"--app-devices leaves the worker on {label} without an app; drop it from --devices")
        out.append(mine)
    return out
