"""The rule engine over real decoder events: every built-in rule fires on the traffic it is
written for and stays quiet on its look-alike; thresholds fire once per window; state stays
bounded whatever the number of sources.

Traffic is real bytes: PDUs built with pacsguard.dicom.pdu encoders, run through the real
AssociationDecoder, its events fed to the engine as a sensor would."""

from __future__ import annotations

import itertools
import struct
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from pacsguard.dicom import AssociationDecoder, DecodeError, encode_dimse_message
from pacsguard.dicom import pdu as P
from pacsguard.dicom.dimse import (
    C_ECHO_RQ,
    C_FIND_RQ,
    C_FIND_RSP,
    C_MOVE_RQ,
    C_MOVE_RSP,
    C_STORE_RQ,
    CommandSet,
    encode_command_set,
)
from pacsguard.dicom.events import AssociationRequested
from pacsguard.events import Event, Outcome, Severity
from pacsguard.ids import (
    Alert,
    Engine,
    Flow,
    IdsSettings,
    Observation,
    RuleError,
    guess_protocol,
    load_rules,
    rj_reason,
)
from pacsguard.ids.dicom import DicomAdapter
from pacsguard.ids.part import settings_for
from pacsguard.ids.passive import build_engine
from pacsguard.ids.settings import ActionOverride, ThresholdOverride
from pacsguard.ids.state import BoundedLRU, CountWindow, DistinctWindow, SumWindow

IVLE = "1.2.840.10008.1.2"
VERIFICATION = "1.2.840.10008.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"
CDA_STORAGE = "1.2.840.10008.5.1.4.1.1.104.2"
FIND_PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.1"
MOVE_PATIENT_ROOT = "1.2.840.10008.5.1.4.1.2.1.2"
FIND_STUDY_ROOT = "1.2.840.10008.5.1.4.1.2.2.1"

BUILTIN = load_rules([])
_ports = itertools.count(40000)
_ids = itertools.count(1)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_engine(**settings) -> tuple[Engine, Clock]:
    clock = Clock()
    return Engine(BUILTIN, IdsSettings(**settings), clock=clock), clock


def element(tag: int, value: bytes) -> bytes:
    """One Implicit VR Little Endian data element (PS3.5 7.1.3), padded to even length."""
    if len(value) % 2:
        value += b" "
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def identifier(level: str, *, patient_name: str | None = None, patient_id: str | None = None) -> bytes:
    parts = [element(0x00080052, level.encode())]
    if patient_name is not None:
        parts.append(element(0x00100010, patient_name.encode()))
    if patient_id is not None:
        parts.append(element(0x00100020, patient_id.encode()))
    return b"".join(parts)


def instance(sop_class: str, patient_id: str = "PAT1", study: str = "1.2.3.4") -> bytes:
    return b"".join([
        element(0x00080016, sop_class.encode() + b"\x00" * (len(sop_class) % 2)),
        element(0x00080018, b"1.2.3.4.5.6"),
        element(0x00100020, patient_id.encode()),
        element(0x0020000D, study.encode()),
    ])


