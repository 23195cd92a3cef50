"""C-STOREs a store-and-forward route cannot forward as received are refused at reception
(pacsguard.gateway.store_forward.screening, docs/gateway.md "What is refused at reception"): no
UIDs in the command, no data set, a data set in another transfer syntax than the presentation
context's, or one of another SOP Instance. Each is answered with a failure status and an Error
Comment, recorded as gateway.object.refused (check reception) and never spooled, so never
forwarded. A raw-socket requestor against a real StoreForwardRoute (test_store_forward_scp.py)."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from playbook import CT_STORAGE, IMPLICIT_LE, MAX_PDU, request
from test_durable import Gate
from test_store_forward_scp import Client, answers, associate, run, sf_route

from pacsguard.dicom import dimse, uids
from pacsguard.dicom import pdu as P
from pacsguard.events import Event
from pacsguard.gateway.store_forward import screening

EXPLICIT_LE = uids.EXPLICIT_VR_LITTLE_ENDIAN
UID = "1.2.3.7"


def implicit(tag: int, value: bytes) -> bytes:
    """One Implicit VR Little Endian element (PS3.5 7.1.3)."""
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def explicit(tag: int, vr: str, value: bytes) -> bytes:
    """One Explicit VR Little Endian element of a short VR (PS3.5 7.1.2)."""
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def ui(uid: str) -> bytes:
    return uid.encode() + b"\0" * (len(uid) % 2)  # UI pads with NUL to an even length (PS3.5 6.2)


def ct(instance: str, *, explicit_vr: bool = False, sop_class: str = CT_STORAGE) -> bytes:
    """A small CT data set: SOP Class, SOP Instance and Patient ID."""
    if explicit_vr:
        return (explicit(0x00080016, "UI", ui(sop_class)) + explicit(0x00080018, "UI", ui(instance))
                + explicit(0x00100020, "LO", b"REFUSE"))
    return implicit(0x00080016, ui(sop_class)) + implicit(0x00080018, ui(instance)) + implicit(0x00100020, b"REFUSE")


def store(dataset: bytes | None, *, instance: str | None = UID, sop_class: str | None = CT_STORAGE,
          message_id: int = 7) -> bytes:
    """A C-STORE-RQ announcing a data set, then ``dataset`` (None: nothing, the caller sends it)."""
    command = dimse.CommandSet(dimse.C_STORE_RQ, message_id=message_id, affected_sop_class_uid=sop_class,
                               affected_sop_instance_uid=instance, priority=0, command_data_set_type=0x0000)
    return request(command, dataset)


def associate_explicit() -> bytes:
    """An A-ASSOCIATE-RQ proposing CT Image Storage in Explicit VR Little Endian only."""
    return P.encode_associate_rq(P.AssociateRQ(
        called_ae_title="PACSGUARD", calling_ae_title="WS1",
        presentation_contexts=[P.PresentationContextRQ(1, CT_STORAGE, [EXPLICIT_LE])],
        user_information=P.UserInformation.build(max_length=MAX_PDU, implementation_class_uid="1.2.3")))


def response(pdu: P.ParsedPDU) -> dimse.CommandSet:
    assert isinstance(pdu, P.PDataTF), pdu
    return dimse.decode_command_set(b"".join(bytes(v.value) for v in pdu.pdvs if v.is_command))


def play(tmp_path: Path, messages: list[bytes], *,
         syntax: str = IMPLICIT_LE) -> tuple[dimse.CommandSet, list[Event]]:
    """Associate (CT in ``syntax``), send ``messages`` (one C-STORE in pieces) and return its
    answer and the route's Events. A well-formed C-STORE (SOP Instance 1.2.3.8) follows on the
    same association and must be spooled, alone; then the association is released."""
    got: list[dimse.CommandSet] = []

    async def scenario(client: Client, gate: Gate, published: list[Any]) -> None:
        if syntax == IMPLICIT_LE:
            await associate(client)
        else:
            await client.send(associate_explicit())
            ac = await client.read()
            assert len(ac) == 1 and isinstance(ac[0], P.AssociateAC), ac
            assert ac[0].presentation_contexts[0].transfer_syntax == syntax
        for message in messages:
            await client.send(message)
        got.append(response((await answers(client, 1))[0]))
        await client.send(store(ct("1.2.3.8", explicit_vr=syntax != IMPLICIT_LE), instance="1.2.3.8", message_id=8))
        assert response((await answers(client, 1))[0]).status == dimse.STATUS_SUCCESS
        await client.send(P.encode_release_rq())
        assert [type(p) for p in await client.read()] == [P.ReleaseRP]

    published = run(sf_route(tmp_path), scenario)
    received = [e.details["sop_instance"] for e in published if e.kind == "gateway.object.received"]
    assert received == ["1.2.3.8"]
    return got[0], published


def refused_at_reception(tmp_path: Path, answer: dimse.CommandSet, published: list[Event], *, status: int,
                         rule: str, naming: str) -> Event:
    """The answer is ``status`` with an Error Comment, the object's refusal is recorded with
    ``rule`` and a reason holding ``naming``, and nothing of it was spooled (nothing to forward)."""
    assert answer.status == status, f"0x{answer.status or 0:04X}"
    assert answer.error_comment
    refused = [e for e in published if e.kind == "gateway.object.refused"]
    assert len(refused) == 1, [e.kind for e in published]
    event = refused[0]
    assert event.details["check"] == "reception" and event.details["rule"] == rule
    assert event.details["status"] == f"0x{status:04X}" and naming in event.details["reason"]
    c_store = [e for e in published if e.kind == "dicom.dimse.c-store"]
    assert c_store and c_store[0].details["status"] == f"0x{status:04X}"
    spool = tmp_path / "spool"
    spooled = [e.details["spool_id"] for e in published if e.kind == "gateway.object.received"]
    assert sorted(p.stem for p in (spool / "objects").glob("*.json")) == spooled
    assert list((spool / "tmp").iterdir()) == []
    return event


@pytest.mark.parametrize("size", [0, 3])
def test_a_c_store_whose_data_set_is_empty_is_refused(tmp_path: Path, size: int) -> None:
    """The command announces a data set; one last data PDV follows, empty (or shorter than an
    element header). Acknowledged and spooled, it was forwarded as a C-STORE with no data PDV at
    all: the destination waited for it, the forwarder timed out and sent it again, for ever."""
    command = store(None)
    empty = P.encode_p_data_tf([P.PDV(1, False, True, b"\x08\x00\x16"[:size])])
    answer, published = play(tmp_path, [command, empty])
    refused_at_reception(tmp_path, answer, published, status=dimse.STATUS_CANNOT_UNDERSTAND,
                         rule="c-store.data-set-empty", naming="empty" if size == 0 else "shorter")


def test_a_data_set_of_another_sop_instance_than_the_command_is_refused(tmp_path: Path) -> None:
    """PS3.4 B.2.2: the Affected SOP Instance UID names the data set's instance. Spooled under the
    command's UID, the object was refused by the destination (0xA900) at every retry. The next
    C-STORE, whose UIDs agree, is spooled."""
    answer, published = play(tmp_path, [store(ct("1.2.3.99"))])
    event = refused_at_reception(tmp_path, answer, published, status=dimse.STATUS_CANNOT_UNDERSTAND,
                                 rule="c-store.sop-instance-mismatch", naming="1.2.3.99")
    assert UID in event.details["reason"] and event.patient_ids == ("REFUSE",)


def test_a_data_set_of_another_sop_class_than_the_command_is_refused(tmp_path: Path) -> None:
    """PS3.4 B.2.3: 0xA900, the data set does not match the SOP class. Spooled, it was filed under
    the command's class (CT Image Storage) in its file meta and forwarded in a CT context, though
    it says it is an MR image: the destination either refused it at every retry or filed it
    under the wrong class."""
    mr_storage = "1.2.840.10008.5.1.4.1.1.4"
    answer, published = play(tmp_path, [store(ct(UID, sop_class=mr_storage))])
    event = refused_at_reception(tmp_path, answer, published, status=dimse.STATUS_DATASET_DOES_NOT_MATCH_SOP_CLASS,
                                 rule="c-store.sop-class-mismatch", naming=mr_storage)
    assert CT_STORAGE in event.details["reason"]


@pytest.mark.parametrize(("syntax", "explicit_vr"), [(EXPLICIT_LE, False), (IMPLICIT_LE, True)],
                         ids=["implicit-in-explicit", "explicit-in-implicit"])
def test_a_data_set_in_another_transfer_syntax_than_negotiated_is_refused(tmp_path: Path, syntax: str,
                                                                         explicit_vr: bool) -> None:
    """Spooled with file meta claiming the context's transfer syntax, the object could not be read
    by the destination (Orthanc: "DIMSE Failed to receive message"), in doubt, sent again for ever.
    The next C-STORE, in the negotiated syntax, is spooled."""
    answer, published = play(tmp_path, [store(ct(UID, explicit_vr=explicit_vr))], syntax=syntax)
    refused_at_reception(tmp_path, answer, published, status=dimse.STATUS_CANNOT_UNDERSTAND,
                         rule="c-store.transfer-syntax", naming=syntax)


@pytest.mark.parametrize(("instance", "sop_class", "status", "rule"), [
    ("", CT_STORAGE, 0x0115, "c-store.affected-sop-instance-uid"),
    (None, CT_STORAGE, 0x0115, "c-store.affected-sop-instance-uid"),
    (UID, "", dimse.STATUS_SOP_CLASS_NOT_SUPPORTED, "c-store.affected-sop-class-uid"),
], ids=["empty-instance", "no-instance", "empty-class"])
def test_a_c_store_rq_without_its_uids_is_refused(tmp_path: Path, instance: str | None, sop_class: str,
                                                  status: int, rule: str) -> None:
    """PS3.7 9.1.1.1: both UIDs are mandatory in a C-STORE-RQ. Forwarded with an empty one, the
    object made dcmtk's storescp abort the association, again at every retry."""
    answer, published = play(tmp_path, [store(ct(UID), instance=instance, sop_class=sop_class)])
    refused_at_reception(tmp_path, answer, published, status=status, rule=rule, naming="Affected SOP")


