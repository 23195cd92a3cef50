"""The passive sensor: reassembled TCP streams in, DICOM protocol events to the rule engine,
alerts and each association's record (the gateway's ``dicom.association.*``/``dicom.dimse.*``
Events) out.

:class:`PassiveSensor` is a :class:`~pacsguard.ids.capture.StreamConsumer`: the capture layer
(:func:`~pacsguard.ids.capture.read_capture`, :func:`~pacsguard.ids.capture.live_capture`) calls
``on_open``/``on_data``/``on_gap``/``on_close`` per TCP connection.  For each connection it

1. decides whether the connection carries DICOM, on any port (below);
2. feeds each direction into the connection's one
   :class:`~pacsguard.dicom.AssociationDecoder` (the decoder the gateway uses too: DESIGN.md,
   "no second parser of the same bytes") - through its per-direction ``reader().feed`` and
   ``on_pdu``, which is what ``AssociationDecoder.feed`` does, one call layer shorter per
   segment;
3. hands every protocol event to :meth:`~pacsguard.ids.dicom.DicomAdapter.observe` with the connection's
   :class:`Flow` and the *capture* time of the segment that completed it (``now``, seconds since
   the epoch), so rule windows (brute force, floods) run on capture time, not on reading time;
4. publishes the :class:`~pacsguard.events.Event` of every alert the engine returns (its
   ``time`` set to the capture time at which the rule fired);
5. records the association through :class:`~pacsguard.records.dicom.AssociationRecord`, the
   recorder the gateway's relay uses (docs/events.md, "One shape"): ``dicom.association.requested``
   and ``accepted`` as they are seen, one ``dicom.dimse.<service>`` per request at its final
   response, and, when the TCP connection closes, how the association ended (``released``,
   ``aborted``, ``rejected``, at the capture time of the PDU that ended it) with the totals and,
   under ``details.capture``, what only a capture knows (:func:`_capture_details`).  An
   association cut without A-RELEASE or A-ABORT (FIN/RST, idle timeout, eviction, end of the
   capture, decoding stopped) is ``aborted`` by the side that closed first when the capture shows
   it, else by ``sensor`` (PS3.8 9.1: the association ends with the transport connection).

Which connections are DICOM
---------------------------
* The client's first bytes pass :func:`~pacsguard.dicom.looks_like_associate_rq` (the first 42
  bytes: A-ASSOCIATE-RQ header and both AE titles): DICOM, whatever the port.  A server port
  that is not in ``dicom_ports`` is left to the engine's "DICOM on unexpected port" rule.
* The server port is in ``dicom_ports`` (``IdsSettings.dicom_ports``):
    - the TCP handshake was not captured (``Connection.midstream``): decoded mid-stream with
      ``AssociationDecoder(resync=True, midstream=True)``; ``details.capture.midstream`` is true;
    - the client's first bytes are a TLS record header (DICOM TLS, PS3.15 B.1): not decodable,
      counted as skipped (``"tls on a DICOM port"``), nothing reported to the engine;
    - the client's first byte is a PDU type (PS3.8 9.3.1, 01H-07H) but the A-ASSOCIATE-RQ test
      fails (a lying PDU-length, a bad protocol version or AE title, another PDU first), and the
      bytes do not look like another protocol (``guess_protocol``: RDP's TPKT is 03 00):
      decoded, so the decoder names the fault (a decode error or a protocol violation) as it
      does inline, where the gateway decodes whatever a client sends on its port;
    - otherwise (the client sent something else, or the server spoke first - a DICOM acceptor
      never does, PS3.8 9.2): :meth:`~pacsguard.ids.dicom.DicomAdapter.non_dicom` with the first bytes, and the
      connection is not decoded further.
* The server's bytes come first and are an acceptor's PDU (A-ASSOCIATE-AC/RJ, A-ABORT,
  P-DATA-TF: :func:`looks_like_acceptor_pdu`), on any port: the client's first segment was lost
  from the capture, so the connection is decoded mid-stream.
* Neither, but the handshake was missed: mid-stream DICOM on an unlisted port is recognised
  when one of the first data segments (either direction) starts with a plausible P-DATA-TF
  header (type 04H, reserved 0, a PDV whose length fits, odd context ID, only the two low
  control bits used: PS3.8 9.3.5, 9.3.5.1); otherwise it is skipped.
* Everything else is not DICOM and costs one dict lookup per segment afterwards.

Gaps
----
The capture layer reports bytes it never saw through ``on_gap``.  The sensor's choice: the
connection's decoder is replaced by a **fresh** ``AssociationDecoder(resync=True,
midstream=True)`` that inherits what the old one had learnt and that the public API exposes
(A-ASSOCIATE-RQ/AC, accepted presentation contexts, negotiated maximum lengths, the
association state).  Why a fresh decoder and not "keep feeding with resync": the old decoder
holds a partial PDU and possibly a half-assembled DIMSE message for the direction with the gap;
joining bytes across the hole would produce a corrupt PDU and bogus protocol violations (false
"malformed PDU" alerts caused by capture loss, not by the peer).  The fresh decoder's readers skip
to the next plausible PDU header, and its message assemblies ignore data-set fragments until
the next command starts (midstream mode), so a message cut by the hole is dropped silently.
Cost: a partial PDU pending in the *other* direction at that moment is dropped as well (its
remainder is skipped by resynchronisation).  The capture layer delivers the data behind a hole
only when it gives up on the hole (buffer full, or the connection ends), so after a gap - and
after a mid-stream start - the two directions may also reach the decoder out of order: protocol
violations about ordering (:data:`LOSS_SENSITIVE_VIOLATIONS`) on such a connection are kept in
the record (``violations_after_loss``) and not handed to the engine.  Because the hole is
reported only after the misordered PDUs were decoded, an ordering violation on a clean connection
is held back until the connection closes or :data:`HOLD_US` of capture time pass; a gap in the
meantime makes it an artefact of loss, otherwise it goes to the engine with its original time.
``details.capture`` counts the gaps and bytes missing per direction and the bytes skipped while
resynchronising.

Decode errors
-------------
A :class:`~pacsguard.dicom.DecodeError` (malformed bytes) first dispatches the events decoded
before it (``err.partial``), then goes to :meth:`~pacsguard.ids.dicom.DicomAdapter.decode_error`; that connection
is not decoded any further (counted in :attr:`SensorStats.decode_errors` by error code, noted in
``details.capture``).

Memory
------
Per open connection: one small :class:`_ConnState` with bounded collections (``MAX_KEYS``
command names and statuses, ``MAX_HELD`` held violations), its association record (one
:class:`~pacsguard.records.dicom.Pending` per request in flight, patient IDs bounded per
request), the undecided-connection buffer (at most ``MAX_PENDING`` bytes) and the decoder's
partial PDUs.  Connections are bounded by the capture layer's ``max_flows``; partial PDUs are
bounded per direction by ``max_pdu_length`` and, over all
connections, by ``max_buffer_total`` (checked after every decoded PDU and every 32 segments): the
connection whose partial PDU crosses that budget stops being decoded (``"sensor buffer budget
exceeded"`` in the skipped reasons and in its record).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pacsguard.dicom import (
    Aborted,
    AssociationAccepted,
    AssociationDecoder,
    AssociationRejected,
    AssociationRequested,
    DecodeError,
    DimseCommand,
    DimseDatasetEnd,
    DimseDatasetStart,
    ProtocolViolation,
    ReleaseCompleted,
    looks_like_associate_rq,
)
from pacsguard.dicom.association import AssociationState
from pacsguard.dicom.pdu import PDU_P_DATA_TF, PDU_TYPE_NAMES, AssociateRJ
from pacsguard.dicom.stream import DEFAULT_MAX_PDU_LENGTH
from pacsguard.events import Event, Outcome, Party, Severity
from pacsguard.events.model import time_from_us
from pacsguard.ids.capture import Connection
from pacsguard.ids.capture.reassembly import StreamAnomaly
from pacsguard.ids.dicom.adapter import DicomAdapter
from pacsguard.ids.dicom.sniff import ASSOCIATE_HEAD_BYTES, looks_like_acceptor_pdu, plausible_pdata_header
from pacsguard.ids.observation import Flow
from pacsguard.ids.sniff import guess_protocol, looks_like_tls
from pacsguard.records.dicom import AssociationRecord, StoredInstances, capture_time
from pacsguard.records.moves import MoveLedger

if TYPE_CHECKING:  # the engine is only needed for its API, not at import time
    from pacsguard.ids.engine import Engine

__all__ = [
    "CaptureClock",
    "PassiveSensor",
    "SensorStats",
    "looks_like_acceptor_pdu",
    "plausible_pdata_header",
]

COMPONENT = "ids"

#: Bound on distinct command names, statuses, move destinations, violation codes, rule ids.
MAX_KEYS = 64
#: Bound on bytes buffered for a connection whose protocol is not decided yet.
MAX_PENDING = 64 * 1024
#: Client bytes needed to recognise an A-ASSOCIATE-RQ (header and both AE titles).
HEAD_BYTES = ASSOCIATE_HEAD_BYTES
#: How many data segments of a mid-stream connection on an unlisted port are looked at.
MIDSTREAM_PROBE_SEGMENTS = 16
#: First bytes handed to ``DicomAdapter.non_dicom`` and kept in the stats.
NON_DICOM_SAMPLE = 256
#: Protocol violations about the *order* of PDUs and messages.  After a gap or a mid-stream start
#: the decoder sees an incomplete view, and the capture layer delivers what follows a hole late
#: (once it gives up on the hole), so these would be artefacts of capture loss: they are kept in
#: ``details.capture`` (``violations_after_loss``) and not handed to the engine.
LOSS_SENSITIVE_VIOLATIONS = frozenset(
    {
        "unexpected-pdu",
        "data-before-association",
        "data-after-release",
        "data-after-close",
        "dataset-without-command",
        "command-while-dataset-expected",
        "context-changed-mid-message",
    }
)
#: How long (capture time, µs) an ordering violation on a clean connection is held back in case
#: a hole in the other direction shows up (then it is an artefact), at most MAX_HELD of them.
HOLD_US = 10_000_000
MAX_HELD = 16
#: Default budget for partial PDUs buffered by all decoders together.
DEFAULT_MAX_BUFFER_TOTAL = 256 << 20
#: The ``cause`` of an association that ended without A-RELEASE or A-ABORT, by the capture
#: layer's close reason (any other reason is its own cause).
END_CAUSES = {"fin": "connection-lost", "rst": "connection-lost", "timeout": "timeout", "evicted": "evicted",
              "end": "capture-ended"}

# connection modes
_UNDECIDED = 0
_DICOM = 1
_NON_DICOM = 2  # told the engine; nothing more to do
_STOPPED = 3  # was DICOM; decoding stopped (decode error, buffer budget)
_IGNORED = 4  # not DICOM, not on a DICOM port



class CaptureClock:
    """Capture time in seconds, advanced by the sensor; pass it as the engine's ``clock`` so that
    anything the engine times without an explicit ``now`` also runs on capture time.  Before the
    first packet it reads the wall clock."""

    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now: float | None = None

    def __call__(self) -> float:
        return self.now if self.now is not None else time.time()


@dataclass
class SensorStats:
    """What the sensor did with the connections the capture layer gave it."""

    connections: int = 0
    dicom_connections: int = 0
    associations: int = 0  # DICOM connections ended (their association's last Event published)
    midstream_associations: int = 0
    results: dict[str, int] = field(default_factory=dict)  # association result -> count
    commands: dict[str, int] = field(default_factory=dict)  # DIMSE command name -> count
    dicom_bytes: int = 0  # TCP payload of DICOM connections (both directions), counted at close
    non_dicom_on_dicom_port: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # connections not decoded, by reason
    decode_errors: dict[str, int] = field(default_factory=dict)  # by DecodeError code
    violations: dict[str, int] = field(default_factory=dict)  # ProtocolViolation code -> count
    gaps: int = 0  # gaps inside DICOM connections
    gap_bytes: int = 0
    resync_skipped_bytes: int = 0
    alerts: int = 0
    alerts_by_rule: dict[str, int] = field(default_factory=dict)
    events_published: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


def _bump(d: dict[str, int], key: str, n: int = 1) -> None:
    d[key] = d.get(key, 0) + n


def _bump_bounded(d: dict[str, int], key: str, n: int = 1) -> None:
    if key in d:
        d[key] += n
    elif len(d) < MAX_KEYS:
        d[key] = n
    else:
        d["(other)"] = d.get("(other)", 0) + n


class _ConnState:
    """The sensor's state for one TCP connection (``Connection.state``)."""

    __slots__ = (
        "conn",
        "flow",
        "mode",
        "decoder",
        "dicom_port",
        "head",
        "pending",
        "pending_bytes",
        "client_seen",
        "server_seen",
        "probe_segments",
        "midstream",
        "readers",
        "buffered",
        "nseg",
        "stopped",
        "told_engine",
        # the association's record and what only a capture knows about it
        "record",
        "final",
        "pdus",
        "impl_requestor",
        "impl_acceptor",
        "result",
        "commands",
        "statuses",
        "datasets",
        "dataset_bytes",
        "move_destinations",
        "violations",
        "violations_after_loss",
        "held",
        "decode_error",
        "gaps",
        "gap_bytes",
        "resync_skipped",
        "restarts",
        "alerts",
    )

    def __init__(self, conn: Connection, flow: Any, dicom_port: bool) -> None:
        self.conn = conn
        self.flow = flow
        self.mode = _UNDECIDED
        self.decoder: AssociationDecoder | None = None
        self.dicom_port = dicom_port
        self.head = bytearray()  # the client's first bytes, up to HEAD_BYTES
        self.pending: list[tuple[bool, bytes | int, int]] | None = []  # (from_client, data | gap size, ts)
        self.pending_bytes = 0
        self.client_seen = False
        self.server_seen = False
        self.probe_segments = 0
        self.midstream = conn.midstream
        self.readers: list[Any] | None = None  # the decoder's PDU readers: [acceptor's, requestor's]
        self.buffered = 0  # partial-PDU bytes held by the readers at the last check (budget)
        self.nseg = 0  # segments fed since the decoder started
        self.stopped: str | None = None
        self.told_engine = False
        self.record: AssociationRecord | None = None
        # how the association ended (phase, the record's keywords, capture time in µs), published
        # when the connection closes, once everything the capture knows about it is counted
        self.final: tuple[str, AssociateRJ | Aborted | None, int] | None = None
        self.pdus = [0, 0]  # PDUs counted by decoders replaced after a gap: [from acceptor, from requestor]
        self.impl_requestor: dict[str, str] | None = None
        self.impl_acceptor: dict[str, str] | None = None
        self.result = "incomplete"  # for SensorStats.results
        self.commands: dict[str, int] = {}
        self.statuses: dict[str, dict[str, int]] = {}
        self.datasets = [0, 0]  # [from acceptor, from requestor]
        self.dataset_bytes = [0, 0]
        self.move_destinations: dict[str, int] = {}
        self.violations: dict[str, int] = {}
        self.violations_after_loss: dict[str, int] = {}
        self.held: list[tuple[Any, int]] | None = None  # ordering violations awaiting a verdict
        self.decode_error: dict[str, Any] | None = None
        self.gaps = [0, 0]
        self.gap_bytes = [0, 0]
        self.resync_skipped = 0
        self.restarts = 0
        self.alerts: dict[str, int] = {}


