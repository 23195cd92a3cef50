"""The forwarder's own Storage SCU (pacsguard.gateway.store_forward.sender) against real peers, in
process: a spool, one Forwarder, one destination. Every data set must arrive as spooled, byte for
byte, whatever the destination's Maximum Length (PS3.8 D.1), and over TLS."""

from __future__ import annotations

import queue
import ssl
import threading
import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from saf_spool import spool_file
from test_store_forward import dataset_bytes, fresh_ct, orthanc_bytes, wait_until

from pacsguard.config.loader import parse_config
from pacsguard.config.schema import Route
from pacsguard.events import Event
from pacsguard.gateway.store_forward.forwarder import Forwarder
from pacsguard.gateway.store_forward.spool import Spool
from pacsguard.tls import client_context, make_ca, make_cert
from peers.dcmtk import free_port

pytestmark = [pytest.mark.peers]


def sf(destination: str, retry: str = "") -> Route:
    return parse_config(f"""
gateway:
  routes:
  - name: sf
    mode: store-and-forward
    listen: {{port: {free_port()}, ae_title: PACSGUARD}}
    destinations: [{destination}]
    {retry}
""").gateway.routes[0]


def forward(route: Route, folder: Path, files: list[Path], *, in_doubt: bool = False,
            ssl_context: ssl.SSLContext | None = None) -> list[Event]:
    """Spool ``files`` for the route's destination and run one Forwarder until the spool is empty;
    the events it recorded."""
    spool = Spool(folder)
    spool.open()
    events: list[Event] = []
    destination = route.destinations[0]
    forwarder = Forwarder(route, destination, spool, events.append, ssl_context)
    for path in files:
        forwarder.add(spool_file(spool, path, [destination.key], in_doubt=in_doubt))
    forwarder.start()
    try:
        wait_until(lambda: not list(spool.objects.iterdir()), 60, "every object forwarded")
    finally:
        forwarder.stop()
        spool.close()
    return events


class RecordingSCP:
    """A pynetdicom Storage SCP that keeps each data set's bytes as received, with a chosen
    Maximum Length (0: unlimited, PS3.8 D.1), and answers C-FIND at IMAGE level from what it
    holds. With ``lose_first_answer`` it stores an object and then aborts instead of answering,
    the first time: the window where the sender cannot know whether the object arrived."""

    def __init__(self, max_pdu: int, *, lose_first_answer: bool = False, abort_on: str = "") -> None:
        from collections import Counter

        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

        self.received: dict[str, bytes] = {}
        self.stores: Counter[str] = Counter()
        self.lose_first_answer = lose_first_answer
        self.abort_on = abort_on  # a SOP Instance UID this destination aborts on, every time, unstored
        ae = AE(ae_title="RECORDER")
        ae.maximum_pdu_size = max_pdu
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        self.port = free_port()
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store), (evt.EVT_C_FIND, self._find)])

    def _store(self, event) -> int:  # type: ignore[no-untyped-def]
        uid = str(event.request.AffectedSOPInstanceUID)
        if uid == self.abort_on:
            self.stores[uid] += 1
            event.assoc.abort()
            return 0xC000
        self.received[uid] = bytes(event.request.DataSet.getvalue())
        self.stores[uid] += 1
        if self.lose_first_answer and self.stores[uid] == 1:
            event.assoc.abort()
        return 0x0000

    def _find(self, event):  # type: ignore[no-untyped-def]
        query = event.identifier
        uid = str(query.SOPInstanceUID)
        if query.QueryRetrieveLevel == "IMAGE" and uid in self.received:
            match = Dataset()
            match.QueryRetrieveLevel, match.SOPInstanceUID = "IMAGE", uid
            yield 0xFF00, match
        yield 0x0000, None


def forwarded(events: list[Event]) -> int:
    return len([e for e in events if e.kind == "gateway.object.forwarded"])


@pytest.mark.parametrize("max_pdu", [0, 4096, 131072])
def test_data_sets_arrive_as_spooled_whatever_the_maximum_length(max_pdu, tmp_path):
    scp = RecordingSCP(max_pdu)
    try:
        files = fresh_ct(tmp_path / "ct", 3, kib=1024) + fresh_ct(tmp_path / "tiny", 1, kib=1)
        route = sf(f"{{name: rec, host: 127.0.0.1, port: {scp.port}, ae_title: RECORDER}}")
        assert forwarded(forward(route, tmp_path / "spool", files)) == len(files)
        for path in files:
            uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            assert scp.received[uid] == dataset_bytes(path.read_bytes()), f"{path.name} changed on the way"
    finally:
        scp.server.shutdown()