def test_a_c_store_of_another_sop_class_than_its_context_is_refused_before_it_is_spooled(tmp_path: Path) -> None:
    """An MR C-STORE (command and data set agree) on the accepted CT context: answered Success,
    spooled and forwarded before; the route's services check now refuses it with 0x0122."""
    mr_storage = "1.2.840.10008.5.1.4.1.1.4"
    answer, published = play(tmp_path, [store(ct(UID, sop_class=mr_storage), sop_class=mr_storage)])
    assert answer.status == dimse.STATUS_SOP_CLASS_NOT_SUPPORTED, f"0x{answer.status or 0:04X}"
    c_store = [e for e in published if e.kind == "dicom.dimse.c-store"]
    assert c_store[0].details["status"] == "0x0122" and c_store[0].details["rule"] == "dimse.context-sop-class"
    assert not [e for e in published if e.kind == "gateway.object.received" and e.details["sop_instance"] == UID]


def hidden(instance: str, padding: int) -> bytes:
    """A CT data set whose Image Type (0008,0008) is ``padding`` bytes long: its SOP Class and
    Instance UIDs come after it, beyond the decoder's first look at the data set."""
    image_type = b"ORIGINAL\\PRIMARY\\" + b"X" * padding
    return implicit(0x00080008, image_type + b" " * (len(image_type) % 2)) + ct(instance)


