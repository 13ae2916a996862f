"""Where the workers are: the seam between an edge and whatever knows its workers.

An edge keeps one link to every address its directory lists and follows the list as it
changes. Today's directories are a static list (``--workers``) and the workers an edge
starts itself (``--devices``, :mod:`framewire.cluster.spawn`); a shared registry (workers
announcing themselves with leases) fits the same :class:`Directory` protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class WorkerAddress:
    """A worker's link address; ``label`` is how a local worker is known (its device);
    ``tls``: the link runs over TLS."""

    host: str
    port: int
    label: str = ""
    tls: bool = False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_address(text: str, tls: bool = False) -> WorkerAddress:
    """``host:port`` or ``[v6]:port`` → :class:`WorkerAddress`; ValueError naming the fix."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--workers: {text!r} is not HOST:PORT (e.g. 10.0.0.5:7100 or [::1]:7100)")
    return WorkerAddress(host, int(port), tls=tls)


def parse_addresses(items: Sequence[str], tls: bool = False) -> list[WorkerAddress]:
    found = [parse_address(item, tls) for item in items]
    seen: set[tuple[str, int]] = set()
    for address in found:
        key = (address.host, address.port)
        if key in seen:
            raise ValueError(f"--workers: {address} is listed twice")
        seen.add(key)
    return found


class Directory(Protocol):
    """A source of worker addresses. Methods run on the edge's event loop."""

    def addresses(self) -> list[WorkerAddress]:
        """The workers to connect to now."""

    def watch(self, on_change: Callable[[], None]) -> None:
        """Call ``on_change`` whenever :meth:`addresses` would answer differently."""

    async def start(self) -> None:
        """Begin (e.g. start local worker processes)."""

    async def stop(self, timeout_s: float) -> None:
        """End (e.g. stop local worker processes, bounded by ``timeout_s``)."""


class StaticDirectory:
    """A fixed list of addresses (``--workers``)."""

    def __init__(self, addresses: Sequence[WorkerAddress]) -> None:
        self._addresses = list(addresses)

    def addresses(self) -> list[WorkerAddress]:
        return list(self._addresses)

    def watch(self, on_change: Callable[[], None]) -> None:
        return None  # never changes

    async def start(self) -> None:
        return None

    async def stop(self, timeout_s: float) -> None:
        return None


class Directories:
    """Several directories seen as one (e.g. local workers plus remote ones)."""

    def __init__(self, parts: Sequence[Directory]) -> None:
        self.parts = list(parts)

    def addresses(self) -> list[WorkerAddress]:
        return [address for part in self.parts for address in part.addresses()]

    def watch(self, on_change: Callable[[], None]) -> None:
        for part in self.parts:
            part.watch(on_change)

    async def start(self) -> None:
        for part in self.parts:
            await part.start()

    async def stop(self, timeout_s: float) -> None:
        for part in self.parts:
            await part.stop(timeout_s)