def test_a_tls_destination_gets_every_object_as_spooled_and_answers_the_c_find(orthanc, tmp_path):
    d = tmp_path / "pki"
    ca_cert, ca_key = make_ca(d, "Test Hospital CA", 30)
    certs = {name: make_cert(d, name, ca_cert, ca_key, hosts=["127.0.0.1"], days=30, server=True, client=True)
             for name in ("gateway", "orthanc")}
    pacs = orthanc(tls=(*certs["orthanc"], ca_cert), DicomAlwaysAllowFind=True, MaximumPduLength=8192)
    cert, key = certs["gateway"]
    route = sf(f"{{name: pacs, host: 127.0.0.1, port: {pacs.dicom_port}, ae_title: {pacs.aet}, "
               f"tls: {{ca_file: {ca_cert}, cert_file: {cert}, key_file: {key}}}}}")
    context = client_context(ca_file=ca_cert, cert_file=cert, key_file=key)
    files = fresh_ct(tmp_path / "ct", 3, kib=512)
    assert forwarded(forward(route, tmp_path / "spool", files, ssl_context=context)) == len(files)
    pacs.wait_for_instances(len(files))
    stored = orthanc_bytes(pacs)
    for path in files:
        uid = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        assert dataset_bytes(stored[uid]) == dataset_bytes(path.read_bytes())

    # An object left in doubt is looked up over TLS too: found, so not sent again.
    again = forward(route, tmp_path / "again", files[:1], in_doubt=True, ssl_context=context)
    assert [(e.kind, e.details["answer"]) for e in again] == [("gateway.object.in-doubt", "found")]


def test_a_lost_answer_leaves_the_object_in_doubt_and_the_c_find_finds_it(tmp_path):
    scp = RecordingSCP(16384, lose_first_answer=True)
    try:
        files = fresh_ct(tmp_path / "ct", 2, kib=256)
        route = sf(f"{{name: rec, host: 127.0.0.1, port: {scp.port}, ae_title: RECORDER}}")
        events = forward(route, tmp_path / "spool", files)
        uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
        assert dict(scp.stores) == {uid: 1 for uid in uids}  # each stored once, though no answer came
        checks = [e for e in events if e.kind == "gateway.object.in-doubt"]
        assert sorted(e.details["sop_instance"] for e in checks) == sorted(uids)
        assert all(e.details["answer"] == "found" for e in checks)
        assert forwarded(events) == 0  # no Success was ever seen: found, not forwarded again
        assert [e.details["error"] for e in events if e.kind == "gateway.object.delayed"][0] == \
            "the association ended before every answer"
    finally:
        scp.server.shutdown()


def test_an_object_the_destination_aborts_on_does_not_hold_back_the_others(tmp_path):
    """A destination whose software aborts the association on one data set, every time: that
    object waits at the back of the queue and is retried, and the objects behind it arrive."""
    files = fresh_ct(tmp_path / "ct", 4, kib=64)
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    scp = RecordingSCP(16384, abort_on=uids[0])
    route = parse_config(f"""
gateway:
  routes:
  - name: sf
    mode: store-and-forward
    listen: {{port: {free_port()}, ae_title: PACSGUARD}}
    destinations: [{{name: rec, host: 127.0.0.1, port: {scp.port}, ae_title: RECORDER}}]
    retry: {{initial_delay: 0.1, max_delay: 0.4, batch: 64}}
""").gateway.routes[0]
    spool = Spool(tmp_path / "spool")
    spool.open()
    events: list[Event] = []
    forwarder = Forwarder(route, route.destinations[0], spool, events.append)
    for path in files:  # the one it aborts on first
        forwarder.add(spool_file(spool, path, ["rec"]))
    forwarder.start()
    try:
        wait_until(lambda: set(scp.received) == set(uids[1:]), 30, "the other objects forwarded")
        wait_until(lambda: scp.stores[uids[0]] >= 2, 30, "the aborted object retried")
    finally:
        forwarder.stop()
        scp.server.shutdown()
    assert forwarded(events) == 3
    left = {p.name.split(".")[0] for p in spool.objects.glob("*.json")}
    assert len(left) == 1  # still spooled: acknowledged to the modality, never dropped
    spool.close()


