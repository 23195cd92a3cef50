"""Store-and-forward, outside round 7 (issue 19): what an administrator is told when the archive
refuses. A destination whose AE title changed rejects the association with "called AE title not
recognised" (PS3.8 9.3.4, Table 9-21), one that does not know the route's AE title with "calling
AE title not recognised"; an archive with a full disk answers 0xA700 with an Error Comment
(PS3.4 B.2.3, PS3.7 C.4.2.1.2); one that does not take an object's transfer syntax accepts no
context for it (PS3.8 9.3.3.2). Before, the events and `spool list` said only "rejected the
association", "status 0xA700" and two bare UIDs: the reason, which says what to fix, was dropped.

In process: a spool, one Forwarder, pynetdicom as the destination, on 127.0.62.4."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from saf_spool import spool_file
from test_r7_saf_spool_files import route_to as spool_files_route
from test_store_forward import fresh_ct, wait_until

from pacsguard.config.schema import Route
from pacsguard.events import Event
from pacsguard.gateway.store_forward.forwarder import Forwarder
from pacsguard.gateway.store_forward.spool import Spool
from peers.dcmtk import free_port

pytestmark = [pytest.mark.peers, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

HOST = "127.0.62.4"  # this round's own loopback address


class Archive:
    """pynetdicom as a Storage SCP on ``HOST`` answering each C-STORE with ``status`` and
    ``comment`` as its Error Comment; ``ae_title`` and what it requires of the association."""

    def __init__(self, *, ae_title: str = "ARCHIVE", status: int = 0x0000, comment: str = "",
                 require_called: bool = False, calling: list[str] | None = None,
                 syntaxes: list[str] | None = None) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        self.status, self.comment = status, comment
        self.stores = 0
        ae = AE(ae_title=ae_title)
        ae.require_called_aet = require_called
        if calling is not None:
            ae.require_calling_aet = calling
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, syntaxes or ALL_TRANSFER_SYNTAXES)
        self.port = free_port(HOST)
        self.server = ae.start_server((HOST, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event: Any) -> Dataset:
        self.stores += 1
        answer = Dataset()
        answer.Status = self.status
        if self.comment:
            answer.ErrorComment = self.comment
        return answer


@pytest.fixture
def archives() -> Iterator[list[Archive]]:
    started: list[Archive] = []
    yield started
    for a in started:
        a.server.shutdown()


def route_to(port: int) -> Route:
    return spool_files_route(port, HOST)


def forward_once(tmp_path: Path, archive: Archive, path: Path | None = None) -> tuple[list[Event], Spool, str]:
    """Spool one CT (or ``path``) for the archive and run a Forwarder until it recorded a
    failure; its events, the spool (open) and the object's spool id."""
    spool = Spool(tmp_path / "spool")
    spool.open()
    meta = spool_file(spool, path or fresh_ct(tmp_path / "ct", 1, kib=16)[0], ["arc"])
    route = route_to(archive.port)
    events: list[Event] = []
    forwarder = Forwarder(route, route.destinations[0], spool, events.append)
    forwarder.add(meta)
    forwarder.start()
    try:
        wait_until(lambda: any(e.kind == "gateway.object.delayed" for e in events), 15, "the failure recorded")
    finally:
        forwarder.stop()
    return events, spool, meta.id


@pytest.mark.parametrize(("archive_kwargs", "expected"), [
    ({"ae_title": "ARCHIVE2", "require_called": True},
     "rejected the association: called-ae-not-recognized (permanent, PS3.8 Table 9-21); "
     "is its AE title still ARCHIVE?"),
    ({"calling": ["SOMEONE"]},
     "rejected the association: calling-ae-not-recognized (permanent, PS3.8 Table 9-21); "
     "it must know the route's AE title as a modality"),
], ids=["its-ae-title-changed", "it-does-not-know-the-route"])
def test_a_rejected_association_says_why(tmp_path: Path, archives: list[Archive], archive_kwargs: dict[str, Any],
                                         expected: str) -> None:
    archive = Archive(**archive_kwargs)
    archives.append(archive)
    events, spool, object_id = forward_once(tmp_path, archive)
    delayed = next(e for e in events if e.kind == "gateway.object.delayed")
    assert delayed.details["error"] == f"ARCHIVE@{HOST}:{archive.port} {expected}", delayed.details["error"]
    assert archive.stores == 0
    # `spool list` shows the destination's failure with the same words for the object waiting.
    (entry,) = [e for e in spool.entries(["arc"]) if e.meta.id == object_id]
    assert expected in entry.failures["arc"]["error"] and entry.failures["arc"]["destination"] is True
    spool.close()


def test_a_failure_status_is_named_with_the_destinations_error_comment(tmp_path: Path,
                                                                       archives: list[Archive]) -> None:
    archive = Archive(status=0xA700, comment="disk /var/lib/orthanc full")
    archives.append(archive)
    events, spool, object_id = forward_once(tmp_path, archive)
    delayed = next(e for e in events if e.kind == "gateway.object.delayed")
    assert delayed.details["error"] == "status 0xA700 (out of resources): disk /var/lib/orthanc full"
    assert delayed.details["spool_id"] == object_id
    (entry,) = [e for e in spool.entries(["arc"]) if e.meta.id == object_id]
    assert entry.failures["arc"]["error"] == "status 0xA700 (out of resources): disk /var/lib/orthanc full"
    spool.close()


def test_an_object_in_a_syntax_the_destination_does_not_take_is_named_with_what_to_do(
        tmp_path: Path, archives: list[Archive]) -> None:
    """It said "for 1.2.840.10008.5.1.4.1.1.7 in 1.2.840.10008.1.2.4.70", for ever, each retry:
    nothing an administrator reads, nor what to change (the route's accepted_transfer_syntaxes)."""
    from pydicom.data import get_testdata_file

    archive = Archive(syntaxes=["1.2.840.10008.1.2.1"])  # Explicit VR Little Endian only
    archives.append(archive)
    events, spool, object_id = forward_once(tmp_path, archive, Path(get_testdata_file("JPEG-LL.dcm")))
    delayed = next(e for e in events if e.kind == "gateway.object.delayed")
    error = delayed.details["error"]
    assert "Secondary Capture Image Storage (1.2.840.10008.5.1.4.1.1.7)" in error, error
    assert "JPEG Lossless, Non-Hierarchical, First-Order Prediction" in error and "(1.2.840.10008.1.2.4.70)" in error
    assert "accepted_transfer_syntaxes" in error and archive.stores == 0
    (entry,) = [e for e in spool.entries(["arc"]) if e.meta.id == object_id]
    assert entry.failures["arc"]["error"] == error
    spool.close()


@pytest.mark.parametrize(("status", "comment", "text"), [
    (0xA7F0, "", "status 0xA7F0 (out of resources)"),
    (0xA900, "", "status 0xA900 (data set does not match SOP class)"),
    (0xC123, "bad pixel data", "status 0xC123 (cannot understand): bad pixel data"),
    (0x0124, "", "status 0x0124 (not authorized)"),
    (0xD001, "", "status 0xD001"),  # no meaning the standard gives: the value alone
])
def test_status_text_names_the_standards_meaning(status: int, comment: str, text: str) -> None:
    from pacsguard.gateway.store_forward.sender import status_text  # new in round 7

    assert status_text(status, comment) == text
