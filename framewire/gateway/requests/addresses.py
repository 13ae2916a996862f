"""Whether a URL the caller gave points at a public address (input fetches, webhooks).

A server that fetches or posts to URLs from its callers must not become their way into its
own network (cloud metadata at 169.254.169.254, admin ports on localhost, the LAN). Unless
``--private-networks`` is on, a URL's host is resolved and refused when any of its addresses
is loopback, private, link-local, multicast or otherwise not global. The connection resolves
the name again: a name whose answer changes in between (DNS rebinding) is not caught here,
an egress firewall is the complete guard.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

#: What the refusals tell an operator to do.
SWITCH = "--private-networks"


class PrivateAddress(ValueError):
    """The URL's host is, or resolves to, an address that is not public; the message says which."""


def not_public(address: str) -> str | None:
    """``address`` (an IP, IPv6 scope allowed) when it is not a public unicast address, else None."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return None if ip.is_global and not ip.is_multicast else str(ip)


async def refusal(url: str) -> str | None:
    """Why ``url`` may not be reached (its host is not public, or cannot be resolved), or None."""
    try:
        await check_public(url)
    except PrivateAddress as exc:
        return str(exc)
    except (OSError, ValueError) as exc:  # gaierror is an OSError; a malformed host a ValueError
        return f"cannot resolve the host of {url} ({exc})"
    return None


async def check_public(url: str) -> None:
    """Raise :class:`PrivateAddress` unless every address of ``url``'s host is public.

    An unresolvable host raises ``OSError`` (``socket.gaierror``), a malformed one ``ValueError``.
    """
    parts = urlsplit(url)
    host = parts.hostname
    if not host:
        raise ValueError(f"{url} has no host")
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for info in infos:
        address = not_public(str(info[4][0]))
        if address is not None:
            raise PrivateAddress(
                f"{url} resolves to {address}, which is not a public address; this server reaches public "
                f"addresses only (start it with {SWITCH} to allow)"
            )