def test_a_sop_instance_uid_hidden_past_the_first_fragments_is_still_compared(tmp_path: Path) -> None:
    """An outside tester pushed (0008,0018) past 64 KiB with a 90 KB Image Type: the mismatch went
    through, and the destination filed the object under another UID than the gateway's records.
    The data set is now read back whole when its first fragments did not show the UID."""
    answer, published = play(tmp_path, [store(hidden("1.2.3.99", 90_000))])
    refused_at_reception(tmp_path, answer, published, status=dimse.STATUS_CANNOT_UNDERSTAND,
                         rule="c-store.sop-instance-mismatch", naming="1.2.3.99")


def test_a_sop_instance_uid_past_the_first_fragments_that_agrees_is_spooled(tmp_path: Path) -> None:
    got: list[dimse.CommandSet] = []

    async def scenario(client: Client, gate: Gate, published: list[Any]) -> None:
        await associate(client)
        await client.send(store(hidden(UID, 90_000)))
        got.append(response((await answers(client, 1))[0]))
        await client.send(P.encode_release_rq())
        assert [type(p) for p in await client.read()] == [P.ReleaseRP]

    published = run(sf_route(tmp_path), scenario)
    assert got[0].status == dimse.STATUS_SUCCESS
    assert [e.details["sop_instance"] for e in published if e.kind == "gateway.object.received"] == [UID]


def test_a_sop_instance_uid_beyond_what_is_read_back_is_refused(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Read back up to screening.DEEP (16 MiB); a UID not found within it cannot be compared: refused.
    The decoder's walk reads a data set to its UIDs however far in they lie, so here it is stopped
    before them: by a 90 KB SOP Class UID, past the 64 KiB of a value it holds (PS3.5 6.2: 64 bytes)."""
    monkeypatch.setattr(screening, "DEEP", 80_000)
    blocked = implicit(0x00080016, b"1" * 90_000) + implicit(0x00080018, ui(UID)) + implicit(0x00100020, b"REFUSE")
    answer, published = play(tmp_path, [store(blocked)])
    refused_at_reception(tmp_path, answer, published, status=dimse.STATUS_CANNOT_UNDERSTAND,
                         rule="c-store.sop-instance-unseen", naming="80,000")