class Session:
    """One TCP connection: PDU bytes through the real decoder, its events into the engine."""

    def __init__(self, engine: Engine, *, client: str = "10.1.1.10", server: str = "10.1.1.2",
                 port: int = 104, tls: bool = False) -> None:
        self.engine = engine
        self.dicom = DicomAdapter(engine)
        self.flow = Flow(client, next(_ports), server, port, tls=tls, sensor="inline", id=f"c{next(_ids)}")
        self.decoder = AssociationDecoder()
        self.alerts: list[Alert] = []
        self.contexts: dict[str, int] = {}
        self._mid = itertools.count(1)

    def send(self, from_client: bool, data: bytes) -> None:
        try:
            events = self.decoder.feed(from_client, data)
        except DecodeError as exc:
            for ev in exc.partial:
                self.alerts += self.dicom.observe(self.flow, ev)
            self.alerts += self.dicom.decode_error(self.flow, from_client, exc)
            return
        for ev in events:
            self.alerts += self.dicom.observe(self.flow, ev)

    def associate(self, calling: str = "MOD1", called: str = "PACS", abstracts=(VERIFICATION,), *,
                  reject: tuple[int, int, int] | None = None, answer: bool = True,
                  ac_max_length: int = 16384) -> Session:
        contexts = [P.PresentationContextRQ(2 * i + 1, a, [IVLE]) for i, a in enumerate(abstracts)]
        self.contexts = {a: 2 * i + 1 for i, a in enumerate(abstracts)}
        rq = P.AssociateRQ(called, calling, contexts,
                           P.UserInformation.build(max_length=16384,
                                                   implementation_class_uid="1.2.826.0.1.3680043.9.1"))
        self.send(True, P.encode_associate_rq(rq))
        if not answer:
            return self
        if reject is not None:
            self.send(False, P.encode_associate_rj(*reject))
            return self
        ac = P.AssociateAC(called, calling, [P.PresentationContextAC(c.context_id, 0, IVLE) for c in contexts],
                           P.UserInformation.build(max_length=ac_max_length))
        self.send(False, P.encode_associate_ac(ac))
        return self

    def dimse(self, abstract: str, command: CommandSet, dataset: bytes | None = None, *,
              from_client: bool = True) -> None:
        for pdu in encode_dimse_message(self.contexts[abstract], encode_command_set(command), dataset):
            self.send(from_client, pdu)

    def echo(self) -> None:
        mid = next(self._mid)
        self.dimse(VERIFICATION, CommandSet(C_ECHO_RQ, message_id=mid, affected_sop_class_uid=VERIFICATION))

    def find(self, ident: bytes, model: str = FIND_PATIENT_ROOT) -> None:
        mid = next(self._mid)
        self.dimse(model, CommandSet(C_FIND_RQ, message_id=mid, affected_sop_class_uid=model, priority=0,
                                     command_data_set_type=1), ident)
        self.dimse(model, CommandSet(C_FIND_RSP, message_id_being_responded_to=mid, affected_sop_class_uid=model,
                                     status=0), from_client=False)

    def move(self, destination: str, ident: bytes, *, announce: int = 10) -> None:
        mid = next(self._mid)
        self.dimse(MOVE_PATIENT_ROOT, CommandSet(C_MOVE_RQ, message_id=mid, affected_sop_class_uid=MOVE_PATIENT_ROOT,
                                                 priority=0, move_destination=destination,
                                                 command_data_set_type=1), ident)
        rsp = {"message_id_being_responded_to": mid, "affected_sop_class_uid": MOVE_PATIENT_ROOT,
               "failed_suboperations": 0, "warning_suboperations": 0}
        # A pending response announcing the size, then the final one (PS3.4 C.4.2.1.5).
        self.dimse(MOVE_PATIENT_ROOT, CommandSet(C_MOVE_RSP, status=0xFF00, remaining_suboperations=announce - 1,
                                                 completed_suboperations=1, **rsp), from_client=False)
        self.dimse(MOVE_PATIENT_ROOT, CommandSet(C_MOVE_RSP, status=0, completed_suboperations=announce, **rsp),
                   from_client=False)

    def store(self, sop_class: str, *, from_client: bool = True, patient_id: str = "PAT1") -> None:
        mid = next(self._mid)
        self.dimse(sop_class, CommandSet(C_STORE_RQ, message_id=mid, affected_sop_class_uid=sop_class, priority=0,
                                         affected_sop_instance_uid="1.2.3.4.5.6", command_data_set_type=1),
                   instance(sop_class, patient_id), from_client=from_client)

    def release(self) -> None:
        self.send(True, P.encode_release_rq())
        self.send(False, P.encode_release_rp())

    def close(self) -> Session:
        self.alerts += self.dicom.flow_closed(self.flow)
        return self

    def fired(self) -> set[str]:
        return {a.rule_id for a in self.alerts}

    def alert(self, rule_id: str) -> Alert:
        found = [a for a in self.alerts if a.rule_id == rule_id]
        assert len(found) == 1, f"{rule_id} fired {len(found)} times: {[a.message for a in self.alerts]}"
        return found[0]


def test_builtin_rules_load_and_have_references() -> None:
    assert len(BUILTIN) >= 17
    for rule in BUILTIN:
        assert rule.builtin and rule.reference and rule.description, rule.id
        assert rule.id.startswith("dicom-") and rule.protocol == "dicom"


def test_every_builtin_rule_has_a_trigger_and_a_quiet_test() -> None:
    names = set(globals())
    for rule in BUILTIN:
        stem = rule.id.removeprefix("dicom-").replace("-", "_")
        assert f"test_{stem}_fires" in names, rule.id
        assert f"test_{stem}_quiet" in names, rule.id


# --------------------------------------------------------------------------- who is talking


def test_unknown_calling_ae_fires() -> None:
    engine, _ = make_engine(known_ae_titles=["MOD1", "PACS"])
    s = Session(engine).associate(calling="INTRUDER", called="PACS")
    alert = s.alert("dicom-unknown-calling-ae")
    assert alert.severity is Severity.WARNING and alert.action == "alert"
    assert alert.event.actor.ae_title == "INTRUDER" and alert.event.actor.host == "10.1.1.10"
    assert alert.event.target.ae_title == "PACS" and alert.event.target.port == 104
    assert "INTRUDER" in alert.message


def test_unknown_calling_ae_quiet() -> None:
    engine, _ = make_engine(known_ae_titles=["MOD1", "PACS"])
    s = Session(engine).associate(calling="MOD1", called="PACS")
    assert not s.fired() & {"dicom-unknown-calling-ae", "dicom-unknown-called-ae"}


def test_unknown_ae_rules_are_off_without_an_inventory() -> None:
    engine, _ = make_engine()
    assert engine.inactive["dicom-unknown-calling-ae"] == "needs ids.known_ae_titles"
    s = Session(engine).associate(calling="INTRUDER", called="NOWHERE")
    assert "dicom-unknown-calling-ae" not in s.fired()


def test_unknown_called_ae_fires() -> None:
    engine, _ = make_engine(known_ae_titles=["MOD1", "PACS"])
    s = Session(engine).associate(calling="MOD1", called="GUESSED", reject=(1, 1, 7))
    assert s.fired() >= {"dicom-unknown-called-ae"}
    assert "dicom-unknown-calling-ae" not in s.fired()


def test_unknown_called_ae_quiet() -> None:
    engine, _ = make_engine(known_ae_titles=["MOD1", "PACS", "WS1"])
    s = Session(engine).associate(calling="WS1", called="PACS")
    assert "dicom-unknown-called-ae" not in s.fired()


def test_tool_default_ae_title_fires() -> None:
    engine, _ = make_engine()
    s = Session(engine).associate(calling="ECHOSCU", called="ANY-SCP")  # nmap's dicom-ping defaults
    assert s.alert("dicom-tool-default-ae-title").severity is Severity.NOTICE


def test_tool_default_ae_title_quiet() -> None:
    engine, _ = make_engine()
    s = Session(engine).associate(calling="CT_ROOM1", called="PACS")
    assert "dicom-tool-default-ae-title" not in s.fired()


