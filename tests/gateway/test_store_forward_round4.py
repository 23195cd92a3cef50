"""Store-and-forward, outside round 4 (issue 19): the data set's structure walked before Success,
a C-STORE-RQ that says it has no data set, a spool read-only for a moment under a forwarder, the
failures charged to the object an abort ended on, damaged metadata, quarantined objects that wait
for nothing, and two routes on one spool folder. In process: the route's SCP on a raw socket
(test_store_forward_refusals.py), one Forwarder against pynetdicom (test_store_forward_sender.py)."""

from __future__ import annotations

import json
import struct
import subprocess
import threading
from pathlib import Path

import pytest
from playbook import request
from pydicom import dcmread
from pydicom.data import get_testdata_file
from saf_spool import spool_file
from test_store_forward import AS_STORED, dataset_bytes, fresh_ct, wait_until
from test_store_forward_refusals import (
    EXPLICIT_LE,
    ct,
    explicit,
    implicit,
    play,
    refused_at_reception,
    store,
    ui,
)
from test_store_forward_sender import RecordingSCP, retrying
from test_store_forward_units import SF, meta, problems

from pacsguard.dicom import dimse
from pacsguard.events import Event
from pacsguard.gateway.store_forward.forwarder import Forwarder
from pacsguard.gateway.store_forward.spool import Spool

pytestmark = [pytest.mark.filterwarnings("ignore:Invalid value for VR UI")]

UID = "1.2.3.7"
ITEM, ITEM_END, SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


def item_tag(tag: int, length: int) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length)


def sequence(tag: int, body: bytes, *, undefined: bool = True) -> bytes:
    """An Explicit VR Little Endian SQ element (PS3.5 7.5), of undefined length (closed by its
    delimitation item) or of ``len(body)``."""
    length = 0xFFFFFFFF if undefined else len(body)
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, b"SQ", 0, length) + body


# --- the walk (structure.py) -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(AS_STORED) + ["JPEG2000.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_real_data_sets_hold_together(name: str) -> None:
    """Files as modalities write them (implicit and explicit VR, nested sequences, encapsulated
    pixel data): the walk finds nothing."""
    from pacsguard.gateway.store_forward.structure import walk

    path = Path(get_testdata_file(name))
    data = dataset_bytes(path.read_bytes())
    syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert walk(data, 0, len(data), implicit=syntax == "1.2.840.10008.1.2") is None


def test_a_walk_names_where_the_data_set_stops_holding_together() -> None:
    from pacsguard.gateway.store_forward.structure import walk

    good = ct(UID, explicit_vr=True)
    nested = good + sequence(0x00081140, item_tag(ITEM, 0xFFFFFFFF) + explicit(0x00081150, "UI", ui("1.2"))
                             + item_tag(ITEM_END, 0) + item_tag(SEQ_END, 0))
    assert walk(nested, 0, len(nested), implicit=False) is None
    cut = good + b"\x10\x00\x20\x00LO\x40\x00ABCD"  # announces 0x40 bytes, holds 4
    flaw = walk(cut, 0, len(cut), implicit=False)
    assert flaw is not None and flaw.offset == len(good) and "64 bytes" in flaw.reason and "(0010,0020)" in flaw.reason
    odd = good + b"\x10\x00\x20\x00LO\x03\x00ABC"
    flaw = walk(odd, 0, len(odd), implicit=False)
    assert flaw is not None and "odd length" in flaw.reason
    unclosed = nested[:-8]  # the sequence's delimitation item missing
    flaw = walk(unclosed, 0, len(unclosed), implicit=False)
    assert flaw is not None and "before its delimitation item" in flaw.reason and "(0008,1140)" in flaw.reason
    stray = good + sequence(0x00081140, explicit(0x00081150, "UI", ui("1.2")), undefined=False)
    flaw = walk(stray, 0, len(stray), implicit=False)
    assert flaw is not None and "where only an Item" in flaw.reason and flaw.offset == len(good) + 12
    overlong_item = good + sequence(0x00081140, item_tag(ITEM, 100) + explicit(0x00081150, "UI", ui("1.2")),
                                    undefined=False)
    flaw = walk(overlong_item, 0, len(overlong_item), implicit=False)
    assert flaw is not None and "(FFFE,E000)" in flaw.reason
    implicit_cut = ct(UID) + implicit(0x00100010, b"AB")[:-2]
    flaw = walk(implicit_cut, 0, len(implicit_cut), implicit=True)
    assert flaw is not None and "announces 2 bytes" in flaw.reason