def test_a_rejected_or_unreachable_association_is_refused_with_the_reason(tmp_path):
    from pacsguard.gateway.store_forward.sender import Refused, StoreAssociation

    scp = RecordingSCP(16384)
    scp.server.ae.require_calling_aet = ["SOMEONE"]  # the route's AE title is not known there: A-ASSOCIATE-RJ
    try:
        route = sf(f"{{name: rec, host: 127.0.0.1, port: {scp.port}, ae_title: RECORDER}}")
        ct = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        with pytest.raises(Refused, match=f"^RECORDER@127.0.0.1:{scp.port} rejected the association: "
                                          "calling-ae-not-recognized"):
            StoreAssociation.open(route, route.destinations[0], [ct])
    finally:
        scp.server.shutdown()
    with pytest.raises(Refused, match=f"RECORDER@127.0.0.1:{scp.port} could not be reached"):
        StoreAssociation.open(route, route.destinations[0], [ct])
    assert scp.received == {}


def test_a_destination_that_fails_a_c_find_is_asked_no_more_on_that_association(tmp_path):
    """Orthanc refuses a C-FIND from an AE title it does not know and then aborts: a second query
    sent as the abort arrives waited the whole DIMSE timeout. One failed C-FIND answers for the
    rest of the objects in doubt (cannot ask: sent again, at-least-once)."""
    scp = RecordingSCP(16384)
    queries: list[str] = []

    def refuse(event):  # type: ignore[no-untyped-def]
        queries.append(str(event.identifier.SOPInstanceUID))
        yield 0xC000, None  # unable to process (PS3.4 C.4.1.1.4)

    from pynetdicom import evt

    scp.server.unbind(evt.EVT_C_FIND, scp._find)
    scp.server.bind(evt.EVT_C_FIND, refuse)
    try:
        files = fresh_ct(tmp_path / "ct", 3, kib=64)
        route = sf(f"{{name: rec, host: 127.0.0.1, port: {scp.port}, ae_title: RECORDER}}")
        events = forward(route, tmp_path / "spool", files, in_doubt=True)
        checks = [e for e in events if e.kind == "gateway.object.in-doubt"]
        assert len(queries) == 1 and len(checks) == 3
        assert all(e.details["answer"] == "cannot-ask" for e in checks)
        assert sum("an earlier C-FIND on the association failed" in e.details["reason"] for e in checks) == 2
        assert forwarded(events) == 3 and len(scp.received) == 3  # sent, once each
    finally:
        scp.server.shutdown()


class _LostWakeUps(queue.Queue):  # type: ignore[type-arg]
    """A DIMSE message queue that loses the empty messages pynetdicom's own threads put on an abort,
    as when its reactor thread takes them first; the watcher's (pacsguard-c-find-watch) arrive."""

    def put(self, item, block=True, timeout=None):  # type: ignore[no-untyped-def]
        if item == (None, None) and threading.current_thread().name != "pacsguard-c-find-watch":
            return
        super().put(item, block, timeout)


def test_a_c_find_the_destination_aborts_ends_at_once_even_when_its_wake_up_is_lost(tmp_path, monkeypatch):
    """pynetdicom's reactor thread can take the wake-up an abort queues for a waiting C-FIND (the
    request then waited the whole DIMSE timeout, 30 s, in a CI run against Orthanc, which aborts a
    C-FIND from an AE title it does not know). Here the race is made certain: every such wake-up
    is lost, and the destination aborts on every C-FIND."""
    from pacsguard.gateway.store_forward import verify
    from pacsguard.gateway.store_forward.scu import associate

    scp = RecordingSCP(16384)

    def abort(event):  # type: ignore[no-untyped-def]
        event.assoc.abort()
        yield 0xC000, None

    from pynetdicom import evt

    scp.server.unbind(evt.EVT_C_FIND, scp._find)
    scp.server.bind(evt.EVT_C_FIND, abort)

    def associate_losing_wake_ups(*args, **kwargs):  # type: ignore[no-untyped-def]
        assoc = associate(*args, **kwargs)
        lost = _LostWakeUps()
        while not assoc.dimse.msg_queue.empty():
            lost.put(assoc.dimse.msg_queue.get())
        assoc.dimse.msg_queue = lost
        return assoc

    try:
        route = sf(f"{{name: rec, host: 127.0.0.1, port: {scp.port}, ae_title: RECORDER}}")
        spool = Spool(tmp_path / "spool")
        spool.open()
        meta = spool_file(spool, fresh_ct(tmp_path / "ct", 1, kib=64)[0], ["rec"], in_doubt=True)
        monkeypatch.setattr(verify, "associate", associate_losing_wake_ups)
        started = time.monotonic()
        replies = verify.ask(route, route.destinations[0], [meta])
        took = time.monotonic() - started
        assert replies[meta.id].answer is verify.Answer.CANNOT_ASK, replies
        assert took < 5, f"the C-FIND waited {took:.1f} s for a destination that had aborted"
    finally:
        scp.server.shutdown()


