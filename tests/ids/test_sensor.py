"""The passive sensor on crafted captures: what it tells the engine (flow, capture time), the
association record, detection on any port, mid-stream starts, gaps, decode errors, bounds, and a
fuzz run over mutated captures.  Real traffic (dcmtk, Orthanc, nmap) is in test_passive_real.py.

Captures are built with capture_craft (TCP segments with correct sequence numbers) around PDUs
encoded by pacsguard.dicom, then read through the real capture layer (``passive.read``)."""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from capture_craft import Flow as TcpFlow
from capture_craft import eth_frames, pcap_bytes

from pacsguard.dicom import dimse as D
from pacsguard.dicom import pdu as P
from pacsguard.events import Event, Outcome
from pacsguard.ids import passive
from pacsguard.ids.observation import Flow
from pacsguard.ids.sensor import PassiveSensor, plausible_pdata_header
from pacsguard.records.dicom import MAX_IDS_PER_EVENT

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
FIND = "1.2.840.10008.5.1.4.1.2.2.1"
EVLE = "1.2.840.10008.1.2.1"
IVLE = "1.2.840.10008.1.2"
T0 = 1_700_000_000_000_000  # capture_craft's first timestamp (µs)


# ------------------------------------------------------------------ a recording engine double


@dataclass
class Call:
    what: str
    flow: Flow
    now: float | None
    args: tuple[Any, ...] = ()


@dataclass
class RecordingEngine:
    """Records every call the sensor makes to its DICOM adapter; returns no alerts (the real engine is tested in
    test_passive_real.py and by the fuzz test below)."""

    calls: list[Call] = field(default_factory=list)

    class settings:
        dicom_ports = [104, 11112, 4242, 2761, 2762]

    def observe(self, flow, ev, now=None):
        self.calls.append(Call("dicom", flow, now, (ev,)))
        return []

    def decode_error(self, flow, from_client, err, now=None):
        self.calls.append(Call("decode_error", flow, now, (from_client, err)))
        return []

    def non_dicom(self, flow, first_bytes, now=None):
        self.calls.append(Call("non_dicom", flow, now, (bytes(first_bytes),)))
        return []

    def association_result(self, flow, *, rejected, reason=None, by=None, now=None):
        self.calls.append(Call("association_result", flow, now, (rejected, reason, by)))
        return []

    def flow_closed(self, flow, now=None):
        self.calls.append(Call("flow_closed", flow, now))
        return []

    def expected(self, flow, called_ae, now=None):
        return None  # no C-MOVE announced anything: the record names none

    def of(self, what: str) -> list[Call]:
        return [c for c in self.calls if c.what == what]

    def events(self, kind: type | None = None) -> list[Any]:
        return [c.args[0] for c in self.of("dicom") if kind is None or isinstance(c.args[0], kind)]


def run(frames_or_bytes, engine=None, **kw) -> tuple[RecordingEngine, list[Event], passive.PassiveStats]:
    """Read a capture (frames or pcap bytes) through the capture layer into the sensor."""
    engine = engine or RecordingEngine()
    out: list[Event] = []
    data = frames_or_bytes if isinstance(frames_or_bytes, bytes) else pcap_bytes(frames_or_bytes)
    if isinstance(engine, RecordingEngine):  # the double stands in for the sensor's DicomAdapter
        kw.setdefault("adapter", engine)
    stats = passive.read(data, engine=engine, publish=out.append, **kw)
    return engine, out, stats


ENDINGS = ("dicom.association.released", "dicom.association.aborted", "dicom.association.rejected")


def records(events: list[Event]) -> list[Event]:
    """The last Event of each association: how it ended, with what only the capture knows in
    ``details.capture``."""
    return [e for e in events if e.kind in ENDINGS]


def dimse(events: list[Event], name: str | None = None) -> list[Event]:
    """The DIMSE request Events (``dicom.dimse.<service>``), of one service if ``name`` is given."""
    prefix = f"dicom.dimse.{name}" if name else "dicom.dimse."
    return [e for e in events if e.kind.startswith(prefix)]


def by_client_port(events: list[Event]) -> dict[int, list[Event]]:
    """The association's Events per client port (one connection each)."""
    out: dict[int, list[Event]] = {}
    for e in events:
        if e.kind.startswith("dicom."):
            out.setdefault(e.actor.port or 0, []).append(e)
    return out


# ------------------------------------------------------------------ DICOM conversations


