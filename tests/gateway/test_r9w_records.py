"""Outside round 9, wave 2, area W5: loose ends of the gateway's records (issues #3, #15, #16).

Real peers through a real `pacsguard serve` on 127.0.115.x: pynetdicom as the workstation, the
modality and the PACS, `openssl s_client` as TLS clients.

1. Every context the policy refuses is in `details.refused_by_policy`, also when the policy
   refused all of them and the PACS rejected them too (none is withheld then, PS3.8 9.3.3.2).
2. On a store-and-forward route, `gateway.object.*` events name the user the modality claimed in
   User Identity Negotiation (PS3.7 D.3.3.7.1), as the DIMSE and association events do.
3. Whether the PACS confirmed the claimed identity (a positive response in the A-ASSOCIATE-AC,
   PS3.7 D.3.3.7.2) is recorded as `details.user_identity.confirmed`, never the response's value.
4. A refused TLS handshake is described once ("TLS handshake with ... failed: <why>"), and a
   revoked or expired client certificate gets its own hint, not "is the right CA configured".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    MRImageStorage,
    StorageCommitmentPushModel,
    Verification,
)

from event_schema import check_event
from pacsguard.events import Event
from pacsguard.store import EventQuery, EventStore
from pacsguard.tls import make_ca, make_cert
from peers.commitment import COMMIT_UID, CommitmentPacs, referenced, stored_then_asked
from peers.dcmtk import free_port, stop_process_group, wait_for_port

pytestmark = [pytest.mark.peers]

#: This module's loopback addresses (outside round 9, wave 2, area W5).
GATEWAY_HOST = "127.0.115.1"
PACS_HOST = "127.0.115.2"
CLIENT_HOST = "127.0.115.4"

SERVER_TOKEN = b"pacs-server-ticket-never-in-records-5150"
UNKNOWN_UID = "1.2.826.0.1.3680043.10.1155.999"  # an instance never stored through the gateway
MANY = 1003  # instances in one N-ACTION: 3 past the 1,000 an event lists
JWT = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyYWQuYWxpY2UifQ.never-in-records"


@dataclass
class Gateway:
    home: Path
    ports: dict[str, int]
    log: Path

    def events(self, kind: str | None = None) -> list[Event]:
        es = EventStore.open(str(self.home / "var" / "pacsguard.db"))
        try:
            found = [s.event for s in es.search(EventQuery(kind=kind, limit=None))]
        finally:
            es.close()
        for event in found:
            check_event(event, "the gateway under test")
        return found

    def wait_for(self, kind: str, where: Any = lambda e: True, count: int = 1, timeout: float = 10.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(kind) if where(e)]
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) >= count, f"no {kind} event\n--- log ---\n{self.log.read_text()[-3000:]}"
                return found
            time.sleep(0.2)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, the gateway's certificate, a good client, a revoked one (in the CRL appended to the
    CA file) and an expired one."""
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key = make_ca(d, "W5 Hospital CA", 30)
    out = {"ca": ca}
    out["gw"], out["gw_key"] = make_cert(d, "gateway", ca, ca_key, hosts=[GATEWAY_HOST], server=True, days=30)
    out["revoked"], out["revoked_key"] = make_cert(d, "ct-stolen", ca, ca_key, client=True, days=30)
    issuer = x509.load_pem_x509_certificate(ca.read_bytes())
    signer = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    now = datetime.now(timezone.utc)
    serial = x509.load_pem_x509_certificate(out["revoked"].read_bytes()).serial_number
    crl = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject).last_update(now - timedelta(days=1))
           .next_update(now + timedelta(days=7))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                    .revocation_date(now - timedelta(hours=1)).build())
           .sign(signer, hashes.SHA256()))  # type: ignore[arg-type]
    out["bundle"] = d / "ca-with-crl.pem"
    out["bundle"].write_bytes(ca.read_bytes() + crl.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    expired = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME,
                                                                                    "ct-lapsed")]))
               .issuer_name(issuer.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=40)).not_valid_after(now - timedelta(days=2))
               .sign(signer, hashes.SHA256()))  # type: ignore[arg-type]
    out["expired"], out["expired_key"] = d / "lapsed.crt", d / "lapsed.key"
    out["expired"].write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    out["expired_key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return out


@dataclass
class Setup:
    gw: Gateway
    pacs: CommitmentPacs


def _listen(ae_title: str, **extra: Any) -> dict[str, Any]:
    return {"host": GATEWAY_HOST, "port": free_port(GATEWAY_HOST), "ae_title": ae_title, **extra}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, pki: dict[str, Path]) -> Iterator[Setup]:
    """One gateway: `main` relays to the PACS (Verification and CT allowed, MR not), `tls` is the
    same with mutual TLS (ca_file with a CRL), `sf` a store-and-forward route to the PACS."""
    pacs = CommitmentPacs(PACS_HOST, server_token=SERVER_TOKEN, report_below=MANY)
    upstream = {"host": PACS_HOST, "port": pacs.port, "ae_title": "UPSTREAM", "connect_timeout": 5}
    policy = {"sop_classes": ["Verification", "CTImageStorage", "StorageCommitmentPushModel"],
              "services": ["C-ECHO", "C-STORE", "storage-commitment"]}
    tls = {"cert_file": str(pki["gw"]), "key_file": str(pki["gw_key"]), "ca_file": str(pki["bundle"]),
           "require_client_cert": True}
    routes = [{"name": "main", "listen": _listen("GW"), "upstream": upstream, "policy": policy},
              {"name": "tls", "listen": _listen("GWTLS", tls=tls), "upstream": upstream, "policy": policy},
              {"name": "sf", "mode": "store-and-forward", "listen": _listen("GWSF"),
               "destinations": [{"name": "pacs", **upstream}], "spool": {"min_free_mib": 1}}]
    home = tmp_path_factory.mktemp("r9w5") / "gw"
    home.mkdir()
    (home / "pacsguard.yaml").write_text(yaml.safe_dump({"store": {"url": "var/pacsguard.db"},
                                                          "gateway": {"routes": routes}}))
    cli = [sys.executable, "-m", "pacsguard.cli"]
    env = {**os.environ, "PACSGUARD_KEY_DIR": str(home / "keys")}
    init = subprocess.run([*cli, "init", "--no-demo"], cwd=home, env=env, capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stdout + init.stderr
    log = home / "serve.log"
    proc = subprocess.Popen([*cli, "serve"], cwd=home, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    gw = Gateway(home, {r["name"]: r["listen"]["port"] for r in routes}, log)
    try:
        for port in gw.ports.values():
            assert wait_for_port(GATEWAY_HOST, port, 30, proc), f"the gateway did not listen on {port}:\n" \
                                                                f"{log.read_text()}"
        yield Setup(gw, pacs)
    finally:
        stop_process_group(proc)
        pacs.server.shutdown()


def identity(kind: int, primary: bytes, *, positive: bool = False) -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = kind
    item.primary_field = primary
    item.positive_response_requested = positive
    return item


def associate(calling: str, port: int, *contexts: Any, ext: list[Any] | None = None) -> Any:
    ae = AE(ae_title=calling)
    for sop in contexts:
        if sop == MRImageStorage:  # twice, one context per transfer syntax
            ae.add_requested_context(sop, "1.2.840.10008.1.2")
            ae.add_requested_context(sop, "1.2.840.10008.1.2.1")
        else:
            ae.add_requested_context(sop)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    return ae.associate(GATEWAY_HOST, port, ae_title="GW", ext_neg=ext or [], bind_address=(CLIENT_HOST, 0))


def of(calling: str, events: list[Event]) -> list[Event]:
    return [e for e in events if e.actor.ae_title == calling or e.target.ae_title == calling]


# --- 1. refused_by_policy when the policy refused every context --------------------------------------


@pytest.mark.timeout(60)
def test_the_policy_refusal_of_every_context_is_recorded_when_the_pacs_rejects_them_too(setup: Setup) -> None:
    """The workstation proposes MR Image Storage only (two contexts): the policy refuses it, so
    nothing is withheld and the PACS (which stores no MR) rejects it as well. The association event
    still names the policy's refusal, once; before, `refused_by_policy` read []."""
    assoc = associate("W5ALLREF", setup.gw.ports["main"], MRImageStorage)
    if assoc.is_established:
        assoc.release()
    answered = setup.gw.wait_for("dicom.association.accepted", lambda e: e.actor.ae_title == "W5ALLREF")[0]
    assert answered.details["accepted"] == [], answered.details
    assert answered.details["refused_by_policy"] == [str(MRImageStorage)], answered.details
    # A context the policy allows and the PACS rejects is not the policy's: not listed.
    assoc = associate("W5MIXED", setup.gw.ports["main"], Verification, MRImageStorage, CTImageStorage)
    assert assoc.is_established
    assoc.release()
    mixed = setup.gw.wait_for("dicom.association.accepted", lambda e: e.actor.ae_title == "W5MIXED")[0]
    assert mixed.details["refused_by_policy"] == [str(MRImageStorage)], mixed.details
    assert mixed.details["accepted"] == sorted([str(Verification), str(CTImageStorage)]), mixed.details


# --- 2. the claimed user on a store-and-forward route's object events --------------------------------


@pytest.mark.timeout(60)
def test_object_events_of_a_store_and_forward_route_name_the_claimed_user(setup: Setup) -> None:
    """A modality claims "tech.bob" (type 2, with a passcode) and stores one CT: the object is
    spooled and forwarded, and `gateway.object.received` and `forwarded` name the user as the
    C-STORE's own event does; the passcode is nowhere."""
    ct = dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]
    ct.SOPInstanceUID = "1.2.826.0.1.3680043.10.1155.1"
    ae = AE(ae_title="W5MODAL")
    ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    item = identity(2, b"tech.bob")
    item.secondary_field = b"pw-W5-never-recorded"
    assoc = ae.associate(GATEWAY_HOST, setup.gw.ports["sf"], ae_title="GWSF", ext_neg=[item],
                         bind_address=(CLIENT_HOST, 0))
    assert assoc.is_established
    status = assoc.send_c_store(ct)
    assoc.release()
    assert status.Status == 0x0000
    is_ours = lambda e: e.actor.ae_title == "W5MODAL"  # noqa: E731
    store = setup.gw.wait_for("dicom.dimse.c-store", is_ours)[0]
    assert store.actor.user == "tech.bob", store
    for kind in ("gateway.object.received", "gateway.object.forwarded"):
        (event,) = setup.gw.wait_for(kind, is_ours, timeout=20)
        assert event.actor.user == "tech.bob", (kind, event)
    dumped = json.dumps([e.to_dict() for e in of("W5MODAL", setup.gw.events())])
    assert "pw-W5-never-recorded" not in dumped


# --- 3. whether the PACS confirmed the identity ------------------------------------------------------


@pytest.mark.timeout(60)
def test_the_pacs_confirmation_of_the_claimed_identity_is_recorded_not_its_value(setup: Setup) -> None:
    """Type 5 (JWT) asking for a positive response: the PACS sends one (a server token), and
    `details.user_identity.confirmed` is true on the accepted, C-ECHO and released events; the
    token appears nowhere. Type 1 asking for one: pynetdicom sends none for a username, so false.
    Type 1 not asking: nothing said."""
    cases = {"W5JWT": (identity(5, JWT, positive=True), True),
             "W5ASKS": (identity(1, b"dr.who", positive=True), False),
             "W5PLAIN": (identity(1, b"dr.plain"), None)}
    for calling, (item, _) in cases.items():
        assoc = associate(calling, setup.gw.ports["main"], Verification, ext=[item])
        assert assoc.is_established, calling
        if calling == "W5JWT":
            # The workstation gets the PACS's answer through the gateway.
            got = assoc.acceptor.user_identity
            assert got is not None and got.server_response == SERVER_TOKEN
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    for calling, (_, confirmed) in cases.items():
        setup.gw.wait_for("dicom.association.released", lambda e, c=calling: e.actor.ae_title == c)
        events = of(calling, setup.gw.events())
        for kind in ("dicom.association.accepted", "dicom.dimse.c-echo", "dicom.association.released"):
            (event,) = [e for e in events if e.kind == kind]
            claim = event.details["user_identity"]
            if confirmed is None:
                assert "confirmed" not in claim, (calling, kind, claim)
            else:
                assert claim.get("confirmed") is confirmed, (calling, kind, claim)
        (requested,) = [e for e in events if e.kind == "dicom.association.requested"]
        assert "confirmed" not in requested.details["user_identity"]  # not known before the AC
        dumped = json.dumps([e.to_dict() for e in events])
        assert SERVER_TOKEN.decode() not in dumped and JWT.decode() not in dumped


# --- 4. the words of a refused TLS handshake --------------------------------------------------------


def s_client(port: int, pki: dict[str, Path], *extra: str) -> None:
    subprocess.run(["openssl", "s_client", "-connect", f"{GATEWAY_HOST}:{port}", "-bind", f"{CLIENT_HOST}:0",
                    "-CAfile", str(pki["ca"]), "-ign_eof", *extra],
                   input="", capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.timeout(90)
def test_a_refused_handshake_is_said_once_and_a_revoked_or_expired_certificate_gets_its_own_hint(
        setup: Setup, pki: dict[str, Path]) -> None:
    port = setup.gw.ports["tls"]
    before = {e.id for e in setup.gw.events("tls.handshake.failed")}
    s_client(port, pki, "-cert", str(pki["revoked"]), "-key", str(pki["revoked_key"]))
    s_client(port, pki, "-cert", str(pki["expired"]), "-key", str(pki["expired_key"]))
    s_client(port, pki, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    failed = setup.gw.wait_for("tls.handshake.failed", lambda e: e.id not in before, count=3)
    messages = [e.message for e in failed]
    wrong = [f"said twice: {m}" for m in messages if "failed: TLS handshake failed" in m]
    (revoked,) = [m for m in messages if "certificate revoked" in m]
    if "is the right CA configured" in revoked or "revoked this certificate" not in revoked:
        wrong.append(f"revoked, without its own hint: {revoked}")
    (expired,) = [m for m in messages if "certificate has expired" in m]
    if "is the right CA configured" in expired or "renewed" not in expired:
        wrong.append(f"expired, without its own hint: {expired}")
    (old,) = [m for m in messages if "unsupported protocol" in m]
    if not old.startswith(f"TLS handshake with {CLIENT_HOST}:") or "failed: unsupported protocol (" not in old:
        wrong.append(f"TLS 1.1: {old}")
    assert not wrong, "\n".join(wrong)
    assert "TLS 1.2 or later is required" in old, old
    # details.error keeps explain_tls_error's own words, which other tools match on.
    assert any(e.details["error"].startswith("TLS handshake failed: ") for e in failed), failed


# --- 5. storage commitment names its instances and their patients ------------------------------------


@pytest.mark.timeout(90)
def test_storage_commitment_names_its_instances_and_the_patients_the_route_stored(setup: Setup) -> None:
    """A modality stores two CTs (two patients) through the gateway, then on a new association asks
    for commitment of those two and one instance the gateway never saw (PS3.4 J.3.2); the PACS
    answers with an N-EVENT-REPORT on that association (J.3.3): two committed, one failed. The
    N-ACTION event names the three instances, the transaction and the two patients, and counts
    the instance whose patient is unknown; the N-EVENT-REPORT event names its committed and
    failed instances (with the failure reason) and the patients. An N-ACTION of 1,003 instances
    (a data set of several PDUs) lists 1,000 and counts the rest."""
    gw, port = setup.gw, setup.gw.ports["main"]
    assoc, stored = stored_then_asked(
        "W5COMMIT", GATEWAY_HOST, port, CLIENT_HOST,
        [(f"1.2.826.0.1.3680043.10.1155.2{n}", f"W5-PAT-{n}", f"1.2.826.0.1.3680043.10.1155.3{n}") for n in (1, 2)],
        "1.2.826.0.1.3680043.10.1155.4", UNKNOWN_UID)
    many = Dataset()
    many.TransactionUID = "1.2.826.0.1.3680043.10.1155.5"
    many.ReferencedSOPSequence = referenced(*stored, *(f"1.2.826.0.1.3680043.10.1155.6.{i}" for i in range(MANY - 2)))
    assert assoc.send_n_action(many, 1, StorageCommitmentPushModel, COMMIT_UID)[0].Status == 0x0000
    assoc.release()

    is_ours = lambda e: "W5COMMIT" in (e.actor.ae_title, e.target.ae_title)  # noqa: E731
    actions = gw.wait_for("dicom.dimse.n-action", is_ours, count=2)
    (action,) = [e for e in actions if e.details["commitment"]["transaction_uid"] == "1.2.826.0.1.3680043.10.1155.4"]
    commitment = action.details["commitment"]
    assert commitment["requested"] == 3 and commitment["sop_instances"] == [*stored, UNKNOWN_UID], commitment
    assert commitment["patients_unknown"] == 1, commitment
    assert set(action.patient_ids) == {"W5-PAT-1", "W5-PAT-2"}, action
    assert set(action.study_uids) == {"1.2.826.0.1.3680043.10.1155.31", "1.2.826.0.1.3680043.10.1155.32"}
    assert "3 instance(s) to commit" in action.message, action.message
    (report,) = gw.wait_for("dicom.dimse.n-event-report", is_ours)
    commitment = report.details["commitment"]
    assert commitment["committed"] == 2 and commitment["sop_instances"] == stored, commitment
    assert commitment["failed"] == 1, commitment
    assert commitment["failed_instances"] == [{"sop_instance": UNKNOWN_UID, "reason": "0x0112"}], commitment
    assert set(report.patient_ids) == {"W5-PAT-1", "W5-PAT-2"}, report
    assert "2 committed, 1 failed" in report.message, report.message
    (big,) = [e for e in actions if e.details["commitment"]["transaction_uid"] == many.TransactionUID]
    commitment = big.details["commitment"]
    assert commitment["requested"] == MANY and len(commitment["sop_instances"]) == 1000, commitment["requested"]
    assert commitment["sop_instances_omitted"] == MANY - 1000, commitment
    assert commitment["patients_unknown"] == MANY - 2 and set(big.patient_ids) == {"W5-PAT-1", "W5-PAT-2"}
    assert big.details["bytes"] > 3 * 16384, big.details  # it crossed several PDUs


def test_a_malformed_commitment_data_set_is_named_not_raised() -> None:
    """Hostile or broken storage commitment data sets (PS3.4 J.3.2) on the record in memory: bytes
    that are no data set, a Referenced SOP Sequence encoded as a UID (wrong VR, explicit), items
    without a Referenced SOP Instance UID, and a data set too large to read. Each request's event is
    written, its message names what was not read, nothing raises."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    from pacsguard.dicom.dimse import N_ACTION_RQ, N_ACTION_RSP, CommandSet
    from pacsguard.dicom.events import DimseCommand
    from pacsguard.events import Party
    from pacsguard.records.dicom import AssociationRecord, StoredInstances

    def encoded(ds: Dataset, implicit: bool = True) -> bytes:
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, implicit
        write_dataset(buf, ds)
        return buf.getvalue()

    wrong_vr = Dataset()
    wrong_vr.add_new(0x00081199, "UI", "1.2.3")  # a sequence's tag holding a UID
    no_uid = Dataset()
    no_uid.TransactionUID = "1.2.826.0.1.3680043.10.1155.7"
    no_uid.ReferencedSOPSequence = [Dataset()]
    cases = {1: (b"\xde\xad\xbe\xef" * 9, "1.2.840.10008.1.2", "not read"),
             2: (encoded(wrong_vr, implicit=False), "1.2.840.10008.1.2.1",
                 "ReferencedSOPSequence (0008,1199) is not a sequence of items"),
             3: (encoded(no_uid), "1.2.840.10008.1.2", None),
             4: (None, "1.2.840.10008.1.2", "larger than")}
    events: list[Event] = []
    stored = StoredInstances(capacity=2)
    for uid in ("1.1", "1.2", "1.3"):  # bounded: the oldest is forgotten
        stored.remember(uid, f"P{uid}", None)
    assert stored.get("1.1") is None and stored.get("1.3") == ("P1.3", None)
    record = AssociationRecord(events.append, component="gateway", client=Party(ae_title="W5"),
                               server=Party(ae_title="UPSTREAM"), route="main", stored=stored)
    for message_id, (data, syntax, said) in cases.items():
        rq = CommandSet(N_ACTION_RQ, message_id=message_id, requested_sop_class_uid=str(StorageCommitmentPushModel),
                        command_data_set_type=0x0000)
        record.command(DimseCommand(True, 1, str(StorageCommitmentPushModel), syntax, rq))
        record.commitment(True, message_id, data, syntax, "its data set of 2,000,000 bytes is larger than 1 MiB")
        rsp = CommandSet(N_ACTION_RSP, message_id_being_responded_to=message_id, status=0x0000)
        record.command(DimseCommand(False, 1, str(StorageCommitmentPushModel), syntax, rsp))
        (event,) = [e for e in events if e.details["message_id"] == message_id]
        check_event(event, "an in-memory record")
        if said is not None:
            assert "storage commitment instances not read" in event.message and said in event.message, event.message
        else:
            assert "not read" not in event.message, event.message
    (third,) = [e for e in events if e.details["message_id"] == 3]
    assert third.details["commitment"] == {"transaction_uid": no_uid.TransactionUID, "requested": 1,
                                           "sop_instances": [], "patients_unknown": 1}, third.details