def test_ae_brute_force_fires() -> None:
    """nmap dicom-brute: one source, many called AE titles, each rejected (PS3.8 Table 9-21 reason 7)."""
    engine, clock = make_engine()
    sessions = []
    for guess in ("ORTHANC", "PACS", "DCM4CHEE", "STORESCP", "ARCHIVE"):
        clock.t += 2
        sessions.append(Session(engine, client="10.9.9.9").associate("ECHOSCU", guess, reject=(1, 1, 7)).close())
    fired = [a for s in sessions for a in s.alerts if a.rule_id == "dicom-ae-brute-force"]
    assert len(fired) == 1 and fired[0].flow is sessions[-1].flow
    alert = fired[0]
    assert alert.action == "quarantine" and alert.quarantine_for == timedelta(minutes=15)
    assert alert.event.details["threshold"]["reached"] == 5
    assert "ECHOSCU->ORTHANC" in alert.event.details["threshold"]["values"]
    # One alert per window: the sixth guess in the same minute is quiet.
    clock.t += 1
    s = Session(engine, client="10.9.9.9").associate("ECHOSCU", "SIXTH", reject=(1, 1, 7))
    assert "dicom-ae-brute-force" not in s.fired()


def test_ae_brute_force_fires_on_the_gateways_own_rejections() -> None:
    """Inline, the gateway rejects before the upstream answers; its verdict feeds the same rule."""
    engine, clock = make_engine()
    fired = []
    for guess in ("A1", "A2", "A3", "A4", "A5"):
        clock.t += 1
        s = Session(engine, client="10.9.9.8").associate("ECHOSCU", guess, answer=False)
        fired += DicomAdapter(engine).association_result(
            s.flow, rejected=True, reason=f"called AE title {guess!r} is not this gateway's ('PACS')", by="gateway")
        # The decoder of a gateway that also sees its own RJ must not count twice.
        fired += DicomAdapter(engine).association_result(s.flow, rejected=True, reason=rj_reason(1, 7), by="gateway")
    assert [a.rule_id for a in fired] == ["dicom-ae-brute-force"]
    assert fired[0].event.details["observation"]["reason"] == "called-ae-not-recognized"


def test_ae_brute_force_quiet() -> None:
    """A misconfigured modality retries one pair all day; rejections for other reasons do not count."""
    engine, clock = make_engine()
    fired: set[str] = set()
    for _ in range(30):
        clock.t += 1
        fired |= Session(engine, client="10.9.9.7").associate("CT1", "PACS_OLD", reject=(1, 1, 7)).close().fired()
    for guess in ("B1", "B2", "B3", "B4", "B5", "B6"):
        clock.t += 1
        fired |= Session(engine, client="10.9.9.6").associate("CT2", guess, reject=(2, 3, 1)).close().fired()
    for guess in ("C1", "C2", "C3", "C4", "C5"):  # five guesses, but 20 s apart: not within a minute
        clock.t += 20
        fired |= Session(engine, client="10.9.9.5").associate("CT3", guess, reject=(1, 1, 7)).close().fired()
    assert "dicom-ae-brute-force" not in fired


def test_association_flood_fires() -> None:
    engine, clock = make_engine()
    alerts = []
    for _ in range(100):
        clock.t += 0.05
        alerts += Session(engine, client="10.2.2.2").associate().alerts
    flood = [a for a in alerts if a.rule_id == "dicom-association-flood"]
    assert len(flood) == 1 and flood[0].event.details["threshold"]["key"] == {"client_host": "10.2.2.2"}


def test_association_flood_quiet() -> None:
    engine, clock = make_engine()
    alerts = []
    for _ in range(99):  # 99 within 10 s: one short
        clock.t += 0.05
        alerts += Session(engine, client="10.2.2.3").associate().alerts
    clock.t += 60
    for _ in range(150):  # a busy modality: 150 associations, one every 2 s
        clock.t += 2
        alerts += Session(engine, client="10.2.2.4").associate().alerts
    assert "dicom-association-flood" not in {a.rule_id for a in alerts}


def test_unexpected_port_fires() -> None:
    engine, _ = make_engine()
    s = Session(engine, port=8443).associate()
    assert "server_port=8443" in s.alert("dicom-unexpected-port").message


def test_unexpected_port_quiet() -> None:
    engine, _ = make_engine(dicom_ports=[104, 11112, 4100])
    fired = Session(engine, port=4100).associate().fired() | Session(engine, port=11112).associate().fired()
    assert "dicom-unexpected-port" not in fired


def test_cleartext_from_external_fires() -> None:
    engine, _ = make_engine()
    s = Session(engine, client="203.0.113.50").associate()
    assert s.alert("dicom-cleartext-from-external").event.actor.host == "203.0.113.50"


def test_cleartext_from_external_quiet() -> None:
    engine, _ = make_engine(internal_networks=["10.0.0.0/8", "198.51.100.0/24"])
    fired = (Session(engine, client="10.4.4.4").associate().fired()
             | Session(engine, client="198.51.100.7").associate().fired()
             | Session(engine, client="203.0.113.50", tls=True).associate().fired()
             | Session(engine, client="2001:db8::1", tls=True).associate().fired())
    assert "dicom-cleartext-from-external" not in fired


def test_cleartext_from_external_ipv6() -> None:
    engine, _ = make_engine()
    assert "dicom-cleartext-from-external" in Session(engine, client="2001:db8::1").associate().fired()
    assert "dicom-cleartext-from-external" not in Session(engine, client="::1").associate().fired()