class PassiveSensor:
    """A capture consumer that runs the rule engine over every DICOM association it sees.

    Args:
        engine: the rule engine (:class:`pacsguard.ids.engine.Engine`), fed through a
            :class:`~pacsguard.ids.dicom.DicomAdapter`; every call may return a list of
            alerts, whose ``event`` is published.
        publish: called with every Event (alerts and the associations' records), in capture order.
        dicom_ports: server ports where DICOM is expected (default: ``engine.settings.dicom_ports``).
        sensor: the ``Flow.sensor`` name (which sensor saw the flow).
        clock: a :class:`CaptureClock` to advance (give the same one to the engine).
        max_pdu_length: largest PDU a decoder buffers (a larger announced length in a stream
            that started cleanly is a decode error, ``pdu-length-exceeds-maximum``).
        max_buffer_total: budget for partial PDUs over all connections (see module docstring).
        log_associations: publish the association's ``dicom.association.*`` and ``dicom.dimse.*``
            Events (default True); alerts are published either way.
        flow_factory: what builds a connection's flow (default: the engine's ``Flow``).
        adapter: the DICOM adapter to feed (default: ``DicomAdapter(engine)``); a test double
            records the calls.
    """

    def __init__(
        self,
        engine: Engine,
        publish: Callable[[Event], None],
        *,
        dicom_ports: Iterable[int] | None = None,
        sensor: str = "passive",
        clock: CaptureClock | None = None,
        max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH,
        max_buffer_total: int = DEFAULT_MAX_BUFFER_TOTAL,
        log_associations: bool = True,
        flow_factory: Callable[..., Any] | None = None,
        adapter: DicomAdapter | None = None,
    ) -> None:
        self.engine = engine
        self.dicom = adapter if adapter is not None else DicomAdapter(engine)
        self.publish = publish
        if dicom_ports is None:
            settings = getattr(engine, "settings", None)
            dicom_ports = getattr(settings, "dicom_ports", None) or ()
        self.dicom_ports = frozenset(int(p) for p in dicom_ports)
        self.sensor = sensor
        self.clock = clock if clock is not None else CaptureClock()
        if hasattr(engine, "to_wall"):
            engine.to_wall = capture_time  # the engine's times are capture times (seconds since the epoch)
        self.max_pdu_length = max_pdu_length
        self.max_buffer_total = max_buffer_total
        self.log_associations = log_associations
        self.stats = SensorStats()
        # Shared by the records of every association, as a gateway's routes share theirs: the
        # instances C-STOREs stored (a storage commitment names SOP Instance UIDs only, PS3.4
        # J.3.2) and the open C-MOVEs (their sub-operations come on another association, C.4.2.2).
        self.stored = StoredInstances()
        self.moves = MoveLedger()
        self._buffered_total = 0
        self._Flow = flow_factory if flow_factory is not None else Flow
        self._handlers: dict[type, Callable[[_ConnState, Any, int], None]] = {
            AssociationRequested: self._on_requested,
            AssociationAccepted: self._on_accepted,
            AssociationRejected: self._on_rejected,
            ReleaseCompleted: self._on_released,
            Aborted: self._on_aborted,
            DimseCommand: self._on_command,
            DimseDatasetStart: self._on_dataset_start,
            DimseDatasetEnd: self._on_dataset_end,
            ProtocolViolation: self._on_violation,
        }

    # ------------------------------------------------------------------ consumer protocol

    def on_open(self, conn: Connection) -> None:
        self.stats.connections += 1
        flow = self._Flow(
            conn.client_ip,
            conn.client_port,
            conn.server_ip,
            conn.server_port,
            tls=False,
            route=None,
            sensor=self.sensor,
            id=f"C{conn.conn_id}",
            # the rules' sources are per VLAN (docs/ids.md); () with VLAN tracking off, as the key
            vlan=conn.vlan,
        )
        conn.state = _ConnState(conn, flow, conn.server_port in self.dicom_ports)

    def on_data(self, conn: Connection, from_client: bool, data: memoryview | bytes, ts_us: int) -> None:
        st: _ConnState | None = conn.state
        if st is None:
            return
        if st.mode == _DICOM:
            # The hot path: what AssociationDecoder.feed does (split with the direction's
            # PDUReader, decode each PDU with on_pdu), one call layer shorter.
            try:
                pdus = st.readers[from_client].feed(data)  # type: ignore[index]
            except DecodeError as err:
                self._reader_error(st, from_client, err, ts_us)
                return
            if pdus:
                self._pdus(st, from_client, pdus, ts_us)
            else:
                st.nseg += 1
                if not st.nseg & 31:
                    self._account(st)
        elif st.mode == _UNDECIDED:
            self._undecided(st, from_client, data, ts_us)

    def on_gap(self, conn: Connection, from_client: bool, nbytes: int) -> None:
        st: _ConnState | None = conn.state
        if st is None:
            return
        if st.mode == _DICOM:
            self._gap(st, from_client, nbytes)
        elif st.mode == _UNDECIDED:
            # bytes before the decision are lost: whatever follows is decoded mid-stream
            self._hold(st, from_client, nbytes, st.conn.last_ts_us)
            st.midstream = True

    def on_close(self, conn: Connection, reason: str) -> None:
        st: _ConnState | None = conn.state
        if st is None:
            return
        conn.state = None
        ts = conn.last_ts_us
        if st.mode == _UNDECIDED:
            self._decide_at_close(st, ts)
        if st.mode in (_DICOM, _STOPPED):
            if st.held is not None:
                self._release_held(st)
            self._release_budget(st)
            self._retire_decoder(st)
            self._set_decoder(st, None)
            self.stats.dicom_bytes += conn.client_bytes + conn.server_bytes
            if st.result == "accepted" and reason in ("fin", "rst"):
                # the connection ended while the association was up, without release or abort
                st.result = "incomplete"
            record = self._record(st)
            if record is not None:
                self._now(ts)
                self._end_record(st, record, reason, ts)
            self.stats.associations += 1
            _bump(self.stats.results, st.result)
            if st.midstream:
                self.stats.midstream_associations += 1
        if st.told_engine:
            self._alerts(st, self.dicom.flow_closed(st.flow, now=self._now(ts)))

    def on_anomaly(self, anomaly: StreamAnomaly) -> None:
        """Traffic the PACS may read otherwise than a naive observer (an evasion attempt): recorded
        as ``ids.anomaly.<what>`` at its capture time, whatever ``log_associations`` (docs/ids.md)."""
        self._emit(anomaly_event(anomaly, self.sensor), anomaly.vlan)

    # ------------------------------------------------------------------ deciding

    def _hold(self, st: _ConnState, from_client: bool, item: bytes | int, ts: int) -> None:
        """Keep data (or a gap, as an int) of a connection whose protocol is not decided yet."""
        assert st.pending is not None
        if isinstance(item, int):
            st.pending.append((from_client, item, ts))
            return
        st.pending.append((from_client, item, ts))
        st.pending_bytes += len(item)

    def _undecided(self, st: _ConnState, from_client: bool, data: memoryview | bytes, ts: int) -> None:
        chunk = bytes(data)
        if from_client:
            st.client_seen = True
            if len(st.head) < HEAD_BYTES:
                st.head += chunk[: NON_DICOM_SAMPLE - len(st.head)]
        elif not st.client_seen and not st.server_seen and not st.midstream:
            st.server_seen = True
            if looks_like_acceptor_pdu(chunk, self.max_pdu_length):
                # the client's first bytes are missing from the capture (the capture layer
                # holds what follows a hole until it gives up on it): decode mid-stream
                self._hold(st, from_client, chunk, ts)
                self._start_dicom(st, midstream=True)
                return
            elif st.dicom_port:
                # the server spoke first: a DICOM acceptor never does (PS3.8 9.2)
                self._not_dicom(st, chunk, ts, "server spoke first")
                return
            else:
                self._skip(st, "not DICOM")
                return
        else:
            st.server_seen = True
        self._hold(st, from_client, chunk, ts)
        if st.midstream:
            if from_client and len(st.head) >= HEAD_BYTES and looks_like_associate_rq(st.head):
                self._start_dicom(st, midstream=False)
            elif looks_like_tls(chunk[:3]) and st.dicom_port:
                self._skip(st, "tls on a DICOM port")
            elif st.dicom_port or plausible_pdata_header(chunk, self.max_pdu_length):
                self._start_dicom(st, midstream=True)
            else:
                st.probe_segments += 1
                if st.probe_segments >= MIDSTREAM_PROBE_SEGMENTS or st.pending_bytes > MAX_PENDING:
                    self._skip(st, "mid-stream, not recognisably DICOM")
            return
        if len(st.head) >= HEAD_BYTES or st.pending_bytes > MAX_PENDING:
            self._decide(st, ts)

    def _decide(self, st: _ConnState, ts: int) -> None:
        """Decide a connection whose client's first bytes are known (not mid-stream)."""
        head = bytes(st.head)
        if looks_like_associate_rq(head):
            self._start_dicom(st, midstream=False)
        elif not st.dicom_port:
            self._skip(st, "not DICOM")
        elif looks_like_tls(head):
            self._skip(st, "tls on a DICOM port")
        elif head and head[0] in PDU_TYPE_NAMES and guess_protocol(head) == "unknown":
            # A PDU the plausibility test refused (a PDU-length lie, a control character in an AE
            # title, a P-DATA-TF first): the gateway's decoder reads it and names the fault
            # (dicom-length-overflow, -malformed-pdu, -protocol-state-violation); so does this one,
            # or the same bytes would get another verdict here than inline.  RDP's TPKT header
            # (03 00) also reads as an A-ASSOCIATE-RJ: what another protocol's bytes look like
            # stays a non-DICOM alert that says which.
            self._start_dicom(st, midstream=False)
        else:
            self._not_dicom(st, head, ts, "client did not send an A-ASSOCIATE-RQ")

    def _decide_at_close(self, st: _ConnState, ts: int) -> None:
        if not st.pending_bytes:
            self._skip(st, "no payload")
        elif st.midstream:
            self._skip(st, "mid-stream, not recognisably DICOM")
        else:
            self._decide(st, ts)

    def _skip(self, st: _ConnState, reason: str) -> None:
        st.mode = _IGNORED
        st.pending = None
        st.head = bytearray()
        _bump(self.stats.skipped, reason)

    def _not_dicom(self, st: _ConnState, first: bytes, ts: int, why: str) -> None:
        st.mode = _NON_DICOM
        st.pending = None
        st.head = bytearray()
        self.stats.non_dicom_on_dicom_port += 1
        _bump(self.stats.skipped, f"non-DICOM on a DICOM port ({why})")
        st.told_engine = True
        self._alerts(st, self.dicom.non_dicom(st.flow, first[:NON_DICOM_SAMPLE], now=self._now(ts)))

    def _start_dicom(self, st: _ConnState, *, midstream: bool) -> None:
        st.mode = _DICOM
        st.midstream = midstream
        st.told_engine = True
        self.stats.dicom_connections += 1
        decoder = AssociationDecoder(resync=midstream, midstream=midstream, max_pdu_length=self.max_pdu_length)
        self._set_decoder(st, decoder)
        st.head = bytearray()
        pending, st.pending = st.pending or [], None
        st.pending_bytes = 0
        for from_client, item, ts in pending:
            if st.mode != _DICOM:
                break
            if isinstance(item, int):
                self._gap(st, from_client, item)
            else:
                self._feed(st, from_client, item, ts)

    # ------------------------------------------------------------------ decoding

    def _feed(self, st: _ConnState, from_client: bool, data: memoryview | bytes, ts: int) -> None:
        """Feed one direction's bytes (the slow path: replay of held data, after a decision)."""
        try:
            pdus = st.readers[from_client].feed(data)  # type: ignore[index]
        except DecodeError as err:
            self._reader_error(st, from_client, err, ts)
            return
        if pdus:
            self._pdus(st, from_client, pdus, ts)
        else:
            self._account(st)

    def _pdus(self, st: _ConnState, from_client: bool, pdus: list[Any], ts: int) -> None:
        decoder = st.decoder
        assert decoder is not None
        events: list[Any] = []
        pdatas: list[tuple[bytes, list[Any]]] = []  # each P-DATA-TF PDU and its events, for the record
        try:
            for pdu in pdus:
                decoded = decoder.on_pdu(from_client, pdu)
                events += decoded
                if pdu.pdu_type == PDU_P_DATA_TF:
                    pdatas.append((pdu.raw, decoded))
        except DecodeError as err:
            err.partial = events + err.partial
            self._decode_error(st, from_client, err, ts)
            return
        if events:
            self._dispatch(st, events, ts)
        record = st.record
        if record is not None:
            # After its events: a storage commitment request's data set (PS3.4 J.3), copied by the
            # record as the relay's record copies it (records.dicom.AssociationRecord.p_data).
            for raw, decoded in pdatas:
                record.p_data(from_client, raw, decoded)
        if st.held is not None and ts - st.held[0][1] > HOLD_US:
            self._release_held(st)
        if st.mode == _DICOM:
            self._account(st)

    def _release_held(self, st: _ConnState) -> None:
        """No hole showed up behind the held violations: they are the peer's, tell the engine."""
        held, st.held = st.held or [], None
        observe = self.dicom.observe
        for ev, ts in held:
            self._on_violation(st, ev, ts)
            alerts = observe(st.flow, ev, now=self._now(ts))
            if alerts:
                self._alerts(st, alerts)

    def _reader_error(self, st: _ConnState, from_client: bool, err: DecodeError, ts: int) -> None:
        """The PDU reader refused a header: decode the PDUs it completed before, then report
        (AssociationDecoder.feed's contract: the first error wins, with every event before it)."""
        decoder = st.decoder
        assert decoder is not None
        events: list[Any] = []
        try:
            for pdu in err.partial:
                events += decoder.on_pdu(from_client, pdu)
        except DecodeError as inner:
            inner.partial = events + inner.partial
            err = inner
        else:
            err.partial = events
        self._decode_error(st, from_client, err, ts)

    def _account(self, st: _ConnState) -> None:
        """Partial PDUs held by this connection's readers, against ``max_buffer_total``."""
        readers = st.readers
        if readers is None:
            return
        pend = readers[0].pending_bytes + readers[1].pending_bytes
        old = st.buffered
        if pend == old:
            return
        st.buffered = pend
        self._buffered_total += pend - old
        if pend > old and self._buffered_total > self.max_buffer_total:
            self._stop(st, "sensor buffer budget exceeded")

    def _dispatch(self, st: _ConnState, events: list[Any], ts: int) -> None:
        now = self._now(ts)
        observe = self.dicom.observe
        flow = st.flow
        handlers = self._handlers
        for ev in events:
            if type(ev) is ProtocolViolation and ev.code in LOSS_SENSITIVE_VIOLATIONS:
                if st.midstream or st.restarts:
                    # the decoder's view is incomplete (and may be reordered): not evidence
                    _bump_bounded(st.violations_after_loss, ev.code)
                elif st.held is None:
                    st.held = [(ev, ts)]
                elif len(st.held) < MAX_HELD:
                    st.held.append((ev, ts))
                else:
                    _bump_bounded(st.violations, ev.code)  # counted, not observed again
                continue
            handler = handlers.get(type(ev))
            if handler is not None:
                handler(st, ev, ts)
            alerts = observe(flow, ev, now=now)
            if alerts:
                self._alerts(st, alerts)

    def _decode_error(self, st: _ConnState, from_client: bool, err: DecodeError, ts: int) -> None:
        if err.partial:
            self._dispatch(st, list(err.partial), ts)
        _bump(self.stats.decode_errors, err.code)
        st.decode_error = {
            "code": err.code,
            "detail": err.detail[:200],
            "offset": err.offset,
            "from": "requestor" if from_client else "acceptor",
        }
        self._alerts(st, self.dicom.decode_error(st.flow, from_client, err, now=self._now(ts)))
        self._stop(st, f"decode error: {err.code}")

    def _stop(self, st: _ConnState, why: str) -> None:
        self._retire_decoder(st)
        self._set_decoder(st, None)
        st.mode = _STOPPED
        st.stopped = why
        self._release_budget(st)
        if not why.startswith("decode error"):
            _bump(self.stats.skipped, why)

    def _retire_decoder(self, st: _ConnState) -> None:
        """Keep the counters of a decoder about to be replaced or dropped."""
        old = st.decoder
        if old is None:
            return
        st.resync_skipped += old.skipped_bytes
        self.stats.resync_skipped_bytes += old.skipped_bytes
        st.pdus[0] += old.acceptor.pdus
        st.pdus[1] += old.requestor.pdus

    @staticmethod
    def _set_decoder(st: _ConnState, decoder: AssociationDecoder | None) -> None:
        st.decoder = decoder
        st.readers = None if decoder is None else [decoder.reader(False), decoder.reader(True)]

    def _release_budget(self, st: _ConnState) -> None:
        self._buffered_total -= st.buffered
        st.buffered = 0

    def _gap(self, st: _ConnState, from_client: bool, nbytes: int) -> None:
        """Resynchronise after ``nbytes`` missing in one direction (see the module docstring)."""
        idx = 1 if from_client else 0
        st.gaps[idx] += 1
        st.gap_bytes[idx] += nbytes
        if st.held is not None:
            for ev, _ts in st.held:
                _bump_bounded(st.violations_after_loss, ev.code)
            st.held = None
        self.stats.gaps += 1
        self.stats.gap_bytes += nbytes
        old = st.decoder
        if old is None:
            return
        st.restarts += 1
        self._retire_decoder(st)
        self._release_budget(st)
        new = AssociationDecoder(resync=True, midstream=True, max_pdu_length=self.max_pdu_length)
        if old.rq is not None:
            new.rq = old.rq
            new.ac = old.ac
            new.rj = old.rj
            new.contexts = dict(old.contexts)
            new.contexts_known = old.contexts_known and old.ac is not None
            new.requestor_max_pdu_length = old.requestor_max_pdu_length
            new.acceptor_max_pdu_length = old.acceptor_max_pdu_length
        state = old.state
        if state is AssociationState.CLOSED:
            new.state = state
        elif state is AssociationState.AWAITING_AC and old.rq is not None and from_client:
            # the hole is on the requestor's side: the acceptor's answer is still to come
            new.state = state
        # Otherwise the new decoder starts "established" (its midstream default): after a hole
        # in the acceptor's stream while awaiting the answer, the A-ASSOCIATE-AC may be what
        # was lost; RELEASE_REQUESTED cannot be carried over (which side asked is the old
        # decoder's private state), so an A-RELEASE-RP after such a hole reads as unexpected.
        self._set_decoder(st, new)

    # ------------------------------------------------------------------ event bookkeeping

    def _record(self, st: _ConnState) -> AssociationRecord | None:
        """The connection's association record, made at the first protocol event (an A-ASSOCIATE-RQ,
        or whatever a mid-stream connection shows first); None when records are not published."""
        record = st.record
        if record is None and self.log_associations:
            conn = st.conn
            def emit(event: Event) -> None:
                self._emit(event, conn.vlan)  # read when emitted: VLAN tracking off names it late

            record = st.record = AssociationRecord(
                emit, component=COMPONENT, client=Party(host=conn.client_ip, port=conn.client_port),
                server=Party(host=conn.server_ip, port=conn.server_port), route=None,
                flow=getattr(st.flow, "id", None), sensor=self.sensor, clock=self.clock, wallclock=self._capture_now,
                stored=self.stored, moves=self.moves)
        return record

    def _capture_now(self) -> datetime:
        return capture_time(self.clock())

    def _on_requested(self, st: _ConnState, ev: AssociationRequested, ts: int) -> None:
        rq = ev.rq
        st.impl_requestor = _implementation(rq.user_information)
        record = self._record(st)
        if record is not None:
            conn = st.conn
            record.client = Party(ae_title=rq.calling_ae_title, host=conn.client_ip, port=conn.client_port)
            record.server = Party(ae_title=rq.called_ae_title, host=conn.server_ip, port=conn.server_port)
            record.called_ae = rq.called_ae_title
            announced = self.dicom.expected(st.flow, rq.called_ae_title, now=self._now(ts))
            record.requested(rq, tls=False, certificate=None,
                             expected_by=announced.as_details() if announced is not None else None)

    def _on_accepted(self, st: _ConnState, ev: AssociationAccepted, ts: int) -> None:
        st.result = "accepted"
        st.impl_acceptor = _implementation(ev.ac.user_information)
        record = self._record(st)
        if record is not None and st.decoder is not None:
            record.accepted(st.decoder, [])  # a sensor enforces no policy: nothing refused by one

    def _on_rejected(self, st: _ConnState, ev: AssociationRejected, ts: int) -> None:
        st.result = "rejected"
        if st.final is None:
            st.final = ("rejected", ev.rj, ts)

    def _on_released(self, st: _ConnState, ev: ReleaseCompleted, ts: int) -> None:
        if st.result in ("accepted", "incomplete"):
            st.result = "released"
        if st.final is None:
            st.final = ("released", None, ts)

    def _on_aborted(self, st: _ConnState, ev: Aborted, ts: int) -> None:
        st.result = "aborted"
        if st.final is None:
            st.final = ("aborted", ev, ts)

    def _on_command(self, st: _ConnState, ev: DimseCommand, ts: int) -> None:
        cmd = ev.command
        name = cmd.name
        _bump_bounded(st.commands, name)
        _bump_bounded(self.stats.commands, name)
        status = cmd.status
        if status is not None:
            per = st.statuses.get(name)
            if per is None and len(st.statuses) < MAX_KEYS:
                per = st.statuses[name] = {}
            if per is not None:
                _bump_bounded(per, f"0x{status:04X}")
        if cmd.move_destination:
            _bump_bounded(st.move_destinations, cmd.move_destination)
        record = st.record or self._record(st)
        if record is not None:
            record.command(ev)

    def _on_dataset_start(self, st: _ConnState, ev: DimseDatasetStart, ts: int) -> None:
        record = st.record or self._record(st)
        if record is not None:
            record.dataset_start(ev)

    def _on_dataset_end(self, st: _ConnState, ev: DimseDatasetEnd, ts: int) -> None:
        idx = 1 if ev.from_requestor else 0
        st.datasets[idx] += 1
        st.dataset_bytes[idx] += ev.total_bytes
        record = st.record
        if record is not None:
            record.dataset_end(ev)

    def _on_violation(self, st: _ConnState, ev: ProtocolViolation, ts: int) -> None:
        _bump_bounded(st.violations, ev.code)
        _bump_bounded(self.stats.violations, ev.code)

    # ------------------------------------------------------------------ output

    def _now(self, ts_us: int) -> float:
        now = ts_us / 1e6
        self.clock.now = now
        return now

    def _alerts(self, st: _ConnState | None, alerts: Any) -> None:
        if not alerts:
            return
        # The engine stamps its Events with the wall clock (inline, that is when it happened);
        # passively, an alert happened at the capture time of the packet that fired it.
        when = time_from_us(int(self.clock() * 1_000_000))
        for alert in alerts:
            if not getattr(alert, "record", True):
                continue  # held back by a limit or ids.suppress: counted by the engine, not written
            rule = str(getattr(alert, "rule_id", "?"))
            self.stats.alerts += 1
            _bump(self.stats.alerts_by_rule, rule)
            if st is not None:
                _bump_bounded(st.alerts, rule)
            # an aggregate (of a limit window the engine closed now) names its own key's VLAN, not
            # that of the connection whose packet happened to close the window
            aggregate = alert.event.details.get("aggregate")
            self._emit(replace(alert.event, time=when), st.conn.vlan if st is not None and not aggregate else ())

    def flush(self) -> None:
        """The end of the capture: the aggregate alerts of the engine's open limit windows."""
        flush = getattr(self.engine, "flush", None)
        if flush is not None:
            self._alerts(None, flush())

    def _end_record(self, st: _ConnState, record: AssociationRecord, close_reason: str, ts: int) -> None:
        """The association's last Event, as the gateway records it, with ``details.capture``; its time
        is that of the PDU that ended the association (the close, when none did)."""
        capture = _capture_details(st, close_reason)
        conn = st.conn
        phase, pdu_event, at = st.final if st.final is not None else ("lost", None, ts)

        def totals() -> dict[str, Any]:
            return {"bytes_from_client": conn.client_bytes, "bytes_from_upstream": conn.server_bytes,
                    "duration_ms": round(max(0, at - conn.first_ts_us) / 1000, 3),
                    "pdus_from_client": st.pdus[1], "pdus_from_upstream": st.pdus[0]}

        when = time_from_us(at)
        if isinstance(pdu_event, AssociateRJ):
            record.upstream_rejected(pdu_event, at=when, capture=capture)
        elif isinstance(pdu_event, Aborted):
            record.peer_aborted(pdu_event.from_requestor, pdu_event, at=when, **totals(), capture=capture)
        elif phase == "released":
            record.ended("released", message="released", at=when, **totals(), capture=capture)
        else:
            by, cause, why = _how_it_ended(st, close_reason)
            record.ended("aborted", severity=Severity.NOTICE,
                         outcome=Outcome.SERIOUS_FAILURE if cause == "connection-lost" else Outcome.UNKNOWN,
                         message=f"association ended without A-RELEASE or A-ABORT: {why}", at=when, by=by,
                         reason=why, cause=cause, **totals(), capture=capture)

    def _emit(self, event: Event, vlan: tuple[int, ...] = ()) -> None:
        """Publish ``event`` of a connection whose frames carry the VLAN ids ``vlan`` (if any)."""
        if vlan:
            event = with_vlan(event, vlan)
        self.stats.events_published += 1
        self.publish(event)