# --- refused at reception, never spooled -----------------------------------------------------------


@pytest.mark.parametrize("tail", [b"\x10\x00\x20\x00\x40\x00\x00\x00ABCD", b"\x10\x00\x20\x00\x03\x00\x00\x00ABC"],
                         ids=["element-longer-than-the-data-set", "odd-length"])
def test_a_data_set_that_does_not_hold_together_is_refused(tmp_path: Path, tail: bytes) -> None:
    """Its last element announces 0x40 bytes and holds 4, or the data set has an odd length:
    acknowledged, it was retried at the destination for ever (storescp and Orthanc refuse it)."""
    answer, published = play(tmp_path, [store(ct(UID) + tail)])
    event = refused_at_reception(tmp_path, answer, published, status=dimse.STATUS_CANNOT_UNDERSTAND,
                                 rule="c-store.data-set-structure", naming="does not hold together at byte")
    assert "(0010,0020)" in event.details["reason"] or "odd length" in event.details["reason"]


def test_a_truncated_explicit_vr_data_set_is_refused(tmp_path: Path) -> None:
    answer, published = play(tmp_path, [store(ct(UID, explicit_vr=True) + b"\x10\x00\x20\x00LO\x40\x00ABCD")],
                             syntax=EXPLICIT_LE)
    refused_at_reception(tmp_path, answer, published, status=dimse.STATUS_CANNOT_UNDERSTAND,
                         rule="c-store.data-set-structure", naming="announces 64 bytes")


def test_a_c_store_rq_that_says_it_has_no_data_set_is_refused_as_empty(tmp_path: Path) -> None:
    """Command Data Set Type 0x0101: answered 0x0211 "C-STORE-RQ is not a service of this Storage
    SCP", which it is; the data set is what is missing."""
    command = dimse.CommandSet(dimse.C_STORE_RQ, message_id=7, affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                               affected_sop_instance_uid=UID, priority=0, command_data_set_type=0x0101)
    answer, published = play(tmp_path, [request(command)])
    event = refused_at_reception(tmp_path, answer, published, status=dimse.STATUS_CANNOT_UNDERSTAND,
                                 rule="c-store.data-set-empty", naming="no data set")
    assert "not a service" not in event.details["reason"]


# --- a forwarder outlives any error of its loop ----------------------------------------------------