def test_objects_that_arrive_while_a_forwarding_process_restarts_are_forwarded_once_each(tmp_path):
    """The gateway restarts a forwarding process that died while modalities go on sending: an
    object committed while the spool is read for the new process, whose add comes after the
    reading, still reaches the destination; one both read and added arrives once."""
    from pacsguard.gateway.store_forward.forwarding import ForwardingProcess

    scp = RecordingSCP(16384)
    files = fresh_ct(tmp_path / "ct", 3, kib=16)
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    route = sf(f"{{name: rec, host: 127.0.0.1, port: {scp.port}, ae_title: RECORDER}}")
    adders: list[threading.Thread] = []

    class ArrivingSpool(Spool):
        restarting = False  # open() reads the spool too: only the restart's reading races

        def waiting(self):  # type: ignore[no-untyped-def]
            owed = super().waiting()
            if not self.restarting:
                return owed
            both = spool_file(self, files[1], ["rec"])  # in the reading, and added too
            later = spool_file(self, files[2], ["rec"])  # committed after the reading: only added
            for meta in (both, later):
                adders.append(threading.Thread(target=process.add, args=(meta,)))
                adders[-1].start()
            time.sleep(0.3)  # the adds come while the spool is still being read
            return [*owed, both]

    spool = ArrivingSpool(tmp_path / "spool")
    spool.open()
    spool_file(spool, files[0], ["rec"])
    spool.restarting = True
    events: list[Event] = []
    process = ForwardingProcess(route, spool, list(route.destinations), events.append)
    try:
        process.start()
        wait_until(lambda: set(scp.received) == set(uids), 30, "every object forwarded")
        wait_until(lambda: not list(spool.objects.glob("*.dcm")), 30, "the spool empties")
        time.sleep(0.5)  # a second copy would have gone by now
        assert dict(scp.stores) == {uid: 1 for uid in uids}
    finally:
        process.stop()
        scp.server.shutdown()
        spool.close()
    for adder in adders:
        adder.join(5)


