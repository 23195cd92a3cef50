"""Routes and a gateway for tests that put a real peer on both sides of `pacsguard serve` (the
round-12 peers: odil, dcmjs-dimse): a relay route and a store-and-forward route to a peer's
archive listening at (host, port), and `serve` running them from a home folder of the test."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gateway_under_test import RunningGateway, serving

from peers.dcmtk import free_port

PROGRAM = [sys.executable, "-m", "pacsguard.cli"]


def relay_route(name: str, gw: str, calling: str, upstream: tuple[str, int], aet: str,
                **policy: object) -> dict:
    """A relay route on ``gw`` (AE PACSGUARD) for ``calling`` to the archive at ``upstream``."""
    return {"name": name, "listen": {"host": gw, "port": free_port(gw), "ae_title": "PACSGUARD"},
            "upstream": {"host": upstream[0], "port": upstream[1], "ae_title": aet, "connect_timeout": 5},
            "policy": {"calling_ae_titles": [calling], **policy}}


def store_and_forward_route(name: str, gw: str, calling: str, destination: tuple[str, int], aet: str) -> dict:
    """A store-and-forward route on ``gw`` for ``calling`` with one destination, retried quickly."""
    return {"name": name, "mode": "store-and-forward",
            "listen": {"host": gw, "port": free_port(gw), "ae_title": "PACSGUARD"},
            "destinations": [{"name": "d0", "host": destination[0], "port": destination[1],
                              "ae_title": aet, "connect_timeout": 3}],
            "policy": {"calling_ae_titles": [calling]}, "spool": {"min_free_mib": 1},
            "retry": {"initial_delay": 0.2, "max_delay": 1.0}}


@contextmanager
def gateway_with(tmp_path: Path, *routes: dict) -> Iterator[RunningGateway]:
    """`pacsguard serve` with ``routes``, its home in ``tmp_path``/gw."""
    home = tmp_path / "gw"
    home.mkdir()
    with serving(home, list(routes), PROGRAM) as gw:
        yield gw
