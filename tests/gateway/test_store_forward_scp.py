"""The store-and-forward route's Storage SCP in memory: a real StoreForwardRoute on a loopback port,
its Events through a real EventBus into a sink the test holds shut (as test_durable.py does for
the relay), a raw-socket client speaking PS3.8 PDUs. Negotiation, answers held for their
records, and malformed P-DATA."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from playbook import CT_STORAGE, IMPLICIT_LE, MAX_PDU, VERIFICATION, associate_rq, echo_rq, request, route_config
from test_durable import Gate

from pacsguard.config.schema import Route
from pacsguard.dicom import dimse, uids
from pacsguard.dicom import pdu as P
from pacsguard.dicom.stream import PDUReader
from pacsguard.events import EventBus
from pacsguard.events.durable import Durability
from pacsguard.gateway.checks import Shared, build_chain
from pacsguard.gateway.quarantine import QuarantineList
from pacsguard.gateway.store_forward.acceptor import negotiate, storage_sop_classes
from pacsguard.gateway.store_forward.route import StoreForwardRoute
from peers.dcmtk import free_port

# A tiny data set (Implicit VR Little Endian): Patient ID (0010,0020) "SCP01".
DATASET = struct.pack("<HHI", 0x0010, 0x0020, 6) + b"SCP01 "


def sf_route(tmp_path: Path, **more: Any) -> Route:
    listen = {"host": "127.0.0.1", "port": free_port(), "ae_title": "PACSGUARD"}
    return route_config(mode="store-and-forward", listen=listen,
                        destinations=[{"host": "127.0.0.1", "port": free_port(), "ae_title": "NOBODY",
                                       "connect_timeout": 1}],
                        spool={"directory": str(tmp_path / "spool"), "min_free_mib": 0},
                        retry={"initial_delay": 5, "max_delay": 5}, **more)


def store_rq(message_id: int = 7, dataset: bytes = DATASET) -> bytes:
    command = dimse.CommandSet(dimse.C_STORE_RQ, message_id=message_id, affected_sop_class_uid=CT_STORAGE,
                               affected_sop_instance_uid=f"1.2.3.{message_id}", priority=0,
                               command_data_set_type=0x0000)
    return request(command, dataset)


class Client:
    """A requestor on a raw socket: what it sends, and the PDUs it reads back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.pdus = PDUReader()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read(self, timeout: float = 5.0) -> list[P.ParsedPDU]:
        """The PDUs that arrive within ``timeout`` seconds of the first read (at least one, or none)."""
        try:
            data = await asyncio.wait_for(self.reader.read(1 << 20), timeout)
        except asyncio.TimeoutError:
            return []
        return [P.parse_pdu(raw.raw) for raw in self.pdus.feed(data)]


async def answers(client: Client, count: int) -> list[P.ParsedPDU]:
    """The next ``count`` PDUs from the gateway, however many reads they take."""
    got: list[P.ParsedPDU] = []
    while len(got) < count:
        more = await client.read()
        assert more, "no answer"
        got.extend(more)
    return got


def status_of(pdu: P.ParsedPDU) -> int | None:
    assert isinstance(pdu, P.PDataTF)
    return dimse.decode_command_set(b"".join(bytes(v.value) for v in pdu.pdvs if v.is_command)).status


Scenario = Callable[[Client, Gate, list[Any]], Awaitable[None]]


def route_under_test(route: Route, gate: Gate, max_delay: float) -> tuple[StoreForwardRoute, EventBus, list[Any]]:
    """The route with its checks, its Events published through a real bus into ``gate`` and kept
    in the returned list as well."""
    bus = EventBus(gate, max_delay=max_delay)
    durability = Durability(bus)
    published: list[Any] = []

    def publish(event: Any) -> int | None:
        published.append(event)
        return bus.publish_ticket(event)

    sf = StoreForwardRoute(route, build_chain(route, Shared(QuarantineList(), None, durability)), publish=publish,
                           quarantined=QuarantineList(), quarantine=lambda *a, **k: None, durability=durability)
    return sf, bus, published