def dataset_bytes(**attrs: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = attrs.pop("SOPClassUID", CT)
    ds.SOPInstanceUID = attrs.pop("SOPInstanceUID", "1.2.826.0.1.3680043.2.1125.1")
    for k, v in attrs.items():
        setattr(ds, k, v)
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


def rq(calling: str = "MODALITY1", called: str = "PACS", contexts=((1, VERIFICATION), (3, CT), (5, FIND))) -> bytes:
    return P.encode_associate_rq(
        P.AssociateRQ(
            called_ae_title=called,
            calling_ae_title=calling,
            presentation_contexts=[P.PresentationContextRQ(cid, a, [EVLE, IVLE]) for cid, a in contexts],
            user_information=P.UserInformation.build(
                max_length=16384, implementation_class_uid="1.2.3.4", implementation_version_name="TEST_1"
            ),
        )
    )


def ac(calling: str = "MODALITY1", called: str = "PACS", contexts=(1, 3, 5)) -> bytes:
    return P.encode_associate_ac(
        P.AssociateAC(
            called_ae_title=called,
            calling_ae_title=calling,
            presentation_contexts=[P.PresentationContextAC(cid, 0, EVLE) for cid in contexts],
            user_information=P.UserInformation.build(max_length=16384, implementation_class_uid="1.2.3.5"),
        )
    )


def message(ctx: int, cmd: D.CommandSet, dataset: bytes | None = None, max_pdu: int = 16384) -> bytes:
    return b"".join(P.encode_dimse_message(ctx, D.encode_command_set(cmd), dataset, max_pdu))


def echo_rq(mid: int = 1) -> D.CommandSet:
    return D.CommandSet(command_field=D.C_ECHO_RQ, message_id=mid, affected_sop_class_uid=VERIFICATION)


def store_rq(mid: int, uid: str) -> D.CommandSet:
    return D.CommandSet(
        command_field=D.C_STORE_RQ, message_id=mid, affected_sop_class_uid=CT, affected_sop_instance_uid=uid,
        priority=0, command_data_set_type=0,
    )


def rsp(ctx: int, req: D.CommandSet, status: int = 0) -> bytes:
    return b"".join(P.encode_dimse_message(ctx, D.response_for(req, status), None, 16384))


class Conversation:
    """One TCP connection: segments of whole PDUs, in order; ``frames()`` gives the capture."""

    def __init__(self, sport: int = 104, cport: int = 40001, client: str = "10.1.2.3", server: str = "10.9.8.7",
                 handshake: bool = True, ts: int = T0) -> None:
        self.tcp = TcpFlow(client=client, server=server, cport=cport, sport=sport, ts=ts)
        self.pkts: list[tuple[int, bytes]] = self.tcp.handshake() if handshake else []

    def c(self, data: bytes, mss: int = 1460) -> Conversation:
        self.pkts += self.tcp.send(True, data, mss)
        return self

    def s(self, data: bytes, mss: int = 1460) -> Conversation:
        self.pkts += self.tcp.send(False, data, mss)
        return self

    def fin(self) -> Conversation:
        self.pkts += self.tcp.fin()
        return self

    def frames(self) -> list[tuple[int, bytes]]:
        return eth_frames(self.pkts)


def full_association(sport: int = 104, n_store: int = 2, patients=("PAT1",), cport: int = 40001, **kw) -> Conversation:
    conv = Conversation(sport=sport, cport=cport, **kw)
    conv.c(rq()).s(ac())
    e = echo_rq(1)
    conv.c(message(1, e)).s(rsp(1, e))
    for i in range(n_store):
        r = store_rq(2 + i, f"1.2.826.0.1.3680043.2.1125.{i + 10}")
        pid = patients[i % len(patients)]
        ds = dataset_bytes(PatientID=pid, StudyInstanceUID=f"1.2.3.{i % len(patients)}",
                           SOPInstanceUID=r.affected_sop_instance_uid)
        conv.c(message(3, r, ds + b"\x00" * 40000)).s(rsp(3, r))
    conv.c(P.encode_release_rq()).s(P.encode_release_rp())
    return conv.fin()


# ------------------------------------------------------------------ tests: normal associations


def test_full_association_record_and_engine_calls() -> None:
    conv = full_association(sport=5000, n_store=3, patients=("PAT1", "PAT2"))
    engine, out, stats = run(conv.frames(), dicom_ports=[104])
    recs = records(out)
    assert len(recs) == 1
    rec = recs[0]
    d, cap = rec.details, rec.details["capture"]
    assert (rec.actor.host, rec.actor.port, rec.target.host, rec.target.port) == ("10.1.2.3", 40001, "10.9.8.7", 5000)
    assert all(e.component == "ids" and e.details["sensor"] == "passive" for e in out)  # on an unlisted port
    assert rec.details["called_ae"] == "PACS"
    assert rec.actor.ae_title == "MODALITY1" and rec.target.ae_title == "PACS"
    assert rec.kind == "dicom.association.released" and rec.outcome == Outcome.SUCCESS
    assert cap["tcp_close"] == "fin"
    assert cap["midstream"] is False
    accepted = next(e for e in out if e.kind == "dicom.association.accepted")
    assert accepted.details["accepted"] == sorted([VERIFICATION, CT, FIND])
    assert cap["commands"] == {"C-ECHO-RQ": 1, "C-ECHO-RSP": 1, "C-STORE-RQ": 3, "C-STORE-RSP": 3}
    assert cap["statuses"] == {"C-ECHO-RSP": {"0x0000": 1}, "C-STORE-RSP": {"0x0000": 3}}
    assert [e.details["status"] for e in dimse(out)] == ["0x0000"] * 4
    assert [e.kind for e in dimse(out)] == ["dicom.dimse.c-echo"] + ["dicom.dimse.c-store"] * 3
    assert cap["requestor"]["datasets"] == 3 and cap["acceptor"]["datasets"] == 0
    assert cap["requestor"]["dataset_bytes"] > 3 * 40000
    assert sum(e.details["bytes"] for e in dimse(out, "c-store")) == cap["requestor"]["dataset_bytes"]
    assert d["bytes_from_client"] > cap["requestor"]["dataset_bytes"] > 0 and d["bytes_from_upstream"] > 0
    assert d["pdus_from_client"] > 0 and d["pdus_from_upstream"] > 0
    assert {p for e in dimse(out) for p in e.patient_ids} == {"PAT1", "PAT2"}
    assert {u for e in dimse(out) for u in e.study_uids} == {"1.2.3.0", "1.2.3.1"}
    assert sum(e.sop_instance_count for e in out) == 3
    assert cap["implementation"]["requestor"] == {"class_uid": "1.2.3.4", "version_name": "TEST_1"}
    assert out[0].kind == "dicom.association.requested"
    assert out[0].time.timestamp() == pytest.approx(T0 / 1e6 + 0.0001, abs=1e-3)
    assert [e.time for e in out] == sorted(e.time for e in out)  # every Event on capture time
    assert d["duration_ms"] > 0
    # the engine saw every protocol event with the flow and the capture time
    dicom = engine.of("dicom")
    assert dicom and all(c.flow is dicom[0].flow for c in dicom)
    flow = dicom[0].flow
    assert (flow.client_host, flow.client_port) == ("10.1.2.3", 40001)
    assert (flow.server_host, flow.server_port) == ("10.9.8.7", 5000)
    assert flow.sensor == "passive" and flow.id and flow.tls is False
    nows = [c.now for c in dicom]
    assert nows == sorted(nows) and T0 / 1e6 < nows[0] < T0 / 1e6 + 10
    names = [type(c.args[0]).__name__ for c in dicom]
    assert names[:2] == ["AssociationRequested", "AssociationAccepted"]
    assert names[-2:] == ["ReleaseRequested", "ReleaseCompleted"]
    assert len(engine.of("flow_closed")) == 1 and engine.of("flow_closed")[0].flow is flow
    assert not engine.of("decode_error") and not engine.of("non_dicom")
    assert stats.sensor.associations == 1 and stats.sensor.dicom_connections == 1
    assert stats.sensor.commands["C-STORE-RQ"] == 3


def test_event_time_is_capture_time_and_json_round_trips() -> None:
    _, out, _ = run(full_association().frames())
    assert len(records(out)) == 1
    for rec in out:
        again = Event.from_json(rec.to_json())
        assert again.details == rec.details and again.patient_ids == rec.patient_ids


def test_rejected_and_aborted_results() -> None:
    rej = Conversation(cport=40010).c(rq(called="WRONG")).s(P.encode_associate_rj(1, 1, 7)).fin()
    abo = Conversation(cport=40011).c(rq()).s(ac()).c(P.encode_abort(0, 0)).fin()
    engine, out, _ = run(rej.frames() + abo.frames())
    by_port = {r.actor.port: r for r in records(out)}
    r = by_port[40010]
    assert r.kind == "dicom.association.rejected"
    # PS3.8 Table 9-21: result 1 rejected-permanent, source 1 service-user, reason 7 called AE title not recognised
    assert (r.details["by"], r.details["result"], r.details["source"], r.details["reason_code"]) \
        == ("upstream", 1, 1, 7)
    assert r.outcome == Outcome.SERIOUS_FAILURE  # as the gateway records an upstream's rejection
    a = by_port[40011]
    assert a.kind == "dicom.association.aborted" and a.details["by"] == "client"
    assert (a.details["source"], a.details["reason_code"]) == (0, 0)
    assert len(engine.of("flow_closed")) == 2


def test_association_cut_without_release_is_incomplete_and_open_one_is_accepted() -> None:
    cut = Conversation(cport=40020).c(rq()).s(ac()).fin()
    open_ = Conversation(cport=40021).c(rq()).s(ac()).c(message(1, echo_rq()))  # capture ends
    _, out, stats = run(cut.frames() + open_.frames())
    by_port = {r.actor.port: r for r in records(out)}
    assert stats.sensor.results == {"incomplete": 1, "accepted": 1}
    cut_end, open_end = by_port[40020], by_port[40021]
    assert cut_end.kind == "dicom.association.aborted" and cut_end.details["capture"]["tcp_close"] == "fin"
    # the client's FIN came first
    assert (cut_end.details["by"], cut_end.details["cause"]) == ("client", "connection-lost")
    assert open_end.kind == "dicom.association.aborted" and open_end.details["capture"]["tcp_close"] == "end"
    assert (open_end.details["by"], open_end.details["cause"]) == ("sensor", "capture-ended")
    # the C-ECHO still waiting for its response is recorded as cut off
    echo = by_client_port(out)[40021][-2]
    assert echo.kind == "dicom.dimse.c-echo" and echo.details["decision"] == "aborted"
    assert [e.kind for e in by_client_port(out)[40020]] == [
        "dicom.association.requested", "dicom.association.accepted", "dicom.association.aborted"]


# ------------------------------------------------------------------ tests: what is DICOM


def test_non_dicom_on_a_dicom_port_goes_to_the_engine() -> None:
    request = b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n" + b"x" * 40
    http = Conversation(sport=104, cport=40030).c(request).s(b"HTTP/1.1 400 Bad\r\n\r\n").fin()
    engine, out, stats = run(http.frames())
    calls = engine.of("non_dicom")
    assert len(calls) == 1 and calls[0].args[0].startswith(b"GET / HTTP/1.1")
    assert calls[0].flow.server_port == 104 and calls[0].now == pytest.approx(T0 / 1e6, abs=1)
    assert not engine.of("dicom") and not [e for e in out if e.kind.startswith("dicom.")]
    assert len(engine.of("flow_closed")) == 1
    assert stats.sensor.non_dicom_on_dicom_port == 1


def test_server_speaking_first_on_a_dicom_port_is_not_dicom() -> None:
    ssh = Conversation(sport=11112, cport=40031).s(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n").c(b"SSH-2.0-nmap\r\n").fin()
    engine, _, _ = run(ssh.frames())
    calls = engine.of("non_dicom")
    assert len(calls) == 1 and calls[0].args[0].startswith(b"SSH-2.0-OpenSSH")


def test_short_garbage_then_close_on_a_dicom_port() -> None:
    conv = Conversation(sport=104, cport=40032).c(b"\x00\x00hello").fin()
    engine, _, _ = run(conv.frames())
    assert [c.args[0] for c in engine.of("non_dicom")] == [b"\x00\x00hello"]


def test_short_pdu_header_with_a_lying_length_is_a_decode_error() -> None:
    """Round 7: a first byte that is a PDU type (01H) is decoded, as the gateway does: the
    PDU-length "hell" (1.7 GB) is the decoder's length error, not non-DICOM bytes."""
    conv = Conversation(sport=104, cport=40032).c(b"\x01\x00hello").fin()
    engine, _, _ = run(conv.frames())
    assert not engine.of("non_dicom")
    (call,) = engine.of("decode_error")
    assert call.args[1].code == "pdu-length-exceeds-maximum"


def test_non_dicom_elsewhere_and_tls_on_a_dicom_port_are_skipped() -> None:
    web = Conversation(sport=8080, cport=40033).c(b"GET / HTTP/1.1\r\n" + b"a" * 60).s(b"HTTP/1.1 200 OK\r\n").fin()
    client_hello = bytes.fromhex("160301") + b"\x02\x00" + b"\x01" * 200
    tls = Conversation(sport=2762, cport=40034).c(client_hello).s(b"\x16\x03\x03" + b"\x00" * 90).fin()
    empty = Conversation(sport=104, cport=40035).fin()
    engine, out, stats = run(web.frames() + tls.frames() + empty.frames())
    assert not engine.calls and not out
    assert stats.sensor.skipped == {"not DICOM": 1, "tls on a DICOM port": 1, "no payload": 1}


def test_rq_split_into_tiny_segments_is_still_recognised() -> None:
    conv = (Conversation(sport=7777, cport=40036).c(rq(), mss=10).s(ac())
            .c(P.encode_release_rq()).s(P.encode_release_rp()).fin())
    _, out, _ = run(conv.frames())
    assert records(out)[0].kind == "dicom.association.released"


# ------------------------------------------------------------------ tests: mid-stream, gaps


def midstream_tail(sport: int, cport: int) -> Conversation:
    """A connection whose handshake and association negotiation were not captured."""
    conv = Conversation(sport=sport, cport=cport, handshake=False)
    for i in range(3):
        r = store_rq(10 + i, f"1.2.826.0.1.3680043.2.1125.9{i}")
        conv.c(message(3, r, dataset_bytes(PatientID="MID", StudyInstanceUID="1.2.3.9") + b"\x00" * 5000)).s(rsp(3, r))
    conv.c(P.encode_release_rq()).s(P.encode_release_rp())
    return conv.fin()


def test_midstream_on_a_dicom_port() -> None:
    engine, out, _ = run(midstream_tail(104, 40040).frames())
    rec = records(out)[0]
    d = rec.details["capture"]
    assert d["midstream"] is True
    assert rec.actor.ae_title is None and rec.details["called_ae"] is None
    assert "dicom.association.requested" not in {e.kind for e in out}
    assert d["commands"] == {"C-STORE-RQ": 3, "C-STORE-RSP": 3}
    assert rec.kind == "dicom.association.released"
    assert [e.patient_ids for e in dimse(out)] == [("MID",)] * 3
    assert not engine.of("decode_error") and "violations" not in d


def test_midstream_on_an_unlisted_port_recognised_by_a_pdu_boundary() -> None:
    engine, out, stats = run(midstream_tail(6000, 40041).frames())
    assert records(out)[0].details["capture"]["midstream"] is True
    assert records(out)[0].details["capture"]["commands"]["C-STORE-RQ"] == 3
    assert len(dimse(out, "c-store")) == 3
    # and random bytes mid-stream on an unlisted port are not taken for DICOM
    conv = Conversation(sport=6001, cport=40042, handshake=False)
    rnd = random.Random(1)
    for _ in range(20):
        conv.c(bytes(rnd.randrange(256) for _ in range(300)))
    engine, out, stats = run(conv.frames())
    assert not out and not engine.calls
    assert stats.sensor.skipped == {"mid-stream, not recognisably DICOM": 1}


def test_plausible_pdata_header() -> None:
    pdu = P.encode_p_data_tf([P.PDV(1, True, True, b"\x00" * 10)])
    assert plausible_pdata_header(pdu)
    assert not plausible_pdata_header(b"\x04\x00" + pdu[2:10] + b"\x02\x00")  # even context id
    assert not plausible_pdata_header(b"GET / HTTP/1.1\r\n")


def test_gap_in_a_large_dataset_resynchronises_without_false_violations() -> None:
    conv = Conversation(sport=104, cport=40050).c(rq()).s(ac())
    big = dataset_bytes(PatientID="GAP", StudyInstanceUID="1.2.3.7") + os.urandom(200_000)
    r1 = store_rq(1, "1.2.826.0.1.3680043.2.1125.71")
    conv.c(message(3, r1, big))
    n_before = len(conv.pkts)
    conv.s(rsp(3, r1))
    r2 = store_rq(2, "1.2.826.0.1.3680043.2.1125.72")
    conv.c(message(3, r2, big)).s(rsp(3, r2))
    conv.c(P.encode_release_rq()).s(P.encode_release_rp()).fin()
    # drop three client segments in the middle of the first data set (a capture loss); a small
    # out-of-order buffer makes the capture layer give up on the hole before the server's answer
    # (with the default 1 MiB it waits until the close, and the acceptor's later PDUs, A-RELEASE-RP
    # included, reach the decoder before the requestor's: an ordering artefact of the capture
    # layer, not of the sensor)
    victim = 3 + 2 + 60
    assert victim + 3 < n_before
    pkts = conv.pkts[:victim] + conv.pkts[victim + 3 :]
    engine, out, stats = run(eth_frames(pkts), max_buffer_per_flow=8192)
    d = records(out)[0].details["capture"]
    assert d["requestor"]["gaps"] == 1 and d["requestor"]["gap_bytes"] == 3 * 1460
    assert d["commands"] == {"C-STORE-RQ": 2, "C-STORE-RSP": 2}
    assert records(out)[0].kind == "dicom.association.released"
    assert [e.details["status"] for e in dimse(out, "c-store")] == ["0x0000"] * 2
    assert "violations" not in d and "decode_error" not in d
    assert d["requestor"]["datasets"] == 1  # the one cut by the hole is not counted
    assert not engine.of("decode_error")
    assert stats.sensor.gaps == 1 and stats.capture.gaps == 1
    # the contexts learnt before the gap still name the command's abstract syntax
    from pacsguard.dicom.events import DimseCommand

    cmds = engine.events(DimseCommand)
    assert [c.abstract_syntax for c in cmds] == [CT] * 4


def test_capture_loss_raises_no_state_violation_alert() -> None:
    """With the capture layer's default 1 MiB out-of-order buffer the hole is given up only at the
    close, so the acceptor's later PDUs (A-RELEASE-RP included) reach the decoder before the
    requestor's: ordering violations caused by loss must not become alerts."""
    from pacsguard.ids.passive import build_engine

    conv = Conversation(sport=104, cport=40052).c(rq()).s(ac())
    r1 = store_rq(1, "1.2.826.0.1.3680043.2.1125.73")
    conv.c(message(3, r1, dataset_bytes(PatientID="L", StudyInstanceUID="1.2.3.8") + os.urandom(100_000)))
    conv.s(rsp(3, r1)).c(P.encode_release_rq()).s(P.encode_release_rp()).fin()
    pkts = conv.pkts[:30] + conv.pkts[31:]
    _, out, _ = run(eth_frames(pkts), engine=build_engine())
    d = records(out)[0].details["capture"]
    assert d["requestor"]["gaps"] == 1 and "unexpected-pdu" in d["violations_after_loss"]
    assert [e for e in out if e.kind.startswith("ids.alert.")] == []


def test_genuine_ordering_violations_still_alert() -> None:
    from pacsguard.ids.passive import build_engine

    # data before the association is accepted: held, then released at the close
    early = Conversation(sport=104, cport=40053).c(rq()).c(message(1, echo_rq(1))).s(ac()).fin()
    # a long association: the violation is released once 10 s of capture time have passed
    long = Conversation(sport=104, cport=40054, ts=T0 + 60_000_000).c(rq()).s(ac())
    long.c(P.encode_release_rp())  # an A-RELEASE-RP nobody asked for
    t_violation = long.tcp.ts
    long.tcp.ts += 15_000_000
    e = echo_rq(2)
    long.c(message(1, e)).s(rsp(1, e))
    long.tcp.ts += 100_000_000
    long.c(P.encode_release_rq()).s(P.encode_release_rp()).fin()
    _, out, _ = run(early.frames() + long.frames(), engine=build_engine())
    alerts = [e for e in out if e.kind == "ids.alert.dicom-protocol-state-violation"]
    assert len(alerts) == 2
    assert alerts[0].details["observation"]["code"] == "data-before-association"
    assert alerts[1].details["observation"]["code"] == "unexpected-pdu"
    assert alerts[1].time.timestamp() == pytest.approx(t_violation / 1e6, abs=0.01)  # its own time
    rec_long = next(r for r in records(out) if r.actor.port == 40054)
    assert rec_long.details["capture"]["violations"] == {"unexpected-pdu": 1}


def test_gap_before_the_decision_makes_the_connection_midstream() -> None:
    conv = Conversation(sport=104, cport=40051).c(rq()).s(ac())
    e = echo_rq(1)
    conv.c(message(1, e)).s(rsp(1, e)).fin()
    pkts = conv.pkts[:3] + conv.pkts[4:]  # the A-ASSOCIATE-RQ segment is lost
    engine, out, _ = run(eth_frames(pkts))
    d = records(out)[0].details["capture"]
    assert d["midstream"] is True and d["requestor"]["gaps"] == 1
    assert d["commands"] == {"C-ECHO-RQ": 1, "C-ECHO-RSP": 1}
    # the A-ASSOCIATE-AC came first (the request behind the hole is delivered at the close):
    # an ordering artefact of the loss, recorded but not evidence for the engine
    assert "violations" not in d and d["violations_after_loss"] == {"unexpected-pdu": 1}
    from pacsguard.dicom.events import ProtocolViolation

    assert engine.events(ProtocolViolation) == []


# ------------------------------------------------------------------ tests: errors and bounds


def test_decode_error_stops_decoding_and_is_reported() -> None:
    conv = Conversation(sport=104, cport=40060).c(rq()).s(ac())
    e = echo_rq(1)
    conv.c(message(1, e) + b"\x09\x00\x00\x00\x00\x04abcd").s(rsp(1, e))
    conv.c(message(1, echo_rq(2))).fin()
    engine, out, stats = run(conv.frames())
    errs = engine.of("decode_error")
    assert len(errs) == 1 and errs[0].args[0] is True and errs[0].args[1].code == "unknown-pdu-type"
    rec = records(out)[0]
    d = rec.details["capture"]
    assert d["decode_error"]["code"] == "unknown-pdu-type" and d["decode_error"]["from"] == "requestor"
    assert d["commands"] == {"C-ECHO-RQ": 1}  # the partial events came first, nothing after
    assert d["stopped"] == "decode error: unknown-pdu-type"
    assert rec.kind == "dicom.association.aborted"
    assert (rec.details["by"], rec.details["cause"]) == ("sensor", "decode-error")
    # the C-ECHO whose response was never decoded is recorded as cut off
    assert [(e.kind, e.details["decision"]) for e in dimse(out)] == [("dicom.dimse.c-echo", "aborted")]
    assert stats.sensor.decode_errors == {"unknown-pdu-type": 1}
    assert len(engine.of("flow_closed")) == 1


def test_patient_ids_are_bounded() -> None:
    """Each stored object names its own patient; a C-FIND disclosing more patients than an Event
    lists names MAX_IDS_PER_EVENT of them and counts every match."""
    conv = Conversation(sport=104, cport=40070).c(rq()).s(ac())
    for i in range(120):
        r = store_rq(i + 1, f"1.2.826.0.1.3680043.2.1125.5.{i}")
        conv.c(message(3, r, dataset_bytes(PatientID=f"P{i:04d}", StudyInstanceUID=f"1.2.3.5.{i}"))).s(rsp(3, r))
    q = D.CommandSet(command_field=D.C_FIND_RQ, message_id=500, affected_sop_class_uid=FIND, priority=0,
                     command_data_set_type=0)
    conv.c(message(5, q, dataset_bytes(SOPClassUID=FIND, QueryRetrieveLevel="PATIENT", PatientID="*")))
    pending = D.CommandSet(command_field=D.C_FIND_RSP, message_id_being_responded_to=500, affected_sop_class_uid=FIND,
                           status=0xFF00, command_data_set_type=0)
    matches = b"".join(
        message(5, pending, dataset_bytes(SOPClassUID=FIND, QueryRetrieveLevel="PATIENT", PatientID=f"M{i:05d}"))
        for i in range(MAX_IDS_PER_EVENT + 20))
    conv.s(matches, mss=8192).s(rsp(5, q))
    conv.c(P.encode_release_rq()).s(P.encode_release_rp()).fin()
    _, out, _ = run(conv.frames())
    stores = dimse(out, "c-store")
    assert [len(e.patient_ids) for e in stores] == [1] * 120
    assert {p for e in stores for p in e.patient_ids} == {f"P{i:04d}" for i in range(120)}
    assert {u for e in stores for u in e.study_uids} == {f"1.2.3.5.{i}" for i in range(120)}
    find = dimse(out, "c-find")[0]
    assert len(find.patient_ids) == MAX_IDS_PER_EVENT and find.details["responses"] == MAX_IDS_PER_EVENT + 20
    assert records(out)[0].details["capture"]["commands"]["C-STORE-RQ"] == 120


def test_buffer_budget_stops_the_connection_that_crosses_it() -> None:
    conv = Conversation(sport=104, cport=40080).c(rq()).s(ac())
    r = store_rq(1, "1.2.826.0.1.3680043.2.1125.81")
    conv.c(message(3, r, b"\x00" * 300_000, max_pdu=1 << 20)).s(rsp(3, r)).fin()
    engine = RecordingEngine()
    out: list[Event] = []
    sensor = PassiveSensor(engine, out.append, max_buffer_total=100_000, adapter=engine)
    from pacsguard.ids.capture import read_capture

    read_capture(pcap_bytes(conv.frames()), sensor)
    rec = records(out)[0]
    d = rec.details["capture"]
    assert d["stopped"] == "sensor buffer budget exceeded"
    assert (rec.details["by"], rec.details["cause"]) == ("sensor", "decode-stopped")
    assert sensor.stats.skipped == {"sensor buffer budget exceeded": 1}
    assert sensor._buffered_total == 0


def test_many_sequential_connections_within_max_flows() -> None:
    frames = []
    for i in range(50):
        frames += full_association(cport=41000 + i, n_store=1, ts=T0 + i * 1_000_000).frames()
    engine, out, stats = run(frames, max_flows=8)
    assert stats.sensor.associations == 50 == len(records(out))
    assert {r.kind for r in records(out)} == {"dicom.association.released"}
    assert stats.sensor.results == {"released": 50}
    assert len(engine.of("flow_closed")) == 50
    assert stats.capture.evicted == 0


# ------------------------------------------------------------------ with the real engine


def test_real_engine_alerts_carry_capture_time() -> None:
    from pacsguard.ids.passive import build_engine

    http = Conversation(sport=104, cport=40090).c(b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n" + b"x" * 40).fin()
    _, out, stats = run(http.frames(), engine=build_engine())
    alerts = [e for e in out if e.kind.startswith("ids.alert.")]
    assert [e.kind for e in alerts] == ["ids.alert.dicom-non-dicom-bytes"]
    assert alerts[0].time.timestamp() == pytest.approx(T0 / 1e6, abs=1)
    assert alerts[0].details["observation"]["protocol_guess"] == "http"
    assert stats.sensor.alerts_by_rule == {"dicom-non-dicom-bytes": 1}


def _rejections(spacing_us: int) -> list[tuple[int, bytes]]:
    frames = []
    for i in range(6):
        conv = Conversation(sport=104, cport=42000 + i, ts=T0 + i * spacing_us)
        conv.c(rq(calling="SCANNER", called=f"GUESS{i}")).s(P.encode_associate_rj(1, 1, 7)).fin()
        frames += conv.frames()
    return frames


def test_threshold_windows_run_on_capture_time() -> None:
    from pacsguard.ids.passive import build_engine

    # six rejected AE guesses 5 s apart in capture time: brute force (5 distinct pairs in 60 s)
    _, out, _ = run(_rejections(5_000_000), engine=build_engine())
    fired = [e for e in out if e.kind == "ids.alert.dicom-ae-brute-force"]
    assert len(fired) == 1
    assert fired[0].time.timestamp() == pytest.approx(T0 / 1e6 + 20, abs=1)  # at the fifth
    # the same six, 30 s apart in capture time (read in milliseconds all the same): no window
    _, out, _ = run(_rejections(30_000_000), engine=build_engine())
    assert not [e for e in out if e.kind == "ids.alert.dicom-ae-brute-force"]


# ------------------------------------------------------------------ fuzz


def _base_capture() -> list[tuple[int, bytes]]:
    frames = full_association(sport=104, n_store=2).frames()
    frames += Conversation(sport=11112, cport=40101).c(rq(called="X")).s(P.encode_associate_rj(1, 1, 7)).fin().frames()
    frames += midstream_tail(4242, 40102).frames()
    frames += Conversation(sport=104, cport=40103).c(b"GET / HTTP/1.0\r\n\r\n" * 3).fin().frames()
    conv = Conversation(sport=104, cport=40104).c(rq()).s(ac())
    q = D.CommandSet(command_field=D.C_FIND_RQ, message_id=1, affected_sop_class_uid=FIND, priority=0,
                     command_data_set_type=0)
    conv.c(message(5, q, dataset_bytes(SOPClassUID=FIND, QueryRetrieveLevel="STUDY", PatientID="*")))
    conv.s(rsp(5, q)).c(P.encode_release_rq()).s(P.encode_release_rp()).fin()
    frames += conv.frames()
    return frames


BASE_FRAMES = _base_capture()


def _engine_for_fuzz():
    from pacsguard.ids import IdsSettings
    from pacsguard.ids.passive import build_engine

    # every list set, so that every built-in rule is active
    return build_engine(settings=IdsSettings(known_ae_titles=["MODALITY1", "PACS"], move_destinations=["PACS"],
                                             document_sources=["MODALITY1"]))


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, len(BASE_FRAMES) - 1), st.integers(54, 1600), st.integers(1, 255)),
    st.tuples(st.just("drop"), st.integers(0, len(BASE_FRAMES) - 1)),
    st.tuples(st.just("dup"), st.integers(0, len(BASE_FRAMES) - 1)),
    st.tuples(st.just("swap"), st.integers(0, len(BASE_FRAMES) - 2)),
    st.tuples(st.just("cut"), st.integers(0, len(BASE_FRAMES) - 1), st.integers(0, 1600)),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=12), st.integers(0, 40))
