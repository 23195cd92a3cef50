"""Outside round 9 (area A2): what the gateway's records left out, and a timeout that cut long retrieves.

Real peers through a real `pacsguard serve` on 127.0.109.x: pynetdicom as the workstation, as the
PACS (a Q/R SCP that may take its time) and as a C-MOVE's destination behind a return route.

1. User Identity Negotiation (PS3.7 D.3.3.7.1): the username the workstation claimed (types 1
   and 2) names the actor's user on the association's events and its DIMSE events; the type is
   recorded, never the passcode, nor a token (types 3-5: Kerberos, SAML, JWT).
2. A C-MOVE or C-GET whose SCP sends no pending response for longer than `limits.idle_timeout`
   (pending responses are optional, PS3.4 C.4.2.1.5, C.4.3.1.4) completes: while the workstation
   waits for the final response, `limits.response_timeout` applies instead, and is itself enforced.
3. A C-FIND that discloses more than 1,000 patients says how many it left out of its list.
4. A C-MOVE's C-STORE sub-operations (arriving through the return route) record the Move
   Originator AE Title and Message ID (PS3.7 9.1.1.1) that link the object to its C-MOVE.
5. A C-STORE records the Series Instance UID of its object (issue #3 asks for it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu_primitives import UserIdentityNegotiation
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from event_schema import check_event
from pacsguard.dicom import pdu as P
from pacsguard.events import Event, Party
from pacsguard.records.dicom import AssociationRecord
from pacsguard.store import EventQuery, EventStore
from peers.dcmtk import free_port, stop_process_group, wait_for_port

pytestmark = [pytest.mark.peers]

#: This module's loopback addresses (outside round 9, area A2).
GATEWAY_HOST = "127.0.109.1"
PACS_HOST = "127.0.109.2"
DEST_HOST = "127.0.109.3"
CLIENT_HOST = "127.0.109.4"

PASSCODE = b"pw-Never-In-Records-71"
JWT = b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkci5mb3JlbWFuIn0.token-never-in-records"
MANY = 1003  # patients the PACS discloses to one C-FIND: 3 past the 1,000 an event lists
SLOW = 3.0  # seconds the PACS takes before its first C-MOVE / C-GET response (none pending meanwhile)
CT = dcmread(get_testdata_file("CT_small.dcm"))  # type: ignore[arg-type]


@dataclass
class Gateway:
    home: Path
    ports: dict[str, int]
    log: Path

    def events(self, kind: str | None = None, actor: str | None = None) -> list[Event]:
        es = EventStore.open(str(self.home / "var" / "pacsguard.db"))
        try:
            found = [s.event for s in es.search(EventQuery(kind=kind, actor=actor, limit=None))]
        finally:
            es.close()
        for event in found:
            check_event(event, "the gateway under test")
        return found

    def wait_for(self, kind: str, where: Any = lambda e: True, timeout: float = 10.0) -> list[Event]:
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.events(kind) if where(e)]
            if found or time.monotonic() > deadline:
                assert found, f"no {kind} event\n--- log ---\n{self.log.read_text()[-3000:]}"
                return found
            time.sleep(0.2)


def start_gateway(home: Path, routes: list[dict[str, Any]]) -> tuple[Gateway, subprocess.Popen[bytes]]:
    """`pacsguard init` and `pacsguard serve` in ``home`` with these routes, all on GATEWAY_HOST."""
    home.mkdir()
    config = {"store": {"url": "var/pacsguard.db"}, "gateway": {"routes": routes}}
    (home / "pacsguard.yaml").write_text(yaml.safe_dump(config))
    cli = [sys.executable, "-m", "pacsguard.cli"]
    env = {**os.environ, "PACSGUARD_KEY_DIR": str(home / "keys")}
    init = subprocess.run([*cli, "init", "--no-demo"], cwd=home, env=env, capture_output=True, text=True,
                          timeout=60)
    assert init.returncode == 0, init.stdout + init.stderr
    log = home / "serve.log"
    proc = subprocess.Popen([*cli, "serve"], cwd=home, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    gw = Gateway(home, {r["name"]: r["listen"]["port"] for r in routes}, log)
    for port in gw.ports.values():
        if not wait_for_port(GATEWAY_HOST, port, 30, proc):
            stop_process_group(proc)
            raise AssertionError(f"the gateway did not listen on {port}:\n{log.read_text()}")
    return gw, proc


def route(name: str, upstream: tuple[str, int, str], ae_title: str, **keys: Any) -> dict[str, Any]:
    host, port, upstream_ae = upstream
    return {"name": name, "listen": {"host": GATEWAY_HOST, "port": free_port(GATEWAY_HOST), "ae_title": ae_title},
            "upstream": {"host": host, "port": port, "ae_title": upstream_ae, "connect_timeout": 5}, **keys}


# --- the peers ---------------------------------------------------------------------------------------


def match(i: int) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.PatientID = f"R9B-{i:04d}"
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.1091.{i + 1}"
    return ds


class Pacs:
    """A pynetdicom Q/R SCP: C-FIND discloses MANY patients for PatientID MANY; C-MOVE and C-GET
    send CT_small.dcm after SLOW seconds (or `delay`) without a pending response before it."""

    def __init__(self) -> None:
        self.ae = AE(ae_title="UPSTREAM")
        for sop in (Verification, CTImageStorage, StudyRootQueryRetrieveInformationModelFind,
                    StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet):
            self.ae.add_supported_context(sop, scu_role=True, scp_role=True)  # a C-GET's requestor is the SCP
        self.ae.add_requested_context(CTImageStorage)  # for a C-MOVE's sub-operations
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = 30
        self.move_destination: tuple[str, int] | None = None
        self.delay = SLOW
        self.identities: list[tuple[int, bytes, bytes]] = []
        self.port = free_port(PACS_HOST)
        self.server = self.ae.start_server((PACS_HOST, self.port), block=False, evt_handlers=[
            (evt.EVT_C_FIND, self.find), (evt.EVT_C_MOVE, self.move), (evt.EVT_C_GET, self.get),
            (evt.EVT_USER_ID, self.user_id), (evt.EVT_C_STORE, lambda event: 0x0000)])

    def user_id(self, event: evt.Event) -> tuple[bool, bytes | None]:
        self.identities.append((event.user_id_type, event.primary_field, event.secondary_field))
        return True, None

    def find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        if event.identifier.PatientID == "MANY":
            for i in range(MANY):
                yield 0xFF00, match(i)
        yield 0x0000, None

    def move(self, event: evt.Event) -> Iterator[Any]:
        time.sleep(self.delay)  # nearline storage: the study is being fetched, nothing is said meanwhile
        assert self.move_destination is not None
        yield (*self.move_destination, {"bind_address": (PACS_HOST, 0)})
        yield 1
        yield 0xFF00, CT

    def get(self, event: evt.Event) -> Iterator[Any]:
        time.sleep(self.delay)
        yield 1
        yield 0xFF00, CT


class Destination:
    """The workstation's Storage SCP, the C-MOVE's destination WS1DEST (reached through the gateway)."""

    def __init__(self) -> None:
        self.ae = AE(ae_title="WS1DEST")
        self.ae.add_supported_context(CTImageStorage)
        self.port = free_port(DEST_HOST)
        self.received: list[str] = []
        self.server = self.ae.start_server((DEST_HOST, self.port), block=False,
                                           evt_handlers=[(evt.EVT_C_STORE, self.store)])

    def store(self, event: evt.Event) -> int:
        self.received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000


@dataclass
class Setup:
    gw: Gateway
    pacs: Pacs
    dest: Destination


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """A PACS, a destination and one gateway: route `main` (idle_timeout shorter than SLOW, the
    default response_timeout) and route `ret`, the way back of C-MOVE sub-operations."""
    pacs, dest = Pacs(), Destination()
    routes = [route("main", (PACS_HOST, pacs.port, "UPSTREAM"), "GW",
                    policy={"move_destinations": ["WS1DEST"]}, limits={"idle_timeout": 1.5}),
              route("ret", (DEST_HOST, dest.port, "WS1DEST"), "WS1DEST",
                    policy={"calling_ae_titles": ["UPSTREAM"], "services": ["C-ECHO", "C-STORE"]})]
    gw, proc = start_gateway(tmp_path_factory.mktemp("r9b") / "gw", routes)
    pacs.move_destination = (GATEWAY_HOST, gw.ports["ret"])
    try:
        yield Setup(gw, pacs, dest)
    finally:
        stop_process_group(proc)
        pacs.server.shutdown()
        dest.server.shutdown()


def workstation(calling: str, *contexts: Any, get: bool = False) -> AE:
    ae = AE(ae_title=calling)
    for sop in contexts:
        ae.add_requested_context(sop)
    if get:
        ae.add_requested_context(CTImageStorage)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    return ae


def identity(kind: int, primary: bytes, secondary: bytes = b"") -> UserIdentityNegotiation:
    item = UserIdentityNegotiation()
    item.user_identity_type = kind
    item.primary_field = primary
    if secondary:
        item.secondary_field = secondary
    return item


def of(calling: str, events: list[Event]) -> list[Event]:
    """The events of the associations whose workstation called itself ``calling``."""
    return [e for e in events if calling in (e.actor.ae_title, e.target.ae_title)
            and e.kind.startswith(("dicom.association.", "dicom.dimse."))]


# --- 1. the user the workstation claimed ------------------------------------------------------------


@pytest.mark.timeout(90)
def test_the_claimed_username_names_the_actor_and_no_passcode_or_token_is_recorded(setup: Setup) -> None:
    """Type 1 (username), type 2 (username and passcode) and type 5 (JWT), one association each with a
    C-ECHO: the username is the actor's user on requested, accepted, the C-ECHO and released; the
    type is in details.user_identity; the passcode and the token appear in no event. The PACS still
    receives the identity as sent (the gateway records, it does not strip)."""
    gw = setup.gw
    cases = {"WSU1": (identity(1, b"dr.house"), "dr.house", "username"),
             "WSU2": (identity(2, "dr.wilsön".encode(), PASSCODE), "dr.wilsön", "username-passcode"),
             "WSU5": (identity(5, JWT), None, "jwt")}
    for calling, (item, _, _) in cases.items():
        assoc = workstation(calling, Verification).associate(GATEWAY_HOST, gw.ports["main"], ae_title="GW",
                                                              ext_neg=[item], bind_address=(CLIENT_HOST, 0))
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    gw.wait_for("dicom.association.released", lambda e: e.actor.ae_title == "WSU5")
    events = gw.events()
    for calling, (_, user, kind) in cases.items():
        mine = of(calling, events)
        assert [e.kind for e in mine] == ["dicom.association.requested", "dicom.association.accepted",
                                          "dicom.dimse.c-echo", "dicom.association.released"]
        for event in mine:
            assert event.actor.user == user, (calling, event.kind, event.actor)
            expected = {"type": kind} | ({"username": user} if user else {})
            assert event.details["user_identity"] == expected, (calling, event.kind)
    # What an auditor types: `pacsguard events search --actor dr.house`.
    assert {e.actor.ae_title for e in gw.events(actor="dr.house")} == {"WSU1"}
    text = json.dumps([e.to_dict() for e in events], ensure_ascii=False)
    for secret in (PASSCODE, JWT, JWT[:20]):
        assert secret.decode() not in text
    assert (2, "dr.wilsön".encode(), PASSCODE) in setup.pacs.identities
    assert (5, JWT, b"") in setup.pacs.identities


def test_a_certificate_subject_stays_the_actors_user_and_the_claim_is_beside_it() -> None:
    """With a client certificate (verified by TLS) the actor's user stays its subject: a claimed
    username does not replace a verified name; the claim is in details.user_identity."""
    events: list[Event] = []
    record = AssociationRecord(events.append, component="gateway", client=Party(ae_title="WS1", user="CN=ws1"),
                               server=Party(ae_title="PACS"), route="r")
    info = P.UserInformation.build(max_length=16384, implementation_class_uid="1.2.3",
                                   user_identity=P.UserIdentityRQ(2, 0, b"mallory", PASSCODE))
    rq = P.AssociateRQ(called_ae_title="PACS", calling_ae_title="WS1", user_information=info,
                       presentation_contexts=[P.PresentationContextRQ(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])])
    record.requested(rq, tls=True, certificate={"subject": "CN=ws1"})
    record.association("released")
    assert [(e.actor.user, e.details["user_identity"]) for e in events] == \
        [("CN=ws1", {"type": "username-passcode", "username": "mallory"})] * 2
    assert PASSCODE.decode() not in json.dumps([e.to_dict() for e in events])


def test_a_long_or_undecodable_username_is_kept_bounded_and_readable() -> None:
    """The username field may hold 65,535 bytes (PS3.7 D.3.3.7.1: a 2-byte length) and need not be
    valid UTF-8: the record keeps 256 characters, says how long it was, and never raises."""
    events: list[Event] = []
    for primary in (b"x" * 70_000, b"dr.\xff\xfehouse"):
        record = AssociationRecord(events.append, component="gateway", client=Party(ae_title="WS1"),
                                   server=Party(ae_title="PACS"), route="r")
        info = P.UserInformation.build(max_length=16384, user_identity=P.UserIdentityRQ(1, 1, primary))
        record.requested(P.AssociateRQ(called_ae_title="PACS", calling_ae_title="WS1", user_information=info,
                                       presentation_contexts=[]), tls=False, certificate=None)
    long, odd = (e.details["user_identity"] for e in events)
    assert long == {"type": "username", "username": "x" * 256, "username_bytes": 70_000}
    assert odd == {"type": "username", "username": "dr.\\xff\\xfehouse"}
    assert events[1].actor.user == "dr.\\xff\\xfehouse"


# --- 2. a long retrieve is not cut by the idle timer -------------------------------------------------


@pytest.mark.timeout(90)
def test_a_slow_c_move_and_c_get_complete_past_the_idle_timeout(setup: Setup) -> None:
    """The PACS takes SLOW (3 s) before its first response to a C-MOVE and to a C-GET, with
    `limits.idle_timeout` 1.5 s: both complete (the object reaches the destination and the
    workstation), the association is released, not aborted for idleness."""
    gw = setup.gw
    ae = workstation("WSSLOW", StudyRootQueryRetrieveInformationModelMove, StudyRootQueryRetrieveInformationModelGet,
                     get=True)
    got: list[str] = []

    def store(event: evt.Event) -> int:
        got.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    assoc = ae.associate(GATEWAY_HOST, gw.ports["main"], ae_title="GW", bind_address=(CLIENT_HOST, 0),
                         ext_neg=[build_role(CTImageStorage, scp_role=True)],
                         evt_handlers=[(evt.EVT_C_STORE, store)])
    assert assoc.is_established
    query = match(0)
    # An association cut off mid-request gives pynetdicom an empty status: .get, not .Status.
    moved = [status.get("Status") for status, _ in assoc.send_c_move(query, "WS1DEST",
                                                                     StudyRootQueryRetrieveInformationModelMove)]
    gotten = [status.get("Status") for status, _ in assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)]
    established = assoc.is_established
    assoc.release()
    assert established, gw.log.read_text()[-3000:]
    assert moved[-1] == 0x0000 and gotten[-1] == 0x0000, (moved, gotten)
    assert got == [str(CT.SOPInstanceUID)] and str(CT.SOPInstanceUID) in setup.dest.received
    gw.wait_for("dicom.association.released", lambda e: e.actor.ae_title == "WSSLOW")
    mine = of("WSSLOW", gw.events())
    assert "dicom.association.aborted" not in [e.kind for e in mine]
    (move,) = [e for e in mine if e.kind == "dicom.dimse.c-move"]
    (get,) = [e for e in mine if e.kind == "dicom.dimse.c-get"]
    assert move.details["suboperations"]["completed"] == 1 and move.details["duration_ms"] >= SLOW * 1000
    assert get.details["suboperations"]["completed"] == 1 and get.details["duration_ms"] >= SLOW * 1000


@pytest.mark.timeout(90)
def test_a_pacs_silent_past_the_response_timeout_is_cut_off_and_the_event_names_the_limit(
        tmp_path: Path) -> None:
    """`limits.response_timeout` 1.5 s (idle_timeout 60 s): a C-MOVE the PACS leaves unanswered for
    6 s is cut off after about 1.5 s, and the abort names the request and the limit."""
    pacs = Pacs()
    pacs.delay = 6.0
    pacs.move_destination = (DEST_HOST, free_port(DEST_HOST))  # never reached
    gw, proc = start_gateway(tmp_path / "gw", [route("main", (PACS_HOST, pacs.port, "UPSTREAM"), "GW",
                                                     policy={"move_destinations": ["WS1DEST"]},
                                                     limits={"idle_timeout": 60, "response_timeout": 1.5})])
    try:
        assoc = workstation("WSWAIT", StudyRootQueryRetrieveInformationModelMove).associate(
            GATEWAY_HOST, gw.ports["main"], ae_title="GW", bind_address=(CLIENT_HOST, 0))
        assert assoc.is_established
        started = time.monotonic()
        statuses = list(assoc.send_c_move(match(0), "WS1DEST", StudyRootQueryRetrieveInformationModelMove, msg_id=9))
        waited = time.monotonic() - started
        for _ in range(50):  # pynetdicom's own thread notices the closed connection
            if not assoc.is_established:
                break
            time.sleep(0.1)
        assert not assoc.is_established
        assert all(not status for status, _ in statuses)  # no response: the association was cut off
        assert 1.0 < waited < 4.5, waited
        (aborted,) = gw.wait_for("dicom.association.aborted")
        assert aborted.details["by"] == "gateway" and aborted.details["cause"] == "timeout"
        assert "no final response to C-MOVE (Message ID 9)" in aborted.details["reason"]
        assert "limits.response_timeout 1.5 s" in aborted.details["reason"]
        (move,) = gw.wait_for("dicom.dimse.c-move")
        assert move.details["decision"] == "aborted"
    finally:
        stop_process_group(proc)
        pacs.server.shutdown()


# --- 3. a C-FIND's list of patients says it was cut --------------------------------------------------


@pytest.mark.timeout(120)
def test_a_c_find_past_1000_patients_counts_those_left_out(setup: Setup) -> None:
    """The PACS discloses 1,003 patients (and studies) to one C-FIND: the event lists 1,000 and
    counts the 3 it left out, so an auditor knows the list is not the whole disclosure."""
    gw = setup.gw
    assoc = workstation("WSMANY", StudyRootQueryRetrieveInformationModelFind).associate(
        GATEWAY_HOST, gw.ports["main"], ae_title="GW", bind_address=(CLIENT_HOST, 0))
    assert assoc.is_established
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.PatientID = "MANY"
    query.StudyInstanceUID = ""
    statuses = [status.Status for status, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
    assoc.release()
    assert statuses.count(0xFF00) == MANY and statuses[-1] == 0x0000
    (find,) = gw.wait_for("dicom.dimse.c-find", lambda e: e.actor.ae_title == "WSMANY")
    assert find.details["responses"] == MANY
    assert len(find.patient_ids) == 1000 and len(find.study_uids) == 1000
    assert find.details["patients_omitted"] == MANY - 1000
    assert find.details["studies_omitted"] == MANY - 1000


# --- 5. a C-STORE's series ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_c_store_records_the_series_of_the_object(setup: Setup) -> None:
    """Issue #3 asks for a C-STORE's patient, study, series and SOP instance: the series was read
    from the data set (its walk goes past (0020,000E)) but left out of the event."""
    gw = setup.gw
    assoc = workstation("WSSTORE", CTImageStorage).associate(GATEWAY_HOST, gw.ports["main"], ae_title="GW",
                                                             bind_address=(CLIENT_HOST, 0))
    assert assoc.is_established
    assert assoc.send_c_store(CT).Status == 0x0000
    assoc.release()
    (store,) = gw.wait_for("dicom.dimse.c-store", lambda e: e.actor.ae_title == "WSSTORE")
    assert store.details["series_uid"] == str(CT.SeriesInstanceUID)
    assert store.details["sop_instance"] == str(CT.SOPInstanceUID)
    assert store.patient_ids == (str(CT.PatientID),) and store.study_uids == (str(CT.StudyInstanceUID),)


# --- 4. a C-MOVE's sub-operations name the C-MOVE ------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_c_moves_sub_operation_records_its_move_originator(setup: Setup) -> None:
    """The C-STORE the PACS sends to the Move Destination through the return route carries the Move
    Originator AE Title and Message ID (PS3.7 9.1.1.1); its event records both. (pynetdicom's C-MOVE
    SCP writes its own AE title there, where PS3.7 asks for the C-MOVE requestor's: recorded as sent.)"""
    gw = setup.gw
    setup.pacs.delay = 0.0
    try:
        assoc = workstation("WSMOVE", StudyRootQueryRetrieveInformationModelMove).associate(
            GATEWAY_HOST, gw.ports["main"], ae_title="GW", bind_address=(CLIENT_HOST, 0))
        assert assoc.is_established
        statuses = [status.Status for status, _ in assoc.send_c_move(
            match(0), "WS1DEST", StudyRootQueryRetrieveInformationModelMove, msg_id=4242)]
        assoc.release()
    finally:
        setup.pacs.delay = SLOW
    assert statuses[-1] == 0x0000
    stores = gw.wait_for("dicom.dimse.c-store", lambda e: e.details.get("route") == "ret"
                         and (e.details.get("move_originator") or {}).get("message_id") == 4242)
    (store,) = stores
    assert store.details["move_originator"] == {"ae_title": "UPSTREAM", "message_id": 4242}
    assert store.actor.ae_title == "UPSTREAM" and store.patient_ids == (str(CT.PatientID),)