def run(route: Route, scenario: Scenario) -> list[Any]:
    """Start the route (its Events into a Gate through a real bus), connect, play ``scenario``."""
    return run_route(route, lambda client, gate, published, sf: scenario(client, gate, published))


#: A scenario that also looks at the route itself (its association's state).
RouteScenario = Callable[[Client, Gate, list[Any], StoreForwardRoute], Awaitable[None]]


def run_route(route: Route, scenario: RouteScenario) -> list[Any]:
    """`run`, the route handed to ``scenario`` too; returns every Event the route published."""
    gate = Gate()
    sf, bus, published = route_under_test(route, gate, 0.5)

    async def main() -> None:
        port = await sf.start()
        reader, writer = await asyncio.open_connection(route.listen.host, port)
        try:
            await scenario(Client(reader, writer), gate, published, sf)
        finally:
            writer.close()
            gate.fail(False)
            gate.open.set()
            await sf.stop(grace=1.0)

    try:
        asyncio.run(main())
    finally:
        gate.close()
        bus.close(5)
    return published


async def associate(client: Client) -> P.AssociateAC:
    """CT Image Storage on context 1, Verification on context 3."""
    await client.send(associate_rq("WS1", "PACSGUARD", CT_STORAGE, VERIFICATION))
    got = await client.read()
    assert len(got) == 1 and isinstance(got[0], P.AssociateAC), got
    return got[0]


def test_negotiation_accepts_storage_with_the_first_transfer_syntax_and_answers_roles() -> None:
    rq = P.AssociateRQ("PACSGUARD", "WS1", [
        P.PresentationContextRQ(1, CT_STORAGE, [uids.EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_LE]),
        P.PresentationContextRQ(3, uids.STUDY_ROOT_QR_FIND, [IMPLICIT_LE]),
        P.PresentationContextRQ(5, uids.MR_IMAGE_STORAGE, [IMPLICIT_LE]),
        P.PresentationContextRQ(7, VERIFICATION, [IMPLICIT_LE])],
        P.UserInformation.build(max_length=MAX_PDU, role_selections=[P.RoleSelection(CT_STORAGE, 1, 1)]))
    ac = negotiate(rq, supported=storage_sop_classes(), refused=[uids.MR_IMAGE_STORAGE], max_length=65536)
    assert [(pc.context_id, pc.result, pc.transfer_syntax) for pc in ac.presentation_contexts] == [
        (1, P.PC_ACCEPTANCE, uids.EXPLICIT_VR_LITTLE_ENDIAN), (3, P.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, None),
        (5, P.PC_USER_REJECTION, None), (7, P.PC_ACCEPTANCE, IMPLICIT_LE)]
    info = ac.user_information
    assert info is not None and info.max_length == 65536
    assert info.implementation_class_uid == uids.PACSGUARD_IMPLEMENTATION_CLASS_UID
    # PS3.7 D.3.3.4: the requestor may be the SCU; the gateway never acts as its SCP.
    assert [(r.sop_class_uid, r.scu_role, r.scp_role) for r in info.role_selections] == [(CT_STORAGE, 1, 0)]
    assert (ac.called_ae_title, ac.calling_ae_title) == ("PACSGUARD", "WS1")


def test_retired_and_less_common_storage_sop_classes_are_accepted_and_storage_commitment_is_not() -> None:
    """Old ultrasound and nuclear medicine machines still send the retired SOP classes (dcmtk's
    storescp and Orthanc take them); Hanging Protocol and Color Palette Storage are C-STOREs too.
    Storage Commitment and the DICOMDIR's Media Storage Directory are not objects to store."""
    accepted = storage_sop_classes()
    for uid in ("1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (retired)
                "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (retired)
                "1.2.840.10008.5.1.4.1.1.5",  # Nuclear Medicine Image Storage (retired)
                "1.2.840.10008.5.1.4.38.1",  # Hanging Protocol Storage
                "1.2.840.10008.5.1.4.39.1"):  # Color Palette Storage
        assert uid in accepted, uid
    assert not {"1.2.840.10008.1.20.1", "1.2.840.10008.1.3.10"} & accepted