def test_fuzz_mutated_captures_never_raise(mutations, truncate_tail) -> None:
    frames = list(BASE_FRAMES)
    for m in mutations:
        op = m[0]
        if op == "flip":
            _, i, pos, x = m
            i %= len(frames)
            ts, f = frames[i]
            if pos < len(f):
                f = f[:pos] + bytes([f[pos] ^ x]) + f[pos + 1 :]
            frames[i] = (ts, f)
        elif op == "drop" and len(frames) > 1:
            frames.pop(m[1] % len(frames))
        elif op == "dup":
            i = m[1] % len(frames)
            frames.insert(i, frames[i])
        elif op == "swap":
            i = m[1] % (len(frames) - 1)
            frames[i], frames[i + 1] = frames[i + 1], frames[i]
        elif op == "cut":
            i = m[1] % len(frames)
            ts, f = frames[i]
            frames[i] = (ts, f[: max(14, m[2])])
    data = pcap_bytes(frames)
    if truncate_tail:
        data = data[: len(data) - truncate_tail]
    engine = _engine_for_fuzz()
    assert not engine.inactive
    _, out, stats = run(data, engine=engine)
    assert stats.capture.packets > 0
    for e in out:
        e.to_json()  # every published event is serialisable


# ------------------------------------------------------------------ the command line


