"""Store-and-forward, outside round 7 (issue 19): a spooled file changed outside pacsguard between
its Success to the modality and its forwarding (cut short, emptied, appended to, its File Meta
Information overwritten, replaced by a link: a file-system repair, a careless script, an
administrator's editor).

Before, an unreadable File Meta Information raised out of the sender: the forwarder logged a
traceback, re-queued the whole batch and raised again each round, so every object behind it in
its batch waited for ever (in doubt, asked with a C-FIND each round, never sent). A file cut
short or appended to was sent as it was, a data set that is not what the modality was told was
stored. Now each is undeliverable (recorded, never sent, nothing behind it held back), listed as
damaged and named at the next start; its ID.json records its size (`SpooledMeta.bytes`).

In process: a spool, one Forwarder, pynetdicom as the destination's Storage SCP, on 127.0.62.3."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from saf_spool import spool_file
from test_store_forward import fresh_ct, wait_until

from pacsguard.config.loader import parse_config
from pacsguard.config.schema import Route
from pacsguard.events import Event
from pacsguard.gateway.store_forward.forwarder import Forwarder
from pacsguard.gateway.store_forward.spool import Spool
from peers.dcmtk import free_port

pytestmark = [pytest.mark.peers, pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

HOST = "127.0.62.3"  # this round's own loopback address


class CountingArchive:
    """pynetdicom as a Storage SCP on ``HOST``: how often each SOP Instance UID was stored."""

    def __init__(self) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        self.stores: Counter[str] = Counter()
        ae = AE(ae_title="ARCHIVE")
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        self.port = free_port(HOST)
        self.server = ae.start_server((HOST, self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event) -> int:  # type: ignore[no-untyped-def]
        self.stores[str(event.request.AffectedSOPInstanceUID)] += 1
        return 0x0000


@pytest.fixture
def archive() -> Iterator[CountingArchive]:
    scp = CountingArchive()
    yield scp
    scp.server.shutdown()


def route_to(port: int, host: str = HOST) -> Route:
    """A store-and-forward route on ``host`` to the archive listening there on ``port``."""
    return parse_config(f"""
gateway:
  routes:
  - name: sf
    mode: store-and-forward
    listen: {{host: {host}, port: {free_port(host)}, ae_title: PACSGUARD}}
    destinations: [{{name: arc, host: {host}, port: {port}, ae_title: ARCHIVE, connect_timeout: 3}}]
    retry: {{initial_delay: 0.2, max_delay: 0.2, batch: 64}}