def test_a_store_answer_waits_until_its_records_are_in_the_store(tmp_path: Path) -> None:
    async def scenario(client: Client, gate: Gate, published: list[Any]) -> None:
        await associate(client)
        assert [e.kind for e in gate.events][:2] == ["dicom.association.requested", "dicom.association.accepted"]
        gate.shut()
        await client.send(store_rq())
        assert await client.read(timeout=1.0) == [], "the C-STORE-RSP came before its records were durable"
        assert any(e.kind == "gateway.object.received" for e in published)  # spooled, recorded, not yet durable
        gate.open.set()
        answer = await client.read()
        assert len(answer) == 1 and status_of(answer[0]) == dimse.STATUS_SUCCESS
        kinds = [e.kind for e in gate.events]
        assert "gateway.object.received" in kinds and "dicom.dimse.c-store" in kinds
        await client.send(echo_rq(9, context_id=3))
        echoed = await client.read()
        assert len(echoed) == 1 and status_of(echoed[0]) == dimse.STATUS_SUCCESS
        await client.send(P.encode_release_rq())
        assert [type(p) for p in await client.read()] == [P.ReleaseRP]

    published = run(sf_route(tmp_path), scenario)
    spooled = sorted((tmp_path / "spool" / "objects").glob("*.dcm"))
    assert len(spooled) == 1 and spooled[0].read_bytes().endswith(DATASET)
    store = next(e for e in published if e.kind == "dicom.dimse.c-store")
    assert store.patient_ids == ("SCP01",)
    ended = [e for e in published if e.kind == "dicom.association.released"]
    assert ended and "released after 1 objects" in ended[0].message


def test_respond_before_record_answers_at_once(tmp_path: Path) -> None:
    async def scenario(client: Client, gate: Gate, published: list[Any]) -> None:
        await associate(client)
        gate.shut()
        await client.send(store_rq())
        answer = await client.read(timeout=2.0)
        assert len(answer) == 1 and status_of(answer[0]) == dimse.STATUS_SUCCESS

    run(sf_route(tmp_path, record_before_response=False), scenario)