def _cli(*args: str):
    import typer
    from typer.testing import CliRunner

    from pacsguard.cli.ids_read import live_command, read_command

    app = typer.Typer()
    app.command("read")(read_command)
    app.command("live")(live_command)
    return CliRunner().invoke(app, list(args))


@pytest.fixture
def quiet_capture(tmp_path) -> str:
    """Released associations on port 104 by site-looking AE titles: no built-in rule fires."""
    path = tmp_path / "quiet.pcap"
    path.write_bytes(pcap_bytes(full_association(n_store=2).frames()))
    return str(path)


#: What the noisy capture records: one released association with a C-ECHO and a C-STORE, one alert.
NOISY_KINDS = {"dicom.association.requested", "dicom.association.accepted", "dicom.dimse.c-echo",
               "dicom.dimse.c-store", "dicom.association.released", "ids.alert.dicom-non-dicom-bytes"}


@pytest.fixture
def noisy_capture(tmp_path) -> str:
    path = tmp_path / "noisy.pcap"
    http = Conversation(sport=104, cport=40200).c(b"GET / HTTP/1.0\r\n\r\n" * 4).fin()
    frames = full_association(n_store=1).frames() + http.frames()
    path.write_bytes(pcap_bytes(frames))
    return str(path)


def test_cli_read_no_alert_exits_0_and_prints(quiet_capture: str) -> None:
    r = _cli("read", quiet_capture)
    assert r.exit_code == 0, r.output
    assert "dicom.association" in r.output and "MODALITY1 -> PACS" in r.output
    assert "associations" in r.output and "1 (1 released)" in r.output
    assert "Gbit/s" in r.output


