"""Who may talk to idgate's listeners: a connection's peer address against configured networks.

``server.trusted_callers`` guards ``/auth`` (and ``/metrics`` on that port), ``spoa.trusted_callers`` the SPOA
agent's port. Like uvicorn's ``forwarded_allow_ips``, facts are taken only from known hops: the address checked is
the TCP peer the kernel reports, never a header. An IPv4-mapped IPv6 peer (``::ffff:10.0.0.5``, what a dual-stack
``::`` socket reports for an IPv4 client, RFC 4291 §2.5.5.2) is checked as its IPv4 address, so ``10.0.0.0/8``
matches it. Anything that is not an IP address (``None``, a Unix socket path, garbage) is untrusted.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
LOOPBACK_TEXT = ("127.0.0.1/32", "::1/128")
"""The default of every ``trusted_callers``: the host itself."""


def parse_networks(texts: Iterable[str]) -> tuple[Network, ...]:
    """``["10.0.0.0/8", "192.0.2.7"]`` → networks (host bits allowed: ``10.0.0.1/8`` is ``10.0.0.0/8``).

    Raises:
        ValueError: for a text that is not an IPv4 or IPv6 address or network.
    """
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


LOOPBACK = parse_networks(LOOPBACK_TEXT)


def is_trusted(peer: object, networks: Iterable[Network]) -> bool:
    """Whether ``peer`` (an address string such as ``"127.0.0.1"`` or ``"::1"``) lies in one of ``networks``."""
    if not isinstance(peer, str):
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