def with_vlan(event: Event, vlan: tuple[int, ...]) -> Event:
    """``event`` naming the VLAN its connection was seen on (IEEE 802.1Q 9.6; 802.1ad's outer tag
    first): ``details.vlan`` ``[id]`` or ``[outer, inner]``, and the message ends with it, so that
    the same addresses on two VLANs (two hosts) are told apart in the JSON and in a table."""
    where = f"VLAN {vlan[0]}" + (f", inner {vlan[1]}" if len(vlan) > 1 else "")
    return replace(event, details={**event.details, "vlan": list(vlan)}, message=f"{event.message} ({where})")


def anomaly_event(a: StreamAnomaly, sensor: str) -> Event:
    """The ``ids.anomaly.<what>`` Event of a capture-layer anomaly (docs/events.md)."""
    details = {"anomaly": a.what, "sensor": sensor, "flow_id": f"C{a.conn.conn_id}" if a.conn is not None else None,
               "from_client": a.from_client, "offset": a.offset, "length": a.length, "detail": a.detail}
    src = f"{a.src}:{a.sport}" if a.sport else a.src
    dst = f"{a.dst}:{a.dport}" if a.dport else a.dst
    return Event(kind=f"ids.anomaly.{a.what}", component="ids",
                 severity=Severity.NOTICE if a.what == "tcp-rst-invalid" else Severity.WARNING,
                 outcome=Outcome.UNKNOWN, actor=Party(host=a.src, port=a.sport or None),
                 target=Party(host=a.dst, port=a.dport or None), details=details, time=time_from_us(a.ts_us),
                 message=f"{a.detail} ({src} -> {dst})")