@pytest.fixture
def read_only(tmp_path: Path):
    """Make a folder read-only for a while, as ext4's errors=remount-ro does (a read-only bind mount
    of it on itself; root only), and writable again."""
    mounted: list[Path] = []

    def make(folder: Path) -> None:
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
        mounted.append(folder)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True)

    def undo() -> None:
        while mounted:
            subprocess.run(["umount", str(mounted.pop())], check=True)

    make.undo = undo  # type: ignore[attr-defined]
    yield make
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_forwarder_outlives_a_spool_read_only_for_a_moment(tmp_path: Path, read_only) -> None:
    """unlink(2) of the retry request on a read-only spool raised EROFS (only FileNotFoundError was
    caught): the forwarder's thread died for good, silently, and nothing was forwarded again."""
    files = fresh_ct(tmp_path / "ct", 3, kib=16)
    uids = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    scp = RecordingSCP(16384)
    route = retrying(scp.port, 0.3)
    spool = Spool(tmp_path / "spool")
    spool.open()
    metas = [spool_file(spool, path, ["rec"]) for path in files]
    events: list[Event] = []
    forwarder = Forwarder(route, route.destinations[0], spool, events.append)
    read_only(spool.root)
    for m in metas:
        forwarder.add(m)
    forwarder.start()
    try:
        wait_until(lambda: any("Read-only file system" in e.details.get("error", "") for e in events), 10,
                   "the error recorded")
        threading.Event().wait(1.5)  # several rounds, each failing
        assert forwarder.thread.is_alive()
        read_only.undo()
        wait_until(lambda: set(scp.received) == uids, 20, "everything forwarded once the spool is writable")
    finally:
        forwarder.stop()
        scp.server.shutdown()
    failed = [e for e in events if e.kind == "gateway.object.delayed" and "Read-only" in e.details["error"]]
    assert failed and all(e.details["destination"] == "rec" for e in failed)
    spool.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_forwarder_thread_that_ends_anyway_says_so(tmp_path: Path) -> None:
    """What no `except Exception` holds (here a SystemExit out of the event callback) ends the
    thread: `died` is called (forwarding.py then ends the process, which the gateway restarts)."""
    files = fresh_ct(tmp_path / "ct", 1, kib=16)
    route = retrying(9, 0.2)  # port 9: nothing listens, the round fails and is recorded

    def publish(event: Event) -> None:
        raise SystemExit("the event callback gave up")

    spool = Spool(tmp_path / "spool")
    spool.open()
    died: list[str] = []
    forwarder = Forwarder(route, route.destinations[0], spool, publish, died=died.append)
    forwarder.add(spool_file(spool, files[0], ["rec"]))
    forwarder.start()
    forwarder.thread.join(10)
    assert not forwarder.thread.is_alive()
    assert died and "the forwarder of rec ended (SystemExit" in died[0]
    spool.close()