""").gateway.routes[0]


def overwrite_magic(path: Path) -> None:
    """"DICM" (PS3.10 7.1) overwritten in place: the same size, a header no parser reads."""
    data = bytearray(path.read_bytes())
    data[128:132] = b"XXXX"
    path.write_bytes(bytes(data))


def cut_in_meta(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:150])


def cut_in_data_set(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1000])


def appended(path: Path) -> None:
    path.write_bytes(path.read_bytes() + b"\0" * 7)


def emptied(path: Path) -> None:
    path.write_bytes(b"")


CHANGES: dict[str, Callable[[Path], None]] = {
    "file-meta-overwritten": overwrite_magic, "cut-in-file-meta": cut_in_meta,
    "cut-in-data-set": cut_in_data_set, "appended": appended, "emptied": emptied}
REASONS = {"file-meta-overwritten": "File Meta Information (PS3.10 7.1) cannot be read",
           "cut-in-file-meta": "is 150 bytes", "cut-in-data-set": "when it was acknowledged",
           "appended": "when it was acknowledged", "emptied": "is 0 bytes"}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_spooled_file_changed_outside_pacsguard_is_never_sent_and_holds_back_nothing(
        tmp_path: Path, archive: CountingArchive, change: str) -> None:
    files = fresh_ct(tmp_path / "ct", 3, kib=16, patient="CHANGED")
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    route = route_to(archive.port)
    spool = Spool(tmp_path / "spool")
    spool.open()
    metas = [spool_file(spool, path, ["arc"]) for path in files]
    CHANGES[change](spool.object_path(metas[1].id))  # the middle one of the batch
    events: list[Event] = []
    forwarder = Forwarder(route, route.destinations[0], spool, events.append)
    for meta in metas:
        forwarder.add(meta)
    forwarder.start()
    try:
        wait_until(lambda: set(archive.stores) == {uids[0], uids[2]}, 15, "the objects around it forwarded")
        wait_until(lambda: any(e.kind == "gateway.object.undeliverable" for e in events), 10, "recorded")
        time.sleep(0.6)  # retries, were there any, would come now
    finally:
        forwarder.stop()
    assert dict(archive.stores) == {uids[0]: 1, uids[2]: 1}  # the changed file never sent
    undeliverable = [e for e in events if e.kind == "gateway.object.undeliverable"]
    assert len(undeliverable) == 1, [e.message for e in undeliverable]
    details = undeliverable[0].details
    assert (details["spool_id"], details["sop_instance"]) == (metas[1].id, uids[1])
    assert REASONS[change] in details["reason"], details["reason"]
    assert undeliverable[0].patient_ids == ("CHANGED",)
    # No round failed as a whole (the forwarder's traceback and "the forwarder failed" each round).
    failed = [e for e in events if e.kind == "gateway.object.delayed"]
    assert failed == [], [e.details.get("error") for e in failed]
    assert spool.in_doubt(metas[1].id, ["arc"]) == []  # nothing of it was sent
    assert (spool.objects / f"{metas[1].id}.json").exists()  # kept for an administrator to purge
    spool.close()


@pytest.mark.parametrize("change", ["cut-in-data-set", "appended", "emptied"])
def test_a_spooled_file_of_another_size_is_listed_damaged_and_named_at_start(tmp_path: Path, change: str) -> None:
    files = fresh_ct(tmp_path / "ct", 2, kib=16)
    spool = Spool(tmp_path / "spool")
    spool.open()
    changed, intact = (spool_file(spool, path, ["arc"]) for path in files)
    path = spool.object_path(changed.id)
    acknowledged = path.stat().st_size
    CHANGES[change](path)
    spool.close()
    entries = {e.meta.id: e for e in spool.entries(["arc"])}
    assert entries[intact.id].state == "queued" and entries[intact.id].damage == ""
    entry = entries[changed.id]
    assert entry.state == "damaged" and entry.pending == []
    assert f"{path.stat().st_size:,} bytes, {acknowledged:,} when it was acknowledged" in entry.damage
    assert f"spool purge {changed.id} --yes" in entry.damage
    # The next start forwards the intact one only and names the other (the route records it).
    again = Spool(tmp_path / "spool")
    owed = again.open()
    try:
        assert [m.id for m in owed] == [intact.id]
        assert set(again.damaged) == {changed.id} and "when it was acknowledged" in again.damaged[changed.id]
    finally:
        again.close()


def test_a_spooled_file_replaced_by_a_link_is_damaged_and_never_sent(tmp_path: Path,
                                                                      archive: CountingArchive) -> None:
    """A link of the same size as the object (here to a copy of another file): the forwarder sent
    whatever it pointed to, as that object."""
    files = fresh_ct(tmp_path / "ct", 2, kib=16)
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    spool = Spool(tmp_path / "spool")
    spool.open()
    linked, intact = (spool_file(spool, path, ["arc"]) for path in files)
    path = spool.object_path(linked.id)
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(b"\1" * path.stat().st_size)  # the size its ID.json records
    path.unlink()
    path.symlink_to(elsewhere)
    (entry,) = [e for e in spool.entries(["arc"]) if e.meta.id == linked.id]
    assert entry.state == "damaged" and "is not a plain file" in entry.damage
    route = route_to(archive.port)
    events: list[Event] = []
    forwarder = Forwarder(route, route.destinations[0], spool, events.append)
    forwarder.add(linked)
    forwarder.add(intact)
    forwarder.start()
    try:
        wait_until(lambda: set(archive.stores) == {uids[1]}, 15, "the intact one forwarded")
        wait_until(lambda: any(e.kind == "gateway.object.undeliverable" for e in events), 10, "recorded")
    finally:
        forwarder.stop()
    assert dict(archive.stores) == {uids[1]: 1}
    (undeliverable,) = [e for e in events if e.kind == "gateway.object.undeliverable"]
    assert undeliverable.details["spool_id"] == linked.id and "not a plain file" in undeliverable.details["reason"]
    spool.close()
