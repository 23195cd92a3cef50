"""The IDS's default settings as plain data.

`pacsguard ids read` without a pacsguard.yaml runs on these, without loading the configuration
machinery: pydantic and the configuration models are most of a short run's start-up
(docs/PERFORMANCE.md, "CLI start-up"). :class:`pacsguard.ids.settings.IdsSettings`, the validated
``ids:`` section, takes every default from here; tests/ids/test_settings.py holds the two to the
same fields and values, so neither can drift from the other.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from types import MappingProxyType
from typing import Any

#: RFC 1918 private ranges and loopback (RFC 1122 3.2.1.3, RFC 4291 2.5.3).
INTERNAL_NETWORKS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "127.0.0.0/8", "::1/128")
#: The registered DICOM ports (PS3.8 Annex G: 104, 11112; 2761/2762 DICOM over TLS) and Orthanc's 4242.
DICOM_PORTS = (104, 11112, 4242, 2761, 2762)


def default_networks() -> list[IPv4Network | IPv6Network]:
    return [ip_network(n) for n in INTERNAL_NETWORKS]


def default_dicom_ports() -> list[int]:
    return list(DICOM_PORTS)


def _empty() -> Mapping[str, Any]:
    return MappingProxyType({})


@dataclass(frozen=True)  # no slots: IdsSettings reads the scalar defaults off the class
class IdsDefaults:
    """The ``ids:`` section as it is when pacsguard.yaml does not set it (field docs: IdsSettings)."""

    internal_networks: list[IPv4Network | IPv6Network] = field(default_factory=default_networks)
    dicom_ports: list[int] = field(default_factory=default_dicom_ports)
    known_ae_titles: list[str] | None = None
    move_destinations: list[str] | None = None
    document_sources: list[str] | None = None
    rules_dirs: list[Path] = field(default_factory=list)
    builtin_rules: bool = True
    disabled_rules: list[str] = field(default_factory=list)
    thresholds: Mapping[str, Any] = field(default_factory=_empty)
    actions: Mapping[str, Any] = field(default_factory=_empty)
    limits: Mapping[str, Any] = field(default_factory=_empty)
    # Empty by default; the overrides' models live in ids/settings.py (no pydantic here).
    suppress: list[Any] = field(default_factory=list)
    expect_for: str = "2m"
    max_expected_connections: int = 4096
    max_tracked_sources: int = 100_000
    max_tracked_flows: int = 65_536
    max_alerts_per_flow: int = 10
    vlan_tracking: bool = True

    def ref(self, name: str) -> list[Any] | None:
        """The settings list a rule names as ``$name`` (None when it is not set)."""
        value: list[Any] | None = getattr(self, name)
        return value