def test_the_object_an_abort_ended_on_is_charged_the_failure(tmp_path: Path) -> None:
    """`spool list` showed failures: {} for it, and its gateway.object.delayed named no object,
    patient or attempt; its attempt marker stays (it is in doubt)."""
    files = fresh_ct(tmp_path / "ct", 2, kib=16, patient="ABORTED")
    uid = str(dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
    scp = RecordingSCP(16384, abort_on=uid)
    route = retrying(scp.port, 0.3)
    spool = Spool(tmp_path / "spool")
    spool.open()
    events: list[Event] = []
    forwarder = Forwarder(route, route.destinations[0], spool, events.append)
    first = spool_file(spool, files[0], ["rec"])
    forwarder.add(first)
    forwarder.add(spool_file(spool, files[1], ["rec"]))
    forwarder.start()
    try:
        # the SCP counting the second try is not yet the forwarder charging it: wait for both
        wait_until(lambda: scp.stores[uid] >= 2 and len(scp.received) == 1
                   and sum(e.kind == "gateway.object.delayed" for e in list(events)) >= 2,
                   20, "retried and charged twice, the other forwarded")
    finally:
        forwarder.stop()
        scp.server.shutdown()
    entry = spool.find(first.id)
    assert entry is not None and entry.failures["rec"]["attempts"] >= 2, entry
    delayed = [e for e in events if e.kind == "gateway.object.delayed"]
    assert delayed and all(e.details["sop_instance"] == uid and e.patient_ids == ("ABORTED",) for e in delayed)
    assert [e.details["attempts"] for e in delayed][:2] == [1, 2]
    spool.close()


def test_an_unreachable_destination_is_shown_for_each_object_waiting_for_it(tmp_path: Path) -> None:
    files = fresh_ct(tmp_path / "ct", 2, kib=16)
    route = retrying(9, 0.2)  # nothing listens on port 9
    spool = Spool(tmp_path / "spool")
    spool.open()
    events: list[Event] = []
    forwarder = Forwarder(route, route.destinations[0], spool, events.append)
    for path in files:
        forwarder.add(spool_file(spool, path, ["rec"]))
    forwarder.start()
    try:
        wait_until(lambda: len([e for e in events if e.kind == "gateway.object.delayed"]) >= 2, 20, "two rounds")
    finally:
        forwarder.stop()
    entries = list(spool.entries())
    assert len(entries) == 2
    for entry in entries:
        failure = entry.failures["rec"]
        assert failure["destination"] is True and failure["attempts"] >= 2
        assert "could not be reached" in failure["error"]
    assert [e.details["waiting"] for e in events if e.kind == "gateway.object.delayed"][0] == 2
    spool.close()


# --- what `spool list` shows -------------------------------------------------------------------------


def test_damaged_metadata_is_listed_recorded_and_purgeable(tmp_path: Path) -> None:
    """An ID.json that cannot be read made its object vanish: not listed, not purgeable, never
    forwarded, ID.dcm left for ever."""
    spool = Spool(tmp_path / "spool")
    spool.open()
    damaged, intact = meta(spool, ["A"]), meta(spool, ["A"])
    for m in (damaged, intact):
        spool.commit(spool.receive(m.id, b"DICM"), m)
    (spool.objects / f"{damaged.id}.json").write_text('{"sop_instance_uid": "1.2.3", trunc')
    assert [m.id for m in spool.waiting()] == [intact.id]  # never forwarded blindly
    assert list(spool.damaged) == [damaged.id] and "not JSON" in spool.damaged[damaged.id]
    entry = spool.find(damaged.id)
    assert entry is not None and entry.state == "damaged" and entry.pending == [] and "not JSON" in entry.damage
    assert entry.as_dict()["damage"] == entry.damage
    spool.purge(entry)
    assert not list(spool.objects.glob(f"{damaged.id}.*")) and spool.find(intact.id) is not None
    (spool.objects / f"{intact.id}.json").write_text("")
    assert spool.find(intact.id).state == "damaged"  # type: ignore[union-attr]
    spool.close()


def test_a_quarantined_object_waits_for_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open()
    m = meta(spool, ["A"])
    received = spool.receive("q1", b"x" * 16)
    spool.quarantine(received, "q1", {"object": {**m.to_json(), "id": "q1"}, "check": "scan"})
    entry = spool.find("q1")
    assert entry is not None and entry.state == "quarantined" and entry.pending == []
    assert entry.as_dict()["pending"] == []
    spool.close()


def test_one_retry_request_reaches_every_forwarder(tmp_path: Path) -> None:
    """The request was one file the first forwarder to look deleted: one destination retried."""
    spool = Spool(tmp_path / "spool")
    spool.open()
    seen = [spool.retry_token(), spool.retry_token()]  # two forwarders' last-seen tokens
    spool.request_retry()
    now = [spool.retry_token(), spool.retry_token()]
    assert all(n and n != s for n, s in zip(now, seen, strict=True)) and now[0] == now[1]
    spool.request_retry()
    assert spool.retry_token() != now[0]  # a second request is new again
    assert (spool.root / "retry").exists()  # nothing deletes it
    spool.close()


# --- configuration --------------------------------------------------------------------------------


def test_two_routes_cannot_share_a_spool_folder() -> None:
    """Both passed `config check`; serve then failed with "in use by another gateway process"."""
    two = SF + ("    upstream: {host: h, port: 104, ae_title: P}\n    spool: {directory: /srv/spool}\n"
                "  - name: sf2\n    mode: store-and-forward\n    listen: {port: 11201, ae_title: GW}\n"
                "    upstream: {host: h, port: 104, ae_title: P}\n    spool: {directory: /srv/spool/}\n")
    found = problems(two)
    assert any("'sf' and 'sf2'" in p and "spool.directory" in p for p in found), found
    defaulted = SF + ("    upstream: {host: h, port: 104, ae_title: P}\n"
                      "  - name: sf2\n    mode: store-and-forward\n    listen: {port: 11201, ae_title: GW}\n"
                      "    upstream: {host: h, port: 104, ae_title: P}\n    spool: {directory: var/spool/sf}\n")
    assert any("'sf' and 'sf2'" in p for p in problems(defaulted))


def test_each_route_with_its_own_spool_passes() -> None:
    from pacsguard.config.loader import parse_config

    text = SF + ("    upstream: {host: h, port: 104, ae_title: P}\n"
                 "  - name: sf2\n    mode: store-and-forward\n    listen: {port: 11201, ae_title: GW}\n"
                 "    upstream: {host: h, port: 104, ae_title: P}\n")
    assert [r.name for r in parse_config(text).gateway.routes] == ["sf", "sf2"]


def test_the_spool_json_of_a_failure_note_is_json(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.open()
    assert spool.mark_destination_failed("A", "down") == 1 and spool.mark_destination_failed("A", "down") == 2
    assert json.loads((spool.root / "destinations" / "A.json").read_text())["attempts"] == 2
    spool.clear_destination_failure("A")
    assert spool.destination_failure("A") is None
    spool.close()


def test_the_unit_lets_the_gateway_stop_its_own_children() -> None:
    """Without KillMode, systemd's SIGTERM reached the forwarding process too, and every
    `systemctl stop` was recorded as gateway.forwarding.restarted (error)."""
    unit = (Path(__file__).parents[2] / "deploy" / "pacsguard.service").read_text()
    settings = [line.strip() for line in unit.splitlines() if line.strip().startswith("KillMode=")]
    assert settings == ["KillMode=mixed"]


def test_a_refusal_for_an_unread_instance_uid_names_where_the_walk_stopped() -> None:
    """A data set nesting 200 undefined-length sequences before its UIDs: refused, as before, but
    the reason once said the UID "is not within its first 7,330 bytes" when it lay at 7,242; it now
    names the walk's limit (a re-probe)."""
    from pacsguard.gateway.store_forward.screening import whole_problem

    open_sq = struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF)
    open_item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    data = (open_sq + open_item) * 200 + explicit(0x00080018, "UI", ui("1.2.3.4"))
    command = dimse.CommandSet(dimse.C_STORE_RQ, message_id=1, affected_sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                               affected_sop_instance_uid="1.2.3.4", command_data_set_type=0x0000)
    problem = whole_problem(command, EXPLICIT_LE, data, len(data))
    assert problem is not None and problem.rule == "c-store.sop-instance-unseen", problem
    assert "nesting-too-deep" in problem.reason and "stopped at offset" in problem.reason, problem.reason


def test_two_routes_cannot_share_a_spool_folder_through_a_link(tmp_path: Path) -> None:
    """/x/link -> /x/spool passed `config check` (paths were compared as written); serve then
    failed with the false "in use by another gateway process" (a re-probe)."""
    (tmp_path / "spool").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "spool")
    two = SF + (f"    upstream: {{host: h, port: 104, ae_title: P}}\n    spool: {{directory: {tmp_path / 'spool'}}}\n"
                "  - name: sf2\n    mode: store-and-forward\n    listen: {port: 11201, ae_title: GW}\n"
                f"    upstream: {{host: h, port: 104, ae_title: P}}\n    spool: {{directory: {tmp_path / 'link'}}}\n")
    assert any("'sf' and 'sf2'" in p and "spool.directory" in p for p in problems(two)), problems(two)


@pytest.mark.parametrize("implicit_vr", [False, True], ids=["explicit", "implicit"])
def test_a_file_meta_element_in_the_data_set_is_refused(implicit_vr: bool) -> None:
    """(0002,0010) leading a data set was spooled after the gateway's own file meta, read back as the
    object's transfer syntax, and the acknowledged object was retried for ever (a re-probe)."""
    from pacsguard.gateway.store_forward.structure import walk

    meta = explicit(0x00020010, "UI", ui("1.2.840.10008.1.2"))
    body = ct("1.2.3.4", explicit_vr=not implicit_vr)
    flaw = walk(meta + body, 0, len(meta + body), implicit=implicit_vr)
    assert flaw is not None and "(0002,0010)" in flaw.reason and "File Meta" in flaw.reason, flaw
    assert walk(body, 0, len(body), implicit=implicit_vr) is None
