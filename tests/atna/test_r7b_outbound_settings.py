"""`atna.outbound.stall_timeout` and `atna.outbound.max_spool_bytes` (outside round 7, wave 2) reach
the running sender and spool: the service passes them on (coordinator; before, the defaults
always applied whatever pacsguard.yaml said)."""

from __future__ import annotations

from pathlib import Path

from receiver import running
from test_outbound import pki  # noqa: F401 - pki is a fixture

from pacsguard.atna.outbound.sender import OutboundSender
from pacsguard.atna.outbound.spool import Spool
from pacsguard.atna.service import AtnaService
from pacsguard.events.bus import EventBus
from pacsguard.store import EventStore
from peers.dcmtk import free_port


def test_the_outbound_settings_reach_the_sender_and_the_spool(tmp_path: Path,
                                                              pki: dict[str, Path]) -> None:  # noqa: F811
    store = EventStore.open(str(tmp_path / "site.db"), create=True)
    outbound = {"host": "127.0.72.30", "port": free_port("127.0.72.30"), "server_name": "localhost",
                "ca_file": str(pki["ca"]), "cert_file": str(pki["client"]), "key_file": str(pki["client_key"]),
                "source_id": "GW-A", "spool": str(tmp_path / "spool.db"), "retry": 30,
                "stall_timeout": 7, "max_spool_bytes": 2 * 1024 * 1024}
    bus = EventBus(store, max_delay=0.01)

    def setup(service: AtnaService) -> None:
        service.subscribe = bus.subscribe  # as `pacsguard serve` gives it

    try:
        with running({"outbound": outbound}, store, setup) as received:
            service = received.service
            assert service is not None
            sender = next(o for o in service._outbound if isinstance(o, OutboundSender))
            spool = next(o for o in service._outbound if isinstance(o, Spool))
            assert sender.stall_timeout == 7
            assert spool.max_bytes == 2 * 1024 * 1024
    finally:
        bus.close(timeout=5)
        store.close()
