"""Round 7: an association that stays silent longer than the capture layer's 5-minute idle timeout
is not forgotten.  The sensor used to close it as ``timeout`` and decode what followed mid-stream,
without the A-ASSOCIATE-RQ: a client that waited 5 minutes before its C-MOVE lost its AE titles
in the alert, and a site rule on `calling_ae` (or the built-in `dicom-document-store-unexpected-
source`, which needs the calling AE title) did not fire, where the gateway's inline IDS fires.
Linux keeps an ESTABLISHED socket for ever without traffic (RFC 9293 has no idle timeout), so a
connection that carried payload both ways and saw no FIN or RST now waits 2 h
(``ESTABLISHED_TIMEOUT_S``, Linux's tcp_keepalive_time); others still time out after 5 minutes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from capture_craft import Flow, eth_frames, pcap_bytes
from test_engine import identifier

from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.events import Event
from pacsguard.ids import IdsSettings
from pacsguard.ids.passive import PassiveStats, build_engine, read

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gateway"))

from playbook import associate_ac, associate_rq, request  # noqa: E402

FIND = "1.2.840.10008.5.1.4.1.2.1.1"
MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
TWO_HOURS = 7200.0  # ESTABLISHED_TIMEOUT_S, as docs/ids.md states it
SITE_RULE = """\
- id: site-ws1-no-move
  title: WS1 may not retrieve
  severity: warning
  protocol: dicom
  on: dimse-request
  match: {calling_ae: WS1, service: C-MOVE}
  reference: site policy 4.2
"""


def _move(destination: str) -> bytes:
    command = dimse.CommandSet(dimse.C_MOVE_RQ, message_id=5, affected_sop_class_uid=MOVE, priority=0,
                               command_data_set_type=0x0000, move_destination=destination)
    return request(command, identifier("PATIENT", patient_id="PAT7"), context_id=3)


def _idle_then_move(idle_s: float) -> list[tuple[int, bytes]]:
    """An association WS1 -> PACS, *idle_s* seconds of silence (other hosts' connections come and
    go meanwhile, so the capture layer looks for idle connections), then a C-MOVE to EVIL."""
    flow = Flow()
    packets = flow.handshake() + flow.send(True, associate_rq("WS1", "PACS", FIND, MOVE))
    packets += flow.send(False, associate_ac(P.PC_ACCEPTANCE, P.PC_ACCEPTANCE, calling="WS1"))
    start = flow.ts
    for n in range(1, 9):  # background traffic every idle_s / 8
        other = Flow(client=f"10.1.2.{100 + n}", cport=41000 + n, ts=start + int(idle_s * 1e6 * n / 8) - 10_000)
        packets += other.handshake() + other.fin()
    flow.ts = start + int(idle_s * 1e6)
    return packets + flow.send(True, _move("EVIL")) + flow.fin()


def _read(packets: list[tuple[int, bytes]], tmp_path: Path) -> tuple[list[Event], PassiveStats]:
    (tmp_path / "site.yaml").write_text(SITE_RULE)
    settings = IdsSettings(known_ae_titles=["WS1", "PACS"], move_destinations=["WS2"])
    events: list[Event] = []
    stats = read(pcap_bytes(eth_frames(packets)), engine=build_engine([tmp_path], settings), publish=events.append)
    return events, stats


def test_an_association_silent_for_ten_minutes_keeps_its_ae_titles(tmp_path: Path) -> None:
    events, stats = _read(_idle_then_move(600), tmp_path)
    (site,) = [e for e in events if e.kind == "ids.alert.site-ws1-no-move"]
    assert site.actor is not None and site.actor.ae_title == "WS1"
    (move,) = [e for e in events if e.kind == "ids.alert.dicom-move-destination-not-allowed"]
    assert move.actor is not None and move.actor.ae_title == "WS1"
    assert move.target is not None and move.target.ae_title == "PACS"
    ends = [e for e in events if e.kind in ("dicom.association.aborted", "dicom.association.released")]
    assert len(ends) == 1 and "timeout" not in ends[0].message
    assert stats.capture.timed_out == 0
    assert stats.sensor.midstream_associations == 0


def test_an_association_silent_beyond_the_established_timeout_ends(tmp_path: Path) -> None:
    """The documented limit: after 2 h of silence the association is closed
    (a PACS drops such an association long before) and its later traffic is read mid-stream."""
    events, stats = _read(_idle_then_move(TWO_HOURS + 600), tmp_path)
    assert stats.capture.timed_out == 1
    assert any(e.kind == "dicom.association.aborted" and "timeout" in e.message for e in events)
    assert not [e for e in events if e.kind == "ids.alert.site-ws1-no-move"]
    from pacsguard.ids.capture.reassembly import ESTABLISHED_TIMEOUT_S
    assert ESTABLISHED_TIMEOUT_S == TWO_HOURS


def test_connections_not_in_use_still_time_out_after_five_minutes(tmp_path: Path) -> None:
    """A handshake without payload, and a request the server never answered, keep the short timeout."""
    silent, asked = Flow(cport=42001), Flow(cport=42002)
    packets = silent.handshake() + asked.handshake() + asked.send(True, associate_rq("WS1", "PACS", FIND))
    later = Flow(client="10.1.2.200", cport=42003, ts=asked.ts + 400_000_000)
    packets += later.handshake() + later.fin()
    _, stats = _read(packets, tmp_path)
    assert stats.capture.timed_out == 2
    assert stats.capture.close_reasons.get("timeout") == 2