# --------------------------------------------------------------------------- queries and retrieves


def test_find_wildcard_patient_name_fires() -> None:
    engine, _ = make_engine()
    for name in ("*", "*^*", "* "):
        s = Session(engine).associate(abstracts=(FIND_STUDY_ROOT,))
        s.find(identifier("STUDY", patient_name=name), FIND_STUDY_ROOT)
        assert s.alert("dicom-find-wildcard-patient-name").action == "alert"


def test_find_wildcard_patient_name_quiet() -> None:
    engine, _ = make_engine()
    s = Session(engine).associate(abstracts=(FIND_STUDY_ROOT,))
    for name in ("SMITH^JOHN", "SMI*", ""):
        s.find(identifier("STUDY", patient_name=name), FIND_STUDY_ROOT)
    assert "dicom-find-wildcard-patient-name" not in s.fired()


def test_dataset_walk_stopped_fires() -> None:
    """A query behind 200 nested undefined-length sequences (PS3.5 7.5), or with a key given twice."""
    engine, _ = make_engine()
    seq, item = struct.pack("<HHI", 0x0008, 0x1140, 0xFFFFFFFF), struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    ends = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    deep = (seq + item) * 200 + ends * 200 + identifier("STUDY", patient_name="*")
    twice = identifier("STUDY") + identifier("PATIENT")
    for ident, anomaly in ((deep, "nesting-too-deep"), (twice, "repeated-element")):
        s = Session(engine).associate(abstracts=(FIND_STUDY_ROOT,))
        s.find(ident, FIND_STUDY_ROOT)
        alert = s.alert("dicom-dataset-walk-stopped")
        assert alert.severity is Severity.WARNING and f"anomaly={anomaly}" in alert.message


def test_dataset_walk_stopped_fires_on_a_malformed_structure_too() -> None:
    """docs/gateway.md: the inline IDS alerts on every walk that stops before the identifiers, not
    only at a limit (outside round 12: an item outside a sequence, a stray delimiter, a non-item
    tag inside a sequence passed without an alert)."""
    engine, _ = make_engine()
    item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    stray = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    no_item = struct.pack("<HHI", 0xFFFE, 0xE001, 0)  # group FFFE holds items and delimiters only
    for ident, anomaly in ((item + identifier("STUDY"), "item-outside-sequence"),
                           (stray + identifier("STUDY"), "unexpected-delimiter"),
                           (no_item + identifier("STUDY"), "bad-item-tag")):
        s = Session(engine).associate(abstracts=(FIND_STUDY_ROOT,))
        s.find(ident, FIND_STUDY_ROOT)
        alert = s.alert("dicom-dataset-walk-stopped")
        assert f"anomaly={anomaly}" in alert.message, alert.message


def test_dataset_walk_stopped_quiet() -> None:
    engine, _ = make_engine()
    s = Session(engine).associate(abstracts=(FIND_STUDY_ROOT,))
    s.find(identifier("STUDY", patient_name="SMITH^JOHN"), FIND_STUDY_ROOT)
    assert "dicom-dataset-walk-stopped" not in s.fired()


def test_find_patient_universal_fires() -> None:
    engine, _ = make_engine()
    s = Session(engine).associate(abstracts=(FIND_PATIENT_ROOT,))
    s.find(identifier("PATIENT", patient_name="", patient_id=""))
    t = Session(engine).associate(abstracts=(FIND_PATIENT_ROOT,))
    t.find(identifier("PATIENT"))  # keys absent altogether
    assert "dicom-find-patient-universal" in s.fired() and "dicom-find-patient-universal" in t.fired()


def test_find_patient_universal_quiet() -> None:
    engine, _ = make_engine()
    s = Session(engine).associate(abstracts=(FIND_PATIENT_ROOT, FIND_STUDY_ROOT))
    s.find(identifier("PATIENT", patient_name="", patient_id="12345"))
    s.find(identifier("STUDY", patient_name="", patient_id=""), FIND_STUDY_ROOT)
    assert "dicom-find-patient-universal" not in s.fired()


def test_find_patient_enumeration_fires() -> None:
    engine, clock = make_engine()
    s = Session(engine, client="10.3.3.3").associate(abstracts=(FIND_STUDY_ROOT,))
    for i in range(50):
        clock.t += 5
        s.find(identifier("STUDY", patient_id=f"MRN{i:05d}"), FIND_STUDY_ROOT)
    alert = s.alert("dicom-find-patient-enumeration")
    assert alert.event.details["threshold"]["reached"] == 50
    assert alert.event.patient_ids == ("MRN00049",)


def test_find_patient_enumeration_quiet() -> None:
    engine, clock = make_engine()
    s = Session(engine, client="10.3.3.4").associate(abstracts=(FIND_STUDY_ROOT,))
    for i in range(49):  # 49 patients in 10 minutes
        clock.t += 5
        s.find(identifier("STUDY", patient_id=f"MRN{i:05d}"), FIND_STUDY_ROOT)
    for _ in range(200):  # the same patient over and over (a viewer polling)
        s.find(identifier("STUDY", patient_id="MRN00001"), FIND_STUDY_ROOT)
    clock.t += 700
    for i in range(49, 98):  # 49 more in the next window
        clock.t += 5
        s.find(identifier("STUDY", patient_name=f"DOE^{i}"), FIND_STUDY_ROOT)
    assert "dicom-find-patient-enumeration" not in s.fired()


