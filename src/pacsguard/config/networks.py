"""An address or CIDR as pacsguard.yaml and the IDS rule files take one: a module of its own, without
pydantic, so that `ids read` (its rules name networks) starts without the configuration's models."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any


def parse_network(item: Any) -> IPv4Network | IPv6Network:
    """One address (a network of one) or CIDR. A CIDR with host bits set is refused, not widened to
    its network: 10.30.1.17/16 written for one CT host would allow all of 10.30.0.0/16."""
    if isinstance(item, (IPv4Network, IPv6Network)):
        return item
    text = str(item)
    try:
        network = ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"expected an IP address or CIDR such as 10.1.0.0/16, got {item!r}") from None
    if "/" in text:
        try:
            ip_network(text)  # strict: it fails only for host bits set, now that the lenient parse passed
        except ValueError:
            raise ValueError(f"{text} has host bits set: write {text.split('/')[0]} for one host or {network} "
                             "for the network") from None
    return network