def test_a_tls_destination_keeps_one_association_across_batches(tmp_path):
    """Over TLS 1.3 (whose session tickets arrive after the handshake, unasked) the forwarder still
    sees the idle association as open and sends the next batch on it: one association for two
    batches that came apart."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    d = tmp_path / "pki"
    ca_cert, ca_key = make_ca(d, "Test Hospital CA", 30)
    server_cert, server_key = make_cert(d, "archive", ca_cert, ca_key, hosts=["127.0.0.1"], days=30, server=True)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    server.load_cert_chain(server_cert, server_key)
    accepted: list[int] = []
    stored: list[str] = []
    ae = AE(ae_title="ARCHIVE")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, "1.2.840.10008.1.2.1")
    port = free_port()
    scp = ae.start_server(("127.0.0.1", port), block=False, ssl_context=server,
                          evt_handlers=[(evt.EVT_ACCEPTED, lambda e: accepted.append(1)),
                                        (evt.EVT_C_STORE, lambda e: stored.append(str(e.request.AffectedSOPInstanceUID))
                                         or 0x0000)])
    try:
        route = sf(f"{{name: archive, host: 127.0.0.1, port: {port}, ae_title: ARCHIVE, tls: {{ca_file: {ca_cert}}}}}")
        spool = Spool(tmp_path / "spool")
        spool.open()
        destination = route.destinations[0]
        forwarder = Forwarder(route, destination, spool, lambda e: None, client_context(ca_file=ca_cert))
        forwarder.start()
        files = fresh_ct(tmp_path / "ct", 4, kib=32)
        try:
            for upto in (2, 4):
                for path in files[upto - 2:upto]:
                    forwarder.add(spool_file(spool, path, [destination.key]))
                wait_until(lambda upto=upto: len(stored) == upto, 30, "the batch arrives")
                time.sleep(0.5)
        finally:
            forwarder.stop()
            spool.close()
        assert len(stored) == len(set(stored)) == 4
        assert len(accepted) == 1
    finally:
        scp.shutdown()


def retrying(scp_port: int, delay: float) -> Route:
    return sf(f"{{name: rec, host: 127.0.0.1, port: {scp_port}, ae_title: RECORDER}}",
              f"retry: {{initial_delay: {delay}, max_delay: {delay}, batch: 64}}")


def test_an_object_the_destination_aborts_on_alone_is_retried_after_the_backoff(tmp_path):
    """The object the destination aborts on is the last of its batch (here the only one): it waits
    out the backoff like any failure. It was sent again at once, in a loop (764 tries in 10 s,
    one gateway.object.in-doubt each and no gateway.object.delayed)."""
    files = fresh_ct(tmp_path / "ct", 1, kib=16)
    uid = str(dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
    scp = RecordingSCP(16384, abort_on=uid)
    route = retrying(scp.port, 0.5)
    spool = Spool(tmp_path / "spool")
    spool.open()
    events: list[Event] = []
    forwarder = Forwarder(route, route.destinations[0], spool, events.append)
    forwarder.add(spool_file(spool, files[0], ["rec"]))
    forwarder.start()
    try:
        time.sleep(2.5)
    finally:
        forwarder.stop()
        scp.server.shutdown()
    tries = scp.stores[uid]
    ended = "the association ended before every answer"
    delayed = [e for e in events if e.kind == "gateway.object.delayed" and e.details["error"] == ended]
    in_doubt = [e for e in events if e.kind == "gateway.object.in-doubt"]
    # However fast the machine: one try, then one per 0.5 s of backoff at most.
    assert 2 <= tries <= 1 + 2.5 / 0.5, f"{tries} tries in 2.5 s with a backoff of 0.5 s"
    assert len(delayed) == tries  # one record per round, each saying when it retries
    assert {e.details["retry_in"] for e in delayed} == {0.5}
    assert len(in_doubt) <= tries  # asked about once per round, before it is sent again
    assert len(list(spool.objects.glob("*.json"))) == 1  # still spooled, retried until taken or purged
    spool.close()


def test_a_spooled_object_without_a_data_set_is_never_sent_and_holds_back_nothing(tmp_path):
    """Defence in depth behind the SCP's refusal (test_store_forward_refusals.py): a spooled file
    that ends with its file meta information has no data set to send. Its C-STORE-RQ went out
    with no data PDV after it: the destination waited for one, the forwarder waited out its DIMSE
    timeout (30 s), and sent it again, for ever, with everything behind it waiting."""
    import json

    from pynetdicom.dsutils import split_dataset

    files = fresh_ct(tmp_path / "ct", 2, kib=16)
    uids = [str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]
    scp = RecordingSCP(16384)
    route = retrying(scp.port, 0.2)
    spool = Spool(tmp_path / "spool")
    spool.open()
    events: list[Event] = []
    forwarder = Forwarder(route, route.destinations[0], spool, events.append)
    empty = spool_file(spool, files[0], ["rec"])
    path = spool.object_path(empty.id)
    path.write_bytes(path.read_bytes()[:split_dataset(path)[1]])  # the file meta information only
    # Spooled so, its ID.json saying that size (a file cut short after it was spooled is damaged:
    # test_r7_saf_spool_files.py).
    meta_path = spool.objects / f"{empty.id}.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "bytes": path.stat().st_size}))
    forwarder.add(empty)
    forwarder.add(spool_file(spool, files[1], ["rec"]))
    forwarder.start()
    try:
        wait_until(lambda: any(e.kind == "gateway.object.undeliverable" for e in events), 10, "recorded")
        wait_until(lambda: set(scp.received) == {uids[1]}, 10, "the object behind it forwarded")
        time.sleep(0.6)  # retries would come now
    finally:
        forwarder.stop()
        scp.server.shutdown()
    assert dict(scp.stores) == {uids[1]: 1}
    undeliverable = [e for e in events if e.kind == "gateway.object.undeliverable"]
    assert len(undeliverable) == 1  # not retried before the next start
    details = undeliverable[0].details
    assert (details["spool_id"], details["destination"], details["sop_instance"]) == (empty.id, "rec", uids[0])
    assert "no data set" in details["reason"]
    assert (spool.objects / f"{empty.id}.json").exists()  # spooled until an administrator purges it
    assert spool.in_doubt(empty.id, ["rec"]) == []  # nothing was sent
    failure = json.loads((spool.objects / f"{empty.id}.rec.fail").read_text())
    assert failure["error"].startswith("undeliverable")
    spool.close()