def test_cli_read_alert_exits_1_json(noisy_capture: str) -> None:
    r = _cli("read", noisy_capture, "--format", "json")
    assert r.exit_code == 1, r.output
    lines = r.stdout.strip().splitlines()
    events = [Event.from_json(line) for line in lines[:-1]]
    assert {e.kind for e in events} == NOISY_KINDS
    assert len(records(events)) == 1
    summary = json.loads(lines[-1])["summary"]
    assert summary["alerts"]["total"] == 1
    assert summary["alerts"]["by_rule"][0]["rule_id"] == "dicom-non-dicom-bytes"
    assert summary["sensor"]["associations"] == 1
    assert summary["sensor"]["skipped"] == {"non-DICOM on a DICOM port (client did not send an A-ASSOCIATE-RQ)": 1}


def test_cli_read_into_store_and_jsonl(noisy_capture: str, tmp_path) -> None:
    from pacsguard.store import EventQuery, EventStore

    db, jl = tmp_path / "s.db", tmp_path / "e.jsonl"
    r = _cli("read", noisy_capture, "--store", str(db), "--jsonl", str(jl))
    assert r.exit_code == 1, r.output
    assert "dicom.association" not in r.output  # recorded, not printed
    es = EventStore.open(str(db))
    try:
        stored = [s.event for s in es.search(EventQuery(limit=None))]
        assert {e.kind for e in stored} == NOISY_KINDS
        assert [s.event.kind for s in es.search(EventQuery(patient="PAT1"))] == ["dicom.dimse.c-store"]
    finally:
        es.close()
    assert [Event.from_json(x).id for x in jl.read_text().splitlines()] == [e.id for e in stored]


