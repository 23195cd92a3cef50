"""A network in the configuration written with host bits set (10.30.1.17/16, meant as one CT host)
is a configuration error naming the key and the value, not silently widened to 10.30.0.0/16:
`gateway.routes.N.policy.hosts` and `gateway.admin_hosts`, through `pacsguard config check` as the
other config tests run it (exit 2). A plain address and a proper network still pass."""

from __future__ import annotations

import os
import subprocess
import sys
from ipaddress import ip_network
from pathlib import Path

import pytest
import yaml

from pacsguard.config.schema import parse_network

PACSGUARD = [sys.executable, "-m", "pacsguard.cli"]


def check(home: Path, gateway: dict) -> subprocess.CompletedProcess:
    config = {"store": {"url": "var/pacsguard.db"}, "gateway": gateway}
    (home / "p.yaml").write_text(yaml.safe_dump(config))
    proc = subprocess.run([*PACSGUARD, "config", "check", "p.yaml"], cwd=home, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def a_route(hosts: list[str]) -> dict:
    return {"name": "r1", "listen": {"host": "127.0.0.1", "port": 48104, "ae_title": "GWAY"},
            "upstream": {"host": "127.0.0.1", "port": 48105, "ae_title": "PACS", "connect_timeout": 5},
            "policy": {"calling_ae_titles": ["CT1"], "hosts": hosts}}


def test_route_hosts_with_host_bits_set_are_refused(tmp_path: Path) -> None:
    proc = check(tmp_path, {"routes": [a_route(["10.30.0.0/16", "10.30.1.17/16"])]})
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert ("gateway.routes.0.policy.hosts.1: 10.30.1.17/16 has host bits set: write 10.30.1.17 for one host "
            "or 10.30.0.0/16 for the network") in proc.stderr, proc.stderr


def test_the_outside_testers_value(tmp_path: Path) -> None:
    proc = check(tmp_path, {"routes": [a_route(["127.0.0.5/8"])]})
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "gateway.routes.0.policy.hosts.0: 127.0.0.5/8 has host bits set" in proc.stderr, proc.stderr


def test_admin_hosts_with_host_bits_set_are_refused(tmp_path: Path) -> None:
    proc = check(tmp_path, {"routes": [a_route(["127.0.0.1"])], "admin_hosts": ["fd00::1/64"]})
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "gateway.admin_hosts.0: fd00::1/64 has host bits set: write fd00::1 for one host or fd00::/64" \
        in proc.stderr, proc.stderr


def test_addresses_and_proper_networks_pass(tmp_path: Path) -> None:
    proc = check(tmp_path, {"routes": [a_route(["10.30.1.17", "10.30.0.0/16", "10.30.1.17/32", "::1", "fd00::/64"])],
                            "admin_hosts": ["192.168.7.0/24", "192.168.8.9"]})
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert "gateway (gateway): OK" in proc.stdout


@pytest.mark.parametrize("text", ["10.30.1.17", "10.30.0.0/16", "10.30.1.17/32", "::1", "10.0.0.0/255.0.0.0"])
def test_parse_network_keeps_what_is_exact(text: str) -> None:
    assert parse_network(text) == ip_network(text)


def test_a_value_that_is_no_network_is_named() -> None:
    with pytest.raises(ValueError, match="expected an IP address or CIDR .* got 'ct-room'"):
        parse_network("ct-room")