def _implementation(ui: Any) -> dict[str, str] | None:
    if ui is None:
        return None
    out = {}
    if ui.implementation_class_uid:
        out["class_uid"] = ui.implementation_class_uid
    if ui.implementation_version_name:
        out["version_name"] = ui.implementation_version_name
    return out or None


def _how_it_ended(st: _ConnState, close_reason: str) -> tuple[str, str, str]:
    """``by``, ``cause`` and ``reason`` of an association that ended without A-RELEASE or A-ABORT."""
    if st.stopped:
        return "sensor", "decode-error" if st.decode_error else "decode-stopped", st.stopped
    cause = END_CAUSES.get(close_reason, close_reason)
    first = st.conn.closed_first_by_client
    if cause != "connection-lost" or first is None:
        return "sensor", cause, f"TCP connection closed ({close_reason})" if cause == close_reason else cause
    who = "client" if first else "upstream"
    return who, cause, f"{who} closed the connection ({close_reason})"


def _capture_details(st: _ConnState, close_reason: str) -> dict[str, Any]:
    """What only a capture knows about an association: the final Event's ``details.capture``."""
    capture: dict[str, Any] = {
        "tcp_close": close_reason,
        "midstream": st.midstream,
        "commands": dict(st.commands),
        "statuses": {k: dict(v) for k, v in st.statuses.items()},
        "requestor": {"datasets": st.datasets[1], "dataset_bytes": st.dataset_bytes[1], "gaps": st.gaps[1],
                      "gap_bytes": st.gap_bytes[1]},
        "acceptor": {"datasets": st.datasets[0], "dataset_bytes": st.dataset_bytes[0], "gaps": st.gaps[0],
                     "gap_bytes": st.gap_bytes[0]},
        "resync_skipped_bytes": st.resync_skipped,
    }
    optional: dict[str, Any] = {
        "resyncs": st.restarts,
        "decode_error": st.decode_error,
        "stopped": st.stopped,
        "violations": dict(st.violations),
        "violations_after_loss": dict(st.violations_after_loss),
        "move_destinations": dict(st.move_destinations),
        "alerts": dict(st.alerts),
    }
    if st.impl_requestor or st.impl_acceptor:
        optional["implementation"] = {"requestor": st.impl_requestor, "acceptor": st.impl_acceptor}
    capture.update((k, v) for k, v in optional.items() if v)
    return capture