def test_cli_read_rules_dir(quiet_capture: str, tmp_path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "site.yaml").write_text(
        "- id: site-store-seen\n  title: A store was seen\n  severity: notice\n  protocol: dicom\n"
        "  on: dimse-request\n  match:\n    command: C-STORE-RQ\n  action: alert\n  reference: site\n")
    r = _cli("read", quiet_capture, "--rules-dir", str(rules), "--alerts-only", "--format", "json")
    assert r.exit_code == 1, r.output
    lines = r.stdout.strip().splitlines()
    assert [Event.from_json(x).kind for x in lines[:-1]] == ["ids.alert.site-store-seen"] * 2
    (rules / "bad.yaml").write_text("- id: Bad Id\n  on: nothing\n")
    r = _cli("read", quiet_capture, "--rules-dir", str(rules))
    assert r.exit_code == 2 and "Traceback" not in r.output and "bad.yaml" in r.output


def test_cli_read_usage_errors_exit_2(tmp_path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a capture at all")
    for path, words in ((text, "not a pcap or pcapng"), (tmp_path / "missing.pcap", "cannot read")):
        r = _cli("read", str(path))
        assert r.exit_code == 2, r.output
        assert words in r.output and "Traceback" not in r.output


def test_cli_live_bad_interface_exits_2() -> None:
    r = _cli("live", "--interface", "no-such-if0", "--duration", "1")
    assert r.exit_code == 2 and "no-such-if0" in r.output and "Traceback" not in r.output


def test_cli_read_takes_settings_from_the_config(noisy_capture: str, tmp_path) -> None:
    cfg = tmp_path / "pacsguard.yaml"
    cfg.write_text("ids:\n  disabled_rules: [dicom-non-dicom-bytes]\n  known_ae_titles: [MODALITY1, PACS]\n")
    r = _cli("read", noisy_capture, "--config", str(cfg), "--format", "json")
    assert r.exit_code == 0, r.output  # the only rule that fired is off
    summary = json.loads(r.stdout.strip().splitlines()[-1])["summary"]
    assert summary["inactive_rules"]["dicom-non-dicom-bytes"].startswith("disabled")
    assert "dicom-unknown-calling-ae" not in summary["inactive_rules"]
    cfg.write_text("ids:\n  dicom_ports: [70000]\n")
    r = _cli("read", noisy_capture, "--config", str(cfg))
    assert r.exit_code == 2 and "ids.dicom_ports" in r.output and "Traceback" not in r.output