def test_malformed_p_data_is_recorded_and_aborted_without_a_traceback(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(client: Client, gate: Gate, published: list[Any]) -> None:
        await associate(client)
        first = store_rq()
        command_pdu = first[:6 + struct.unpack_from(">I", first, 2)[0]]
        await client.send(command_pdu)
        # A data PDV whose item length runs past its PDU (PS3.8 9.3.5).
        body = struct.pack(">IBB", 400, 1, 0x02) + DATASET
        await client.send(struct.pack(">BBI", P.PDU_P_DATA_TF, 0, len(body)) + body)
        got = await client.read()
        assert [type(p) for p in got] == [P.Abort], got

    with caplog.at_level(logging.DEBUG, logger="pacsguard"):
        published = run(sf_route(tmp_path), scenario)
    violation = [e for e in published if e.kind == "dicom.protocol.violation"]
    assert violation and violation[0].details["from"] == "client"
    aborted = [e for e in published if e.kind == "dicom.association.aborted"]
    assert aborted and aborted[0].details["by"] == "gateway" and aborted[0].details["cause"] == "protocol"
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []  # the half-received object is gone
    assert list((tmp_path / "spool" / "objects").glob("*.json")) == []


def test_two_messages_in_one_pdu_are_kept_apart(tmp_path: Path) -> None:
    """PS3.8 9.3.5 lets one P-DATA-TF carry PDVs of several messages: each data set goes to its own
    object, with its own identifiers."""
    other = struct.pack("<HHI", 0x0010, 0x0020, 6) + b"SCP02 "

    def command(message_id: int) -> bytes:
        return dimse.encode_command_set(dimse.CommandSet(
            dimse.C_STORE_RQ, message_id=message_id, affected_sop_class_uid=CT_STORAGE,
            affected_sop_instance_uid=f"1.2.3.{message_id}", priority=0, command_data_set_type=0x0000))

    pdu = P.encode_p_data_tf([P.PDV(1, True, True, command(1)), P.PDV(1, False, True, DATASET),
                              P.PDV(1, True, True, command(2)), P.PDV(1, False, True, other)])

    async def scenario(client: Client, gate: Gate, published: list[Any]) -> None:
        await associate(client)
        await client.send(pdu)
        assert [status_of(a) for a in await answers(client, 2)] == [dimse.STATUS_SUCCESS] * 2

    published = run(sf_route(tmp_path), scenario)
    received = {e.details["sop_instance"]: e for e in published if e.kind == "gateway.object.received"}
    assert {uid: e.patient_ids for uid, e in received.items()} == {"1.2.3.1": ("SCP01",), "1.2.3.2": ("SCP02",)}
    bodies = sorted(p.read_bytes()[-len(DATASET):] for p in (tmp_path / "spool" / "objects").glob("*.dcm"))
    assert bodies == sorted([DATASET, other])


def test_a_data_set_cut_anywhere_between_reads_is_spooled_whole(tmp_path: Path) -> None:
    """The bulk of a data set is taken from each read in place; PDUs split between reads (in a
    header, in a PDV header, in a value) go through the PDU reader: the file is the same."""
    pixels = bytes(range(256)) * 1200  # 300 KB: ~19 P-DATA-TF PDUs of 16 KiB
    dataset = DATASET + struct.pack("<HHI", 0x7FE0, 0x0010, len(pixels)) + pixels
    messages = store_rq(7, dataset) + store_rq(8, dataset)
    cuts = [1, 5, 6, 11, 12, 13, 4000, MAX_PDU + 6, MAX_PDU - 3, 70_000]

    async def scenario(client: Client, gate: Gate, published: list[Any]) -> None:
        await associate(client)
        pos, i = 0, 0
        while pos < len(messages):
            size = cuts[i % len(cuts)]
            await client.send(messages[pos:pos + size])
            await asyncio.sleep(0.002)  # a read of its own, mostly
            pos, i = pos + size, i + 1
        assert [status_of(a) for a in await answers(client, 2)] == [dimse.STATUS_SUCCESS] * 2

    published = run(sf_route(tmp_path), scenario)
    files = sorted((tmp_path / "spool" / "objects").glob("*.dcm"))
    assert len(files) == 2
    for f in files:  # the data set follows the file meta group, whose length is its first element
        data = f.read_bytes()
        assert data[128:132] == b"DICM" and data[144 + struct.unpack_from("<I", data, 140)[0]:] == dataset
    # The decoder counted every byte, those taken in place included.
    sizes = {e.details["sop_instance"]: e.details.get("bytes") for e in published
             if e.kind == "dicom.dimse.c-store"}
    assert sizes == {"1.2.3.7": len(dataset), "1.2.3.8": len(dataset)}


def test_artim_and_the_pdu_limit_apply_as_on_a_relayed_route(tmp_path: Path) -> None:
    async def silent(client: Client, gate: Gate, published: list[Any]) -> None:
        # Nothing sent: the ARTIM timer (PS3.8 9.1.5) ends the connection.
        assert [type(p) for p in await client.read(timeout=3.0)] == [P.Abort]
        assert await client.reader.read() == b""  # closed

    published = run(sf_route(tmp_path, limits={"artim_timeout": 0.5}), silent)
    aborted = [e for e in published if e.kind == "dicom.association.aborted"]
    assert aborted and aborted[0].details["cause"] == "timeout" and "ARTIM" in aborted[0].details["reason"]

    async def oversized(client: Client, gate: Gate, published: list[Any]) -> None:
        await associate(client)
        body = struct.pack(">IBB", 8192 + 2, 1, 0x00) + bytes(8192)  # over the route's 4096-byte limit
        await client.send(struct.pack(">BBI", P.PDU_P_DATA_TF, 0, len(body)) + body)
        assert [type(p) for p in await client.read()] == [P.Abort]

    published = run(sf_route(tmp_path / "pdu", limits={"max_pdu_length": 4096}), oversized)
    violation = [e for e in published if e.kind == "dicom.protocol.violation"]
    assert violation and violation[0].details["code"] == "pdu-length-exceeds-maximum"


# --- an object whose Success could not be sent is not forwarded --------------------------------------


def handed_to_forwarders(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The SOP Instance UIDs the route hands its forwarders, in order (its Receiver is built with
    the patched method)."""
    handed: list[str] = []
    original = StoreForwardRoute._queued

    def queued(self: StoreForwardRoute, meta: Any) -> None:
        handed.append(meta.object.sop_instance_uid)
        original(self, meta)

    monkeypatch.setattr(StoreForwardRoute, "_queued", queued)
    return handed


async def until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.02)


async def resend(route: Route) -> None:
    """The modality, which saw no Success, sends the object (1.2.3.7) again on a new association."""
    reader, writer = await asyncio.open_connection("127.0.0.1", route.listen.port)
    client = Client(reader, writer)
    try:
        await associate(client)
        await client.send(store_rq(7))
        assert [status_of(a) for a in await answers(client, 1)] == [dimse.STATUS_SUCCESS]
        await client.send(P.encode_release_rq())
        assert [type(p) for p in await client.read()] == [P.ReleaseRP]
    finally:
        writer.close()


def assert_withdrawn_once(tmp_path: Path, published: list[Any], handed: list[str]) -> None:
    """The aborted copy was recorded as received, then discarded, never handed on; the copy sent
    again was handed on once: the destination gets the object once."""
    kinds = [(e.kind, e.details.get("spool_id")) for e in published if e.kind.startswith("gateway.object.")]
    discarded = [e for e in published if e.kind == "gateway.object.discarded"]
    assert len(discarded) == 1, kinds
    first = discarded[0].details["spool_id"]
    assert kinds.index(("gateway.object.received", first)) < kinds.index(("gateway.object.discarded", first))
    assert discarded[0].details["sop_instance"] == "1.2.3.7" and discarded[0].patient_ids == ("SCP01",)
    assert "C-STORE-RSP" in discarded[0].details["reason"]
    assert handed == ["1.2.3.7"]
    spooled = [p.stem for p in (tmp_path / "spool" / "objects").glob("*.json")]
    assert len(spooled) == 1 and spooled[0] != first  # only the copy sent again is spooled


async def committed_and_held(client: Client, gate: Gate, published: list[Any]) -> None:
    """One C-STORE sent whole and committed, its Success held (the gate shut on its records)."""
    await associate(client)
    gate.shut()
    await client.send(store_rq())
    await until(lambda: any(e.kind == "gateway.object.received" for e in published), "committed")


def test_an_abort_while_the_answer_waits_for_its_records_withdraws_the_object(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The object is synced and committed, its Success waits for its records; the modality aborts.
    It never saw Success and sends the object again: had the first copy been forwarded as well,
    the destination would hold it twice (dcmtk's storescp kept two files)."""
    handed = handed_to_forwarders(monkeypatch)
    route = sf_route(tmp_path)

    async def scenario(client: Client, gate: Gate, published: list[Any]) -> None:
        await committed_and_held(client, gate, published)
        assert await client.read(timeout=0.3) == []  # the answer is held
        await client.send(P.encode_abort())
        await until(lambda: any(e.kind == "gateway.object.discarded" for e in published), "discarded")
        gate.open.set()
        await asyncio.sleep(0.2)
        assert handed == []
        await resend(route)

    assert_withdrawn_once(tmp_path, run(route, scenario), handed)


def test_an_abort_while_the_object_is_committed_withdraws_it(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The A-ABORT arrives after the last P-DATA while the object is still being synced and
    checked: it is committed after the association ended, and not forwarded."""
    from pacsguard.gateway.store_forward import receiver

    handed = handed_to_forwarders(monkeypatch)
    checked = receiver.run_checks

    def slow_checks(*args: Any, **kwargs: Any) -> Any:
        import time

        time.sleep(0.5)  # in the object's worker thread: the abort comes meanwhile
        return checked(*args, **kwargs)

    monkeypatch.setattr(receiver, "run_checks", slow_checks)
    route = sf_route(tmp_path)

    async def scenario(client: Client, gate: Gate, published: list[Any]) -> None:
        await associate(client)
        await client.send(store_rq())
        await asyncio.sleep(0.1)
        await client.send(P.encode_abort())
        await until(lambda: any(e.kind == "gateway.object.discarded" for e in published), "discarded")
        assert handed == []
        await resend(route)

    assert_withdrawn_once(tmp_path, run(route, scenario), handed)


def test_an_answered_object_is_handed_on_once_its_success_is_sent(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    handed = handed_to_forwarders(monkeypatch)

    async def scenario(client: Client, gate: Gate, published: list[Any]) -> None:
        await committed_and_held(client, gate, published)
        await asyncio.sleep(0.2)
        assert handed == []  # committed, its Success held for its records: not yet
        gate.open.set()
        assert [status_of(a) for a in await answers(client, 1)] == [dimse.STATUS_SUCCESS]
        await until(lambda: handed == ["1.2.3.7"], "handed on")
        await client.send(P.encode_release_rq())
        assert [type(p) for p in await client.read()] == [P.ReleaseRP]

    published = run(sf_route(tmp_path), scenario)
    assert handed == ["1.2.3.7"] and not [e for e in published if e.kind == "gateway.object.discarded"]


def test_accepted_transfer_syntaxes_choose_by_the_routes_preference_or_refuse_the_context() -> None:
    """A route listing the syntaxes its destinations take (Orthanc's AcceptedTransferSyntaxes, storescp
    +x= options): the first of them proposed, whatever the requestor's order; a context proposing
    none of them is refused with result 4 (PS3.8 Table 9-18), so nothing is acknowledged that no
    destination can store."""
    jpeg2000 = "1.2.840.10008.1.2.4.90"
    rq = P.AssociateRQ("PACSGUARD", "WS1", [
        P.PresentationContextRQ(1, CT_STORAGE, [jpeg2000, IMPLICIT_LE, uids.EXPLICIT_VR_LITTLE_ENDIAN]),
        P.PresentationContextRQ(3, uids.MR_IMAGE_STORAGE, [jpeg2000]),
        P.PresentationContextRQ(5, VERIFICATION, [IMPLICIT_LE])],  # no data set: any syntax
        P.UserInformation.build(max_length=MAX_PDU))
    ac = negotiate(rq, supported=storage_sop_classes(), refused=[], max_length=65536,
                   syntaxes=[uids.EXPLICIT_VR_LITTLE_ENDIAN])
    assert [(pc.context_id, pc.result, pc.transfer_syntax) for pc in ac.presentation_contexts] == [
        (1, P.PC_ACCEPTANCE, uids.EXPLICIT_VR_LITTLE_ENDIAN), (3, P.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, None),
        (5, P.PC_ACCEPTANCE, IMPLICIT_LE)]


@pytest.mark.parametrize(("given", "words"), [
    (["ExplicitVRLittleEndian", "1.2.840.10008.1.2"], None),
    (["CTImageStorage"], "not a transfer syntax"),
    ([], "at least 1 item"),
    (["NoSuchSyntax"], "transfer syntax keyword"),
])
def test_accepted_transfer_syntaxes_are_checked_when_the_config_loads(tmp_path: Path, given: list[str],
                                                                       words: str | None) -> None:
    if words is None:
        route = sf_route(tmp_path, accepted_transfer_syntaxes=given)
        assert route.accepted_transfer_syntaxes == [uids.EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_LE]
        return
    with pytest.raises(ValueError, match=words):
        sf_route(tmp_path, accepted_transfer_syntaxes=given)