def test_retrieve_volume_fires() -> None:
    engine, _ = make_engine()
    s = Session(engine, client="10.5.5.5").associate(abstracts=(MOVE_PATIENT_ROOT,))
    s.move("WS1", identifier("PATIENT", patient_id="PAT9"), announce=25_000)
    alert = s.alert("dicom-retrieve-volume")
    assert alert.event.details["observation"]["suboperations_announced"] == 25_000
    assert alert.event.patient_ids == ("PAT9",)


def test_retrieve_volume_quiet() -> None:
    engine, clock = make_engine()
    s = Session(engine, client="10.5.5.6").associate(abstracts=(MOVE_PATIENT_ROOT,))
    for _ in range(19):  # 19 studies of 1000 images in an hour: below the floor
        clock.t += 180
        s.move("WS1", identifier("STUDY", patient_id="PAT1"), announce=1000)
    assert "dicom-retrieve-volume" not in s.fired()


def test_retrieve_volume_baseline_learns_a_heavy_user() -> None:
    """A workstation that pulls 30000 instances every hour is normal for itself after a few
    hours; five times its usual is not."""
    engine, clock = make_engine()
    clock.t = 0.0
    s = Session(engine, client="10.5.5.7").associate(abstracts=(MOVE_PATIENT_ROOT,))
    fired_per_hour = []
    for _hour in range(8):
        before = len(s.alerts)
        for _ in range(3):
            clock.t += 1200
            s.move("WS1", identifier("STUDY", patient_id="PAT1"), announce=10_000)
        fired_per_hour.append(len(s.alerts) - before)
    assert sum(fired_per_hour[4:]) == 0  # learned: quiet
    before = len(s.alerts)
    for _ in range(3):  # 180000 within minutes: far above its usual 30000 an hour
        clock.t += 60
        s.move("WS1", identifier("STUDY", patient_id="PAT1"), announce=60_000)
    assert [a.rule_id for a in s.alerts[before:]] == ["dicom-retrieve-volume"]


def test_move_destination_not_allowed_fires() -> None:
    engine, _ = make_engine(move_destinations=["WS1", "WS2"])
    s = Session(engine).associate(abstracts=(MOVE_PATIENT_ROOT,))
    s.move("EXFIL", identifier("PATIENT", patient_id="PAT1"))
    alert = s.alert("dicom-move-destination-not-allowed")
    assert alert.action == "drop" and "move_destination=EXFIL" in alert.message


def test_move_destination_not_allowed_quiet() -> None:
    engine, _ = make_engine(move_destinations=["WS1", "WS2"])
    s = Session(engine).associate(abstracts=(MOVE_PATIENT_ROOT,))
    s.move("WS2", identifier("PATIENT", patient_id="PAT1"))
    assert "dicom-move-destination-not-allowed" not in s.fired()


def test_document_store_unexpected_source_fires() -> None:
    engine, _ = make_engine(document_sources=["DOCSCAN"])
    s = Session(engine).associate(calling="CT1", abstracts=(PDF_STORAGE, CDA_STORAGE))
    s.store(PDF_STORAGE)
    s.store(CDA_STORAGE)
    hits = [a for a in s.alerts if a.rule_id == "dicom-document-store-unexpected-source"]
    assert len(hits) == 2 and all(a.action == "drop" for a in hits)


def test_document_store_unexpected_source_quiet() -> None:
    engine, _ = make_engine(document_sources=["DOCSCAN"])
    s = Session(engine).associate(calling="DOCSCAN", abstracts=(PDF_STORAGE,))
    s.store(PDF_STORAGE)
    t = Session(engine).associate(calling="CT1", abstracts=(CT_STORAGE,))
    t.store(CT_STORAGE)
    assert "dicom-document-store-unexpected-source" not in s.fired() | t.fired()


# --------------------------------------------------------------------------- malformed and unexpected


def _rq_bytes() -> bytes:
    rq = P.AssociateRQ("PACS", "MOD1", [P.PresentationContextRQ(1, VERIFICATION, [IVLE])],
                       P.UserInformation.build(max_length=16384))
    return P.encode_associate_rq(rq)


def test_length_overflow_fires() -> None:
    engine, _ = make_engine()
    raw = bytearray(_rq_bytes())
    raw[76:78] = struct.pack(">H", 0xFFF0)  # the Application Context item claims 65520 bytes
    s = Session(engine)
    s.send(True, bytes(raw))
    alert = s.alert("dicom-length-overflow")
    assert alert.action == "abort" and alert.event.details["observation"]["code"] == "truncated-item"
    t = Session(engine)
    t.send(True, b"\x04\x00\xff\xff\xff\xff" + bytes(10))  # a 4 GiB P-DATA-TF
    assert "dicom-length-overflow" in t.fired()


