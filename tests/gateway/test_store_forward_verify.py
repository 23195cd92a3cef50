"""The C-FIND that asks a destination about an object in doubt (verify.py) ends as soon as the
destination aborts, even when pynetdicom's reactor thread takes the wake-up meant for the waiting
request (its race: the request then waited the whole DIMSE timeout, 30 s, in a CI run against
Orthanc, which aborts a C-FIND from an AE title it does not know). The destination here is a
real pynetdicom SCP that aborts on every C-FIND; the race is made certain by dropping the
wake-ups pynetdicom's own threads queue."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]
from test_store_forward_units import meta

from pacsguard.config.schema import Destination
from pacsguard.gateway.store_forward import verify
from pacsguard.gateway.store_forward.scu import associate
from pacsguard.gateway.store_forward.spool import Spool
from peers.dcmtk import free_port


@pytest.fixture
def aborting_scp() -> Iterator[int]:
    """A Study Root FIND SCP that aborts the association on every C-FIND."""
    def on_find(event: Any) -> Iterator[Any]:
        event.assoc.abort()
        yield 0xC000, None

    ae = AE(ae_title="ABORTS")
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)])
    try:
        yield port
    finally:
        server.shutdown()


class StolenWakeUps(queue.Queue):  # type: ignore[type-arg]
    """A DIMSE message queue that loses the empty messages pynetdicom's threads put on an abort, as
    when its reactor thread takes them first; the watcher's own (pacsguard-c-find-watch) arrive."""

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item == (None, None) and threading.current_thread().name != "pacsguard-c-find-watch":
            return
        super().put(item, block, timeout)


def test_a_c_find_the_destination_aborts_ends_at_once_even_when_its_wake_up_is_lost(
        aborting_scp: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pacsguard.config.loader import parse_config

    destination = Destination(name="d", host="127.0.0.1", port=aborting_scp, ae_title="ABORTS", connect_timeout=30)
    route = parse_config(f"""
gateway:
  routes:
    - name: sf
      mode: store-and-forward
      listen: {{host: 127.0.0.1, port: {free_port()}, ae_title: PACSGUARD}}
      destinations: [{{name: d, host: 127.0.0.1, port: {aborting_scp}, ae_title: ABORTS}}]
      spool: {{directory: {tmp_path / 'spool'}}}
""").gateway.routes[0]
    spool = Spool(tmp_path / "spool")
    spool.open()
    m = meta(spool, ["d"])
    spool.commit(spool.receive(m.id, Path(get_testdata_file("CT_small.dcm")).read_bytes()), m)

    def associate_losing_wake_ups(*args: Any, **kwargs: Any) -> Any:
        assoc = associate(*args, **kwargs)
        stolen = StolenWakeUps()
        while not assoc.dimse.msg_queue.empty():
            stolen.put(assoc.dimse.msg_queue.get())
        assoc.dimse.msg_queue = stolen
        return assoc

    monkeypatch.setattr(verify, "associate", associate_losing_wake_ups)
    started = time.monotonic()
    replies = verify.ask(route, destination, [m])
    took = time.monotonic() - started
    assert replies[m.id].answer is verify.Answer.CANNOT_ASK, replies
    assert took < 5, f"the C-FIND waited {took:.1f} s for a destination that had aborted"