def test_length_overflow_quiet() -> None:
    engine, _ = make_engine()
    s = Session(engine)
    s.send(True, b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # malformed, but not a length
    assert "dicom-length-overflow" not in s.fired()


def test_malformed_pdu_fires() -> None:
    engine, _ = make_engine()
    s = Session(engine)
    s.send(True, b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    alert = s.alert("dicom-malformed-pdu")
    assert alert.severity is Severity.ERROR and alert.event.details["observation"]["code"] == "unknown-pdu-type"


def test_malformed_pdu_quiet() -> None:
    engine, _ = make_engine()
    s = Session(engine).associate()
    s.echo()
    s.release()
    t = Session(engine)
    t.send(True, b"\x04\x00\xff\xff\xff\xff" + bytes(10))  # a length overflow has its own rule
    assert not (s.fired() | t.fired()) & {"dicom-malformed-pdu"}
    assert "dicom-length-overflow" in t.fired()


def test_pdu_over_negotiated_max_fires() -> None:
    engine, _ = make_engine()
    s = Session(engine).associate(abstracts=(CT_STORAGE,), ac_max_length=4096)
    s.send(True, P.encode_p_data_tf([P.PDV(1, False, True, bytes(8000))]))
    assert "dicom-pdu-over-negotiated-max" in s.fired()


def test_pdu_over_negotiated_max_quiet() -> None:
    engine, _ = make_engine()
    s = Session(engine).associate(abstracts=(CT_STORAGE,), ac_max_length=65536)
    s.store(CT_STORAGE)
    assert "dicom-pdu-over-negotiated-max" not in s.fired()


def test_protocol_state_violation_fires() -> None:
    engine, _ = make_engine()
    s = Session(engine)
    s.send(True, P.encode_p_data_tf([P.PDV(1, True, True, bytes(8))]))  # data before any association
    alert = s.alert("dicom-protocol-state-violation")
    assert alert.event.details["observation"]["code"] == "data-before-association"


def test_protocol_state_violation_quiet() -> None:
    engine, _ = make_engine()
    s = Session(engine).associate(abstracts=(VERIFICATION, CT_STORAGE))
    s.echo()
    s.store(CT_STORAGE)
    s.release()
    s.close()
    assert not s.fired() & {"dicom-protocol-state-violation", "dicom-pdu-over-negotiated-max",
                            "dicom-malformed-pdu", "dicom-length-overflow"}


def test_non_dicom_bytes_fires() -> None:
    engine, _ = make_engine()
    flow = Flow("10.6.6.6", 5555, "10.1.1.2", 104)
    alerts = DicomAdapter(engine).non_dicom(flow, b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n")
    assert [a.rule_id for a in alerts] == ["dicom-non-dicom-bytes"]
    assert alerts[0].action == "abort" and "protocol_guess=http" in alerts[0].message
    assert DicomAdapter(engine).non_dicom(flow, b"SSH-2.0-OpenSSH_9.6\r\n")[0].event.details["observation"][
        "protocol_guess"] == "ssh"


def test_non_dicom_bytes_quiet() -> None:
    engine, _ = make_engine()
    flow = Flow("10.6.6.6", 5556, "10.1.1.2", 2762)
    client_hello = bytes.fromhex("160301020001") + bytes(10)
    assert DicomAdapter(engine).non_dicom(flow, client_hello) == []


@pytest.mark.parametrize("data, guess", [
    (bytes.fromhex("16030100a5010000a1"), "tls"),
    (b"POST /wado HTTP/1.1", "http"),
    (b"SSH-2.0-x", "ssh"),
    (b"\x00\x00\x00\x85\xffSMBr", "smb"),
    (b"\x03\x00\x00\x13\x0e\xe0", "rdp"),
    (b"HELP\r\n", "text"),
    (b"\x00\x01\x02\xff", "unknown"),
])
def test_guess_protocol(data: bytes, guess: str) -> None:
    assert guess_protocol(data) == guess


def test_scan_echo_probe_fires() -> None:
    """nmap dicom-ping style: associate (maybe echo), leave; with a new AE title pair each time."""
    engine, clock = make_engine()
    fired = []
    for calling, called in (("ECHOSCU", "ANY-SCP"), ("ECHOSCU", "PACS"), ("SCANNER", "ORTHANC")):
        clock.t += 10
        s = Session(engine, client="10.7.7.7").associate(calling, called)
        s.echo()
        s.release()
        fired += [a for a in s.close().alerts if a.rule_id == "dicom-scan-echo-probe"]
    assert len(fired) == 1
    assert sorted(fired[0].event.details["threshold"]["values"]) == [
        "ECHOSCU->ANY-SCP", "ECHOSCU->PACS", "SCANNER->ORTHANC"]


def test_scan_echo_probe_quiet() -> None:
    engine, clock = make_engine()
    fired: set[str] = set()
    for _ in range(20):  # a monitoring system echoes every minute with one pair
        clock.t += 60
        s = Session(engine, client="10.7.7.8").associate("MONITOR", "PACS")
        s.echo()
        s.release()
        fired |= s.close().fired()
    for called in ("PACS", "PACS2", "PACS3", "PACS4"):  # real work with several pairs
        clock.t += 10
        s = Session(engine, client="10.7.7.9").associate("CT1", called, abstracts=(VERIFICATION, CT_STORAGE))
        s.echo()
        s.store(CT_STORAGE)
        s.release()
        fired |= s.close().fired()
    assert "dicom-scan-echo-probe" not in fired


# --------------------------------------------------------------------------- the engine itself


def test_alert_event_is_a_storable_record() -> None:
    engine, _ = make_engine(document_sources=["DOCSCAN"])
    s = Session(engine, client="10.8.8.8").associate(calling="CT1", abstracts=(PDF_STORAGE,))
    s.store(PDF_STORAGE, patient_id="PAT42")
    alert = s.alert("dicom-document-store-unexpected-source")
    event = alert.event
    assert event.kind == "ids.alert.dicom-document-store-unexpected-source"
    assert event.component == "ids" and event.outcome == Outcome.UNKNOWN and event.severity is Severity.WARNING
    assert event.details["rule_id"] == alert.rule_id and event.details["action"] == "drop"
    assert event.details["sensor"] == "inline" and event.details["flow_id"] == s.flow.id
    assert event.details["observation"]["sop_class_uid"] == PDF_STORAGE
    assert Event.from_json(event.to_json()).to_json() == event.to_json()
    # The patient is named in the data set that follows the command; alerts after it carry it.
    s.store(PDF_STORAGE, patient_id="PAT42")
    assert s.alerts[-1].event.patient_ids == ("PAT42",)


def test_disabled_rules_and_overrides() -> None:
    engine, clock = make_engine(
        disabled_rules=["dicom-tool-default-ae-title"],
        thresholds={"dicom-association-flood": ThresholdOverride(count=3, within="1m")},
        actions={"dicom-association-flood": ActionOverride(action="quarantine", quarantine_for="5m")},
    )
    assert engine.inactive["dicom-tool-default-ae-title"] == "disabled in ids.disabled_rules"
    alerts = []
    for _ in range(3):
        clock.t += 1
        alerts += Session(engine, client="10.2.2.9").associate("ECHOSCU", "ANY-SCP").alerts
    assert [a.rule_id for a in alerts] == ["dicom-association-flood"]
    assert alerts[0].action == "quarantine" and alerts[0].quarantine_for == timedelta(minutes=5)


def test_settings_naming_unknown_rules_are_errors() -> None:
    with pytest.raises(RuleError) as info:
        Engine(BUILTIN, IdsSettings(disabled_rules=["dicom-nope"],
                                    thresholds={"dicom-unexpected-port": ThresholdOverride(count=2)},
                                    actions={"dicom-unexpected-port": ActionOverride(action="quarantine")}))
    fields = {(p.rule_id, p.field) for p in info.value.problems}
    assert fields == {("dicom-nope", "disabled_rules"), ("dicom-unexpected-port", "thresholds"),
                      ("dicom-unexpected-port", "actions.quarantine_for")}


def test_generic_observe_for_other_protocols_and_cli() -> None:
    engine, _ = make_engine()
    flow = Flow("203.0.113.9", 1, "10.1.1.2", 104)
    obs = Observation("dicom", "association-request", {"calling_ae": "X", "called_ae": "Y", "ae_titles": ["X", "Y"]},
                      flow)
    assert {a.rule_id for a in engine.observe(obs, now=1.0)} == {"dicom-cleartext-from-external"}
    assert engine.observe(Observation("hl7", "message", {}, flow)) == []


def test_decode_error_mid_association_keeps_ae_titles() -> None:
    engine, _ = make_engine()
    s = Session(engine).associate("MOD1", "PACS")
    s.send(True, b"\x04\x00\x00\x00\x00\x02\x00\x00")  # P-DATA-TF too short for a PDV
    alert = next(a for a in s.alerts if a.rule_id in ("dicom-length-overflow", "dicom-malformed-pdu"))
    assert alert.event.actor.ae_title == "MOD1" and alert.event.target.ae_title == "PACS"


def test_a_peer_breaking_every_pdu_is_not_an_alert_storm() -> None:
    engine, _ = make_engine(max_alerts_per_flow=3)
    s = Session(engine).associate(abstracts=(CT_STORAGE,), ac_max_length=4096)
    for _ in range(50):
        s.send(True, P.encode_p_data_tf([P.PDV(1, False, False, bytes(5000))]))
    assert sum(a.rule_id == "dicom-pdu-over-negotiated-max" for a in s.alerts) == 3
    assert engine.suppressed >= 47
    # Rules that act (drop, abort, quarantine) are never capped: each request must be refused.
    engine, _ = make_engine(max_alerts_per_flow=1, move_destinations=["WS1"])
    s = Session(engine).associate(abstracts=(MOVE_PATIENT_ROOT,))
    for _ in range(5):
        s.move("EXFIL", identifier("PATIENT", patient_id="PAT1"))
    assert sum(a.rule_id == "dicom-move-destination-not-allowed" for a in s.alerts) == 5


def test_build_engine_loads_site_rules(tmp_path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "site.yaml").write_text(
        "- {id: site-any-echo, title: Echo, severity: info, protocol: dicom, on: dimse-request,"
        " match: {service: C-ECHO}, reference: test}\n")
    engine = build_engine(settings=settings_for(IdsSettings(rules_dirs=[Path("rules")], builtin_rules=False), tmp_path))
    assert [r.id for r in engine.active_rules] == ["site-any-echo"]
    (tmp_path / "rules" / "bad.yaml").write_text("- {id: site-bad}\n")
    with pytest.raises(RuleError) as info:
        build_engine(settings=IdsSettings(rules_dirs=[tmp_path / "rules"]))
    assert info.value.rule_id == "site-bad" and info.value.file.endswith("bad.yaml")


def test_flow_state_is_dropped_on_close() -> None:
    engine, _ = make_engine()
    s = Session(engine).associate()
    assert engine.tracked_flows() == 1
    s.close()
    assert engine.tracked_flows() == 0


# --------------------------------------------------------------------------- bounded memory


def _flood_of_sources(engine: Engine, count: int, start: int = 0) -> None:
    ev = AssociationRequested(P.AssociateRQ("PACS", "MOD1", [P.PresentationContextRQ(1, VERIFICATION, [IVLE])]))
    observe = DicomAdapter(engine).observe
    for i in range(start, start + count):
        flow = Flow(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", 1024 + (i & 0x7FFF), "10.0.0.1", 104)
        observe(flow, ev, now=i * 0.001)


def test_a_million_sources_keep_state_bounded() -> None:
    """1e6 distinct sources, each requesting an association it never closes: every threshold
    rule and the flow table hold at most their caps."""
    cap = 1000
    engine = Engine(BUILTIN, IdsSettings(max_tracked_sources=cap, max_tracked_flows=cap), clock=lambda: 0.0)
    _flood_of_sources(engine, 1_000_000)
    assert engine.tracked_keys("dicom-association-flood") == cap
    assert engine.tracked_keys() <= cap
    assert engine.tracked_flows() == cap
    assert engine.observations == 1_000_000


def test_memory_stops_growing_once_the_caps_are_full() -> None:
    cap = 1000
    engine = Engine(BUILTIN, IdsSettings(max_tracked_sources=cap, max_tracked_flows=cap), clock=lambda: 0.0)
    _flood_of_sources(engine, 5 * cap)  # fill every cap (and the address cache) first
    tracemalloc.start()
    try:
        _flood_of_sources(engine, 5 * cap, start=5 * cap)
        filled = tracemalloc.get_traced_memory()[0]
        _flood_of_sources(engine, 20 * cap, start=10 * cap)
        final = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert final - filled < 256 * 1024, (filled, final)


def test_bounded_lru_evicts_and_expires() -> None:
    class V:
        touched = 0.0

    lru: BoundedLRU[int, V] = BoundedLRU(3, ttl=10.0)
    for key in range(5):
        lru.get_or_create(key, float(key), V)
    assert lru.keys() == [2, 3, 4] and lru.evicted == 2
    lru.get(2, 5.0)  # touch: 2 becomes the most recent
    lru.get_or_create(9, 5.0, V)
    assert lru.keys() == [4, 2, 9]
    lru.get_or_create(10, 100.0, V)  # everything else idle for > 10 s
    assert lru.keys() == [10] and lru.expired == 3


def test_distinct_window_caps_values_and_slides() -> None:
    w = DistinctWindow(3, 60.0)
    assert w.add(0.0, "a") is None and w.add(1.0, "a") is None and w.add(2.0, "b") is None
    assert w.add(70.0, "c") is None  # a and b are older than 60 s
    assert len(w) == 1
    assert w.add(71.0, "d") is None and sorted(w.add(72.0, "e")) == ["c", "d", "e"]
    assert len(w) == 0 and w.add(73.0, "f") is None  # quiet for one window
    assert w.add(80.0, "x" * 10_000) is None  # long values are truncated, not stored whole


@given(st.lists(st.floats(min_value=0, max_value=500, allow_nan=False), max_size=80),
       st.integers(min_value=1, max_value=8), st.floats(min_value=1, max_value=100))
@hsettings(max_examples=200, deadline=None)
def test_count_window_matches_a_naive_sliding_window(gaps, count, within) -> None:
    """Exact mode: fires exactly when `count` events fall within `within`, then once per window."""
    w = CountWindow(count, within)
    t = 0.0
    times: list[float] = []
    quiet_until = float("-inf")
    for gap in gaps:
        t += gap
        fired = w.add(t) is not None
        expected = False
        if t >= quiet_until:
            times.append(t)
            recent = times[-count:]
            if len(recent) == count and t - recent[0] <= within:
                expected = True
                times.clear()
                quiet_until = t + within
        assert fired == expected


def test_sum_window_floor_and_baseline() -> None:
    w = SumWindow(100, 3600.0, baseline=5)
    assert w.add(0, 60) is None and w.add(10, 50) == 110  # floor reached, no history yet
    for hour in range(1, 8):  # learn about 1000 per hour
        w.add(hour * 3600 + 1, 1000)
    assert w.periods >= 3 and 500 < w.average < 1200
    assert w.add(8 * 3600 + 1, 1000) is None  # usual
    assert w.add(8 * 3600 + 2, 6000) is not None  # >5x usual


# --------------------------------------------------------------------------- performance


def test_observation_cost_is_a_few_microseconds() -> None:
    """The engine is on the hot path; a loose bound here, exact numbers in the report."""
    engine, _ = make_engine(known_ae_titles=["MOD1", "PACS"], move_destinations=["WS1"],
                            document_sources=["DOCSCAN"])
    flow = Flow("10.1.1.10", 40000, "10.1.1.2", 104)
    events = []
    rq = P.AssociateRQ("PACS", "MOD1", [P.PresentationContextRQ(1, CT_STORAGE, [IVLE]),
                                         P.PresentationContextRQ(3, FIND_STUDY_ROOT, [IVLE])])
    ac = P.AssociateAC("PACS", "MOD1", [P.PresentationContextAC(1, 0, IVLE), P.PresentationContextAC(3, 0, IVLE)])
    decoder = AssociationDecoder()
    events += decoder.feed(True, P.encode_associate_rq(rq)) + decoder.feed(False, P.encode_associate_ac(ac))
    for pdu in encode_dimse_message(1, encode_command_set(CommandSet(
            C_STORE_RQ, message_id=1, affected_sop_class_uid=CT_STORAGE, affected_sop_instance_uid="1.2.3",
            priority=0, command_data_set_type=1)), instance(CT_STORAGE)):
        events += decoder.feed(True, pdu)
    for pdu in encode_dimse_message(3, encode_command_set(CommandSet(
            C_FIND_RQ, message_id=2, affected_sop_class_uid=FIND_STUDY_ROOT, priority=0, command_data_set_type=1)),
            identifier("STUDY", patient_id="PAT1")):
        events += decoder.feed(True, pdu)
    assert len(events) >= 8
    rounds = 2000
    start = time.perf_counter()
    observe = DicomAdapter(engine).observe
    for _ in range(rounds):
        for ev in events:
            observe(flow, ev, 0.0)
    per_event = (time.perf_counter() - start) / (rounds * len(events)) * 1e6
    assert per_event < 50, f"{per_event:.1f} µs per observation"
