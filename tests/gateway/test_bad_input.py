"""Hostile input against the running gateway.

Malformed, truncated, oversized and out-of-order PDUs, floods, slow-loris peers, clients that never
release and upstreams that are down or mute: each must end that one association only, with events
naming the source and what was wrong, while the gateway keeps serving everyone else and forwards
nothing malformed upstream (PS3.8 9.2 state table: a protocol error in any state is AA-8, an
A-ABORT with source "service-provider").

One gateway process serves the whole module, so every hostile case also shows that the earlier ones
left it healthy. Its routes:

  rec    -> RecordingUpstream, a raw TCP PACS written here that records every byte it receives
  sink   -> dcmtk storescp (the bystander traffic that must keep working)
  flood  -> storescp, limits.max_associations_per_source: 3
  slow   -> storescp, limits.artim_timeout: 1, limits.idle_timeout: 2
  down   -> a port where nothing listens
  mute   -> a socket that accepts TCP (kernel backlog) but never answers
"""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from gateway_under_test import RunningGateway, route
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_corpus import el_implicit
from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.events import Event
from peers.dcmtk import Dcmtk, StoreSCP, free_port, run_storescp, wait_for_port

pytestmark = [pytest.mark.peers, pytest.mark.timeout(20)]

LOCALHOST = "127.0.0.1"
GATEWAY_AE = "PACSGUARD"
RECORDER_AE = "RECORDER"
VERIFICATION = "1.2.840.10008.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
IMPLICIT_LE = "1.2.840.10008.1.2"
#: Maximum Length the recording upstream declares in its A-ASSOCIATE-AC (PS3.8 D.1).
UPSTREAM_MAX_PDU = 16384
#: limits.max_pdu_length of the rec route.
ROUTE_MAX_PDU = 65536
#: The A-ABORT the gateway sends when it aborts (PS3.8 9.3.8: source 2 = service-provider).
GATEWAY_ABORT = P.encode_abort(P.ABORT_SOURCE_SERVICE_PROVIDER, P.ABORT_REASON_NOT_SPECIFIED)


# --- PDUs, built with the project's own encoders ----------------------------------------------------


def associate_rq(calling: str, contexts: tuple[tuple[int, str], ...] = ((1, VERIFICATION),)) -> bytes:
    return P.encode_associate_rq(P.AssociateRQ(
        called_ae_title=GATEWAY_AE, calling_ae_title=calling,
        presentation_contexts=[P.PresentationContextRQ(cid, sop, [IMPLICIT_LE]) for cid, sop in contexts],
        user_information=P.UserInformation.build(max_length=UPSTREAM_MAX_PDU, implementation_class_uid="1.2.3.4.5")))


def echo_rq(context_id: int = 1, message_id: int = 1) -> bytes:
    """A C-ECHO-RQ in one P-DATA-TF PDU (PS3.7 9.3.5)."""
    command = dimse.encode_command_set(dimse.CommandSet(dimse.C_ECHO_RQ, message_id=message_id,
                                                        affected_sop_class_uid=VERIFICATION))
    (frame,) = P.encode_dimse_message(context_id, command)
    return frame


def read_pdu(sock: socket.socket) -> bytes | None:
    """One whole PDU, or None when the peer closed first (socket timeout propagates)."""
    header = _read_exactly(sock, 6)
    if header is None:
        return None
    body = _read_exactly(sock, struct.unpack(">I", header[2:])[0])
    return None if body is None else header + body


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(n - len(buf))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def until_closed(sock: socket.socket, timeout: float) -> tuple[list[bytes], float]:
    """Read PDUs until the gateway closes the connection; the PDUs and how long it took."""
    start = time.monotonic()
    sock.settimeout(timeout)
    pdus: list[bytes] = []
    try:
        while (frame := read_pdu(sock)) is not None:
            pdus.append(frame)
    except TimeoutError:
        pytest.fail(f"the gateway kept the connection open for more than {timeout} s (got {pdus})")
    return pdus, time.monotonic() - start


def connect(s: Setup, route_name: str) -> tuple[socket.socket, Callable[[Event], bool]]:
    """A raw client on one route, and a filter for the events about this very connection (the
    module's gateway records them all in one store, and ephemeral ports get reused)."""
    since = datetime.now(UTC)
    sock = socket.create_connection((LOCALHOST, s.gw.port(route_name)), timeout=5)
    port = sock.getsockname()[1]

    def about(e: Event) -> bool:
        return (e.actor.host == LOCALHOST and e.actor.port == port and e.details.get("route") == route_name
                and e.time >= since)

    return sock, about


# --- the recording upstream -------------------------------------------------------------------------


@dataclass
class Recorded:
    """One TCP connection the recording upstream accepted."""

    received: bytearray = field(default_factory=bytearray)
    calling_ae: str | None = None
    closed: threading.Event = field(default_factory=threading.Event)


class RecordingUpstream:
    """A minimal raw-TCP PACS: answers an A-ASSOCIATE-RQ with an A-ASSOCIATE-AC that accepts
    Verification and Secondary Capture only (every other context: abstract syntax not supported;
    it never answers a C-STORE, it only records the bytes) and declares a Maximum
    Length of UPSTREAM_MAX_PDU, answers C-ECHO and A-RELEASE, and records every byte received."""

    def __init__(self) -> None:
        self.server = socket.create_server((LOCALHOST, 0))
        self.port = self.server.getsockname()[1]
        self.connections: list[Recorded] = []
        self.ac_delay: dict[str, float] = {}  # calling AE -> seconds to sit on the RQ
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="recording-upstream").start()

    def close(self) -> None:
        self.server.close()

    def by_calling_ae(self, calling: str, timeout: float = 5.0) -> Recorded:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [c for c in self.connections if c.calling_ae == calling]
            if found:
                assert len(found) == 1, f"{len(found)} upstream connections from {calling}"
                return found[0]
            time.sleep(0.02)
        raise AssertionError(f"no upstream connection carried an A-ASSOCIATE-RQ from {calling}")

    def count(self) -> int:
        with self.lock:
            return len(self.connections)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            rec = Recorded()
            with self.lock:
                self.connections.append(rec)
            threading.Thread(target=self._serve, args=(conn, rec), daemon=True).start()

    def _serve(self, conn: socket.socket, rec: Recorded) -> None:
        conn.settimeout(30)
        buf = bytearray()
        try:
            while chunk := conn.recv(65536):
                rec.received += chunk
                buf += chunk
                while len(buf) >= 6 and len(buf) >= 6 + struct.unpack(">I", buf[2:6])[0]:
                    size = 6 + struct.unpack(">I", buf[2:6])[0]
                    frame, buf = bytes(buf[:size]), buf[size:]
                    answer = self._answer(frame, rec)
                    if answer:
                        conn.sendall(answer)
        except OSError:
            pass
        finally:
            conn.close()
            rec.closed.set()

    def _answer(self, frame: bytes, rec: Recorded) -> bytes:
        kind = frame[0]
        if kind == P.PDU_ASSOCIATE_RQ:
            rq = P.parse_associate_rq(frame)
            rec.calling_ae = rq.calling_ae_title
            time.sleep(self.ac_delay.get(rq.calling_ae_title, 0))
            contexts = [P.PresentationContextAC(pc.context_id, P.PC_ACCEPTANCE, pc.transfer_syntaxes[0])
                        if pc.abstract_syntax in (VERIFICATION, SECONDARY_CAPTURE) else
                        P.PresentationContextAC(pc.context_id, P.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, None)
                        for pc in rq.presentation_contexts]
            return P.encode_associate_ac(P.AssociateAC(
                rq.called_ae_title, rq.calling_ae_title, contexts,
                P.UserInformation.build(max_length=UPSTREAM_MAX_PDU, implementation_class_uid="1.2.3.4.6")))
        if kind == P.PDU_P_DATA_TF:
            for context_id, mch, start, end in P.pdv_spans(frame):
                if mch == 0x03:  # last command fragment: this upstream only knows one-PDV commands
                    # Lenient as dcmtk is: the gateway passes the deviations peers tolerate (a
                    # mutated Command Group Length) on, with a warning.
                    command = dimse.decode_command_set(frame[start:end], tolerate=lambda _: True)
                    if command.command_field == dimse.C_ECHO_RQ:
                        return b"".join(P.encode_dimse_message(
                            context_id, dimse.response_for(command, dimse.STATUS_SUCCESS)))
            return b""
        if kind == P.PDU_RELEASE_RQ:
            return P.encode_release_rp()
        return b""


# --- the module's gateway and peers -----------------------------------------------------------------


@dataclass
class Setup:
    gw: RunningGateway
    upstream: RecordingUpstream
    sink: StoreSCP
    dcmtk: Dcmtk


def start_gateway(home: Path, routes: list[dict]) -> RunningGateway:
    """`pacsguard init` + `pacsguard serve` in `home`, like the `gateway` fixture, but for a whole module."""
    home.mkdir()
    config = {"store": {"url": "var/pacsguard.db", "checkpoint_interval": 5},
              "gateway": {"routes": routes, "quarantine_poll_interval": 0.2}}
    (home / "pacsguard.yaml").write_text(yaml.safe_dump(config))
    init = subprocess.run([sys.executable, "-m", "pacsguard.cli", "init", "--no-demo"], cwd=home,
                          capture_output=True, text=True, timeout=60, check=False)
    assert init.returncode == 0, f"pacsguard init failed:\n{init.stdout}\n{init.stderr}"
    log = home / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "pacsguard.cli", "serve", "--log-level", "debug"], cwd=home,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    gw = RunningGateway(home, {r["name"]: r["listen"]["port"] for r in routes}, proc, log, routes)
    for r in routes:
        if not wait_for_port(LOCALHOST, r["listen"]["port"], timeout=30, proc=proc):
            gw.stop()
            raise AssertionError(f"gateway did not listen on {r['listen']['port']}:\n{log.read_text()}")
    return gw


@pytest.fixture(scope="module")
def mute_upstream() -> Iterator[int]:
    """Completes the TCP handshake (listen backlog) but never accepts, so never answers."""
    with socket.create_server((LOCALHOST, 0), backlog=16) as server:
        yield server.getsockname()[1]


@pytest.fixture(scope="module")
def setup(dcmtk: Dcmtk, tmp_path_factory: pytest.TempPathFactory, mute_upstream: int) -> Iterator[Setup]:
    upstream = RecordingUpstream()
    # --fork: one process per association, so held associations do not block the next one.
    with run_storescp(dcmtk, tmp_path_factory.mktemp("storescp"), extra_args=["--fork"]) as sink:
        mute = route("mute", mute_upstream, upstream_ae="MUTE", limits={"artim_timeout": 1})
        mute["upstream"]["connect_timeout"] = 1
        routes = [
            route("rec", upstream.port, upstream_ae=RECORDER_AE,
                  limits={"max_pdu_length": ROUTE_MAX_PDU, "artim_timeout": 5}),
            route("sink", sink.port, upstream_ae=sink.aet),
            route("flood", sink.port, upstream_ae=sink.aet, limits={"max_associations_per_source": 3}),
            route("slow", sink.port, upstream_ae=sink.aet, limits={"artim_timeout": 1, "idle_timeout": 2}),
            route("down", free_port(), upstream_ae="DOWN"),
            mute,
        ]
        gw = start_gateway(tmp_path_factory.mktemp("gateway") / "home", routes)
        try:
            yield Setup(gw, upstream, sink, dcmtk)
        finally:
            gw.stop()
            upstream.close()


def on_route(name: str) -> Callable[[Event], bool]:
    return lambda e: e.details.get("route") == name


def assert_healthy(s: Setup) -> None:
    """The gateway process lives, logged no traceback, and still relays a dcmtk C-ECHO."""
    assert s.gw.proc.poll() is None, f"the gateway exited:\n{s.gw.log.read_text()[-4000:]}"
    echo = s.dcmtk.run("echoscu", "-aet", "BYSTANDER", "-aec", GATEWAY_AE, LOCALHOST, str(s.gw.port("sink")),
                       timeout=10)
    assert echo.returncode == 0, f"echoscu through the gateway failed:\n{echo.stdout}{echo.stderr}"
    assert "Traceback" not in s.gw.log.read_text()


@contextmanager
def bystander(s: Setup) -> Iterator[None]:
    """An association that is open on another route while the hostile case runs, and still works after."""
    ae = AE(ae_title="BYSTANDER")
    ae.add_requested_context(Verification)
    assoc = ae.associate(LOCALHOST, s.gw.port("sink"), ae_title=GATEWAY_AE)
    assert assoc.is_established
    try:
        yield
        status = assoc.send_c_echo()
        assert status and status.Status == 0, "the bystander association was disturbed"
    finally:
        assoc.release()
        ae.shutdown()


# --- malformed, truncated, oversized and out-of-order PDUs ------------------------------------------


@dataclass(frozen=True)
class Hostile:
    """One hostile client: what it sends after (or instead of) a valid association."""

    code: str  # the violation code the gateway must record
    calling: str | None  # the AE title of a valid association set up first; None: `send` starts from scratch
    send: Callable[[socket.socket, RecordingUpstream], None]
    contexts: tuple[tuple[int, str], ...] = ((1, VERIFICATION),)
    echo_first: bool = False  # a valid C-ECHO goes through first (it must reach upstream, the rest not)
    upstream_rq: str | None = None  # calling AE of the RQ the upstream gets when `send` makes it itself


def _pdv_longer_than_pdu(sock: socket.socket, _: RecordingUpstream) -> None:
    frame = bytearray(echo_rq(message_id=2))
    struct.pack_into(">I", frame, 6, struct.unpack_from(">I", frame, 6)[0] + 100)  # PDV item length
    sock.sendall(frame)


def _unknown_type(sock: socket.socket, _: RecordingUpstream) -> None:
    frame = b"\x09\x00" + struct.pack(">I", 4) + b"\x00\x00\x00\x00"
    sock.sendall(frame)


def _over_route_limit(sock: socket.socket, _: RecordingUpstream) -> None:
    # A header announcing 1 MB (the route allows 64 KiB), then the start of that body.
    frame = b"\x04\x00" + struct.pack(">I", 1_000_000) + struct.pack(">IBB", 999_996, 1, 0) + b"\xAB" * 4000
    sock.sendall(frame)


def _over_negotiated_max(sock: socket.socket, _: RecordingUpstream) -> None:
    # Within the route's limit, but larger than the 16 KiB the upstream declared it can receive.
    frame = P.encode_p_data_tf([P.PDV(1, False, True, b"\xCD" * (UPSTREAM_MAX_PDU + 1000))])
    sock.sendall(frame)


def _truncated_then_close(sock: socket.socket, _: RecordingUpstream) -> None:
    frame = echo_rq(message_id=2)[:20]
    sock.sendall(frame)
    time.sleep(0.1)
    sock.shutdown(socket.SHUT_WR)


def _http_get(sock: socket.socket, _: RecordingUpstream) -> None:
    frame = b"GET / HTTP/1.1\r\nHost: pacs.example\r\nUser-Agent: curl/8.5\r\n\r\n"
    sock.sendall(frame)


def _malformed_rq(sock: socket.socket, _: RecordingUpstream) -> None:
    frame = bytearray(associate_rq("BADRQ"))
    pc = frame.index(bytes((P.ITEM_PRESENTATION_CONTEXT_RQ, 0)), P.ASSOCIATE_ITEMS_OFFSET)
    struct.pack_into(">H", frame, pc + 2, 0xFFF0)  # the item claims more than the PDU holds
    sock.sendall(frame)


def _data_before_ac(sock: socket.socket, upstream: RecordingUpstream) -> None:
    # The upstream sits on the RQ for 1.5 s; the client does not wait for the AC.
    upstream.ac_delay["EARLYBIRD"] = 1.5
    sock.sendall(associate_rq("EARLYBIRD"))
    upstream.by_calling_ae("EARLYBIRD")  # the gateway has connected upstream and passed the RQ on
    frame = echo_rq()
    sock.sendall(frame)


def _data_with_rq(sock: socket.socket, _: RecordingUpstream) -> None:
    frame = echo_rq()
    sock.sendall(associate_rq("PIPELINER") + frame)  # one segment: RQ and P-DATA together


def _unaccepted_context(sock: socket.socket, _: RecordingUpstream) -> None:
    frame = echo_rq(context_id=3)  # context 3 (CT Image Storage) was refused by the upstream
    sock.sendall(frame)


HOSTILE = {
    "pdv-longer-than-pdu": Hostile("truncated-item", "PDVLEN", _pdv_longer_than_pdu, echo_first=True),
    "unknown-pdu-type": Hostile("unknown-pdu-type", "UNKNOWN", _unknown_type, echo_first=True),
    "pdu-over-route-limit": Hostile("pdu-length-exceeds-maximum", "HUGE", _over_route_limit),
    "pdu-over-negotiated-max": Hostile("pdu-exceeds-negotiated-max", "OVERMAX", _over_negotiated_max),
    "truncated-then-close": Hostile("truncated-pdu", "TRUNCATED", _truncated_then_close, echo_first=True),
    "http-instead-of-rq": Hostile("unknown-pdu-type", None, _http_get),
    "malformed-rq": Hostile("truncated-item", None, _malformed_rq),
    "p-data-before-ac": Hostile("data-before-association", None, _data_before_ac, upstream_rq="EARLYBIRD"),
    "p-data-with-rq": Hostile("data-before-association", None, _data_with_rq),
    "unaccepted-context": Hostile("context-not-accepted", "NOCONTEXT", _unaccepted_context,
                                  contexts=((1, VERIFICATION), (3, CT_IMAGE_STORAGE))),
}


@pytest.mark.parametrize("case", list(HOSTILE), ids=list(HOSTILE))
def test_hostile_pdu_ends_only_that_association(setup: Setup, case: str) -> None:
    h = HOSTILE[case]
    s = setup
    upstream_before = s.upstream.count()
    with bystander(s):
        sock, about = connect(s, "rec")
        with sock:
            if h.calling is not None:
                sock.sendall(associate_rq(h.calling, h.contexts))
                ac = read_pdu(sock)
                assert ac is not None and ac[0] == P.PDU_ASSOCIATE_AC, ac
                if h.echo_first:
                    sock.sendall(echo_rq())
                    rsp = read_pdu(sock)
                    assert rsp is not None and rsp[0] == P.PDU_P_DATA_TF
            sent_at = time.monotonic()
            h.send(sock, s.upstream)
            pdus, took = until_closed(sock, timeout=5)

        # The client is told (A-ABORT, service-provider) or simply cut off, and promptly.
        assert all(frame == GATEWAY_ABORT for frame in pdus), f"unexpected answer {pdus}"
        assert time.monotonic() - sent_at < 2.5, f"the gateway took {took:.1f} s to end the association"

        # The events name the source host:port and what was wrong; the abort follows the violation.
        (violation,) = s.gw.wait_for("dicom.protocol.violation", where=about)
        assert violation.details["code"] == h.code, violation.message
        assert violation.details["from"] == "client" and violation.details["route"] == "rec"
        (aborted,) = s.gw.wait_for("dicom.association.aborted", where=about)
        assert aborted.details["cause"] == "protocol" and h.code in aborted.details["reason"]
        assert aborted.time >= violation.time

        # Nothing malformed reached the upstream: exactly what came before it (plus our A-ABORT), i.e.
        # the RQ with the called AE title rewritten and the valid C-ECHO; or no connection at all.
        calling = h.calling or h.upstream_rq
        if calling is None:
            time.sleep(0.2)
            assert s.upstream.count() == upstream_before, "the gateway connected upstream for garbage"
        else:
            rec = s.upstream.by_calling_ae(calling)
            assert rec.closed.wait(5), "the upstream leg was left open"
            passed = P.with_called_ae(associate_rq(calling, h.contexts), RECORDER_AE)
            passed += echo_rq() if h.echo_first else b""
            received = bytes(rec.received)
            assert received in (passed, passed + GATEWAY_ABORT), f"upstream got {received[len(passed):][:64]!r}"
    assert_healthy(s)


def test_a_abort_before_the_ac_is_passed_on_at_once(setup: Setup) -> None:
    """The one PDU a requestor may send while it waits for the A-ASSOCIATE-AC (PS3.8 9.2, Sta5:
    A-ABORT) is no violation: it reaches the upstream now, not after the upstream answers."""
    s = setup
    s.upstream.ac_delay["IMPATIENT"] = 1.5
    sock, about = connect(s, "rec")
    with sock:
        sock.sendall(associate_rq("IMPATIENT"))
        rec = s.upstream.by_calling_ae("IMPATIENT")
        sock.sendall(P.encode_abort())
        pdus, took = until_closed(sock, timeout=5)
    assert pdus == [] and took < 1, (pdus, took)
    (aborted,) = s.gw.wait_for("dicom.association.aborted", where=about)
    assert aborted.details["by"] == "client"
    # Every byte the client sent is counted once: the RQ and the A-ABORT.
    assert aborted.details["bytes_from_client"] == len(associate_rq("IMPATIENT")) + len(P.encode_abort())
    assert rec.closed.wait(5)
    assert bytes(rec.received) == P.with_called_ae(associate_rq("IMPATIENT"), RECORDER_AE) + P.encode_abort()
    assert not [e for e in s.gw.events("dicom.protocol.violation") if about(e)]


# --- the data set fast path: PDUs passed on as their bytes arrive ("cut-through") -------------------

STORE_CONTEXTS = ((1, VERIFICATION), (5, SECONDARY_CAPTURE))


def store_message(calling: str, pixel_bytes: int = 300_000) -> list[bytes]:
    """A C-STORE-RQ with a Secondary Capture data set, in P-DATA-TF PDUs of the upstream's maximum."""
    sop_instance = f"1.2.826.0.1.3680043.9.7.{calling_number(calling)}"
    command = dimse.encode_command_set(dimse.CommandSet(
        dimse.C_STORE_RQ, message_id=7, affected_sop_class_uid=SECONDARY_CAPTURE,
        affected_sop_instance_uid=sop_instance, priority=0, command_data_set_type=0x0001))
    pixels = random.Random(calling).randbytes(pixel_bytes)
    dataset = b"".join(el_implicit(tag, value, pad=b"\x00") for tag, value in (
        (0x00080016, SECONDARY_CAPTURE.encode()), (0x00080018, sop_instance.encode()), (0x00100020, b"CUT^THROUGH"),
        (0x0020000D, b"1.2.826.0.1.3680043.9.7.1"), (0x7FE00010, pixels)))
    return P.encode_dimse_message(5, command, dataset, UPSTREAM_MAX_PDU)


def calling_number(calling: str) -> int:
    return sum(calling.encode())


def send_in_random_pieces(sock: socket.socket, data: bytes, seed: str) -> None:
    """Like a busy modality: writes of every size, some just a few bytes, some a pause apart, so the
    gateway's reads end anywhere (inside a PDU header, a PDV header or the data)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rng = random.Random(seed)
    pos = 0
    while pos < len(data):
        size = rng.choice((1, 5, 7, 11, 13, rng.randrange(1, 4096), rng.randrange(1, 70_000)))
        sock.sendall(data[pos:pos + size])
        pos += size
        if rng.random() < 0.2:
            time.sleep(0.002)


def wait_received(rec: "Recorded", size: int, timeout: float = 5.0) -> bytes:
    deadline = time.monotonic() + timeout
    while len(rec.received) < size and time.monotonic() < deadline and not rec.closed.is_set():
        time.sleep(0.01)
    time.sleep(0.1)  # anything beyond *size* would have arrived by now
    return bytes(rec.received)


def test_data_set_in_random_pieces_arrives_unchanged(setup: Setup) -> None:
    """Whatever the segmentation, the upstream gets exactly the bytes the modality sent, and the
    association is recorded with the data set's patient."""
    s = setup
    sock, about = connect(s, "rec")
    with sock:
        sock.sendall(associate_rq("PIECES", STORE_CONTEXTS))
        ac = read_pdu(sock)
        assert ac is not None and ac[0] == P.PDU_ASSOCIATE_AC, ac
        message = b"".join(store_message("PIECES"))
        send_in_random_pieces(sock, message, "PIECES")
        rec = s.upstream.by_calling_ae("PIECES")
        expected = P.with_called_ae(associate_rq("PIECES", STORE_CONTEXTS), RECORDER_AE) + message
        received = wait_received(rec, len(expected))
        # On failure the lengths may differ: the first difference within the shorter one is what helps.
        first_difference = next((i for i, (a, b) in enumerate(zip(received, expected, strict=False)) if a != b), None)
        assert received == expected, (f"upstream got {len(received)} bytes, expected {len(expected)}; first "
                                      f"difference at {first_difference}")
        sock.sendall(P.encode_release_rq())
        assert read_pdu(sock) == P.encode_release_rp()
    (released,) = s.gw.wait_for("dicom.association.released", where=about)
    assert released.details["bytes_from_client"] >= len(message)
    (store,) = s.gw.wait_for("dicom.dimse.c-store", where=about)
    assert store.patient_ids == ("CUT^THROUGH",)
    assert not [e for e in s.gw.events("dicom.protocol.violation") if about(e)]


def test_client_gone_inside_a_cut_through_pdu(setup: Setup) -> None:
    """The upstream already has part of a PDU when the modality vanishes: it gets no A-ABORT glued
    onto that PDU's data (it would read it as pixels), only the closed connection."""
    s = setup
    sock, about = connect(s, "rec")
    frames = store_message("VANISH")
    sent = b"".join(frames[:4]) + frames[4][:5000]
    with sock:
        sock.sendall(associate_rq("VANISH", STORE_CONTEXTS))
        ac = read_pdu(sock)
        assert ac is not None and ac[0] == P.PDU_ASSOCIATE_AC, ac
        sock.sendall(sent)
        rec = s.upstream.by_calling_ae("VANISH")
        expected = P.with_called_ae(associate_rq("VANISH", STORE_CONTEXTS), RECORDER_AE) + sent
        assert wait_received(rec, len(expected)) == expected
    assert rec.closed.wait(5), "the upstream leg was left open"
    assert bytes(rec.received) == expected, (f"after the partial PDU the upstream got "
                                             f"{bytes(rec.received)[len(expected):]!r}")
    (aborted,) = s.gw.wait_for("dicom.association.aborted", where=about)
    assert aborted.details["cause"] == "connection-lost"
    assert_healthy(s)


def test_bad_header_in_the_middle_of_a_data_set(setup: Setup) -> None:
    """A data PDU larger than the upstream's maximum after good ones: the good ones are passed on,
    the bad one is not, and the association ends with a violation event."""
    s = setup
    sock, about = connect(s, "rec")
    frames = store_message("MIDWAY")
    oversized = P.encode_p_data_tf([P.PDV(5, False, False, b"\xCD" * (UPSTREAM_MAX_PDU + 1000))])
    with sock:
        sock.sendall(associate_rq("MIDWAY", STORE_CONTEXTS))
        ac = read_pdu(sock)
        assert ac is not None and ac[0] == P.PDU_ASSOCIATE_AC, ac
        good = b"".join(frames[:6])
        send_in_random_pieces(sock, good + oversized, "MIDWAY")
        pdus, _ = until_closed(sock, timeout=5)
    assert all(frame == GATEWAY_ABORT for frame in pdus), pdus
    (violation,) = s.gw.wait_for("dicom.protocol.violation", where=about)
    assert violation.details["code"] == "pdu-exceeds-negotiated-max", violation.message
    rec = s.upstream.by_calling_ae("MIDWAY")
    assert rec.closed.wait(5)
    passed = P.with_called_ae(associate_rq("MIDWAY", STORE_CONTEXTS), RECORDER_AE) + good
    assert bytes(rec.received) in (passed, passed + GATEWAY_ABORT), bytes(rec.received)[len(passed):][:64]


# --- limits: flood, slow loris, idle ----------------------------------------------------------------


def test_flood_of_associations_is_rejected_transiently(setup: Setup) -> None:
    s = setup
    ae = AE(ae_title="FLOODER")
    ae.add_requested_context(Verification)
    held = [ae.associate(LOCALHOST, s.gw.port("flood"), ae_title=GATEWAY_AE) for _ in range(3)]
    try:
        assert all(a.is_established for a in held)
        sock, about = connect(s, "flood")
        with sock:
            sock.sendall(associate_rq("FLOODER"))
            rj = read_pdu(sock)
            assert rj is not None and rj[0] == P.PDU_ASSOCIATE_RJ, rj
            answer = P.parse_associate_rj(rj)
            assert (answer.result, answer.source, answer.reason) == (2, 3, 2)  # transient, provider, local limit
            until_closed(sock, timeout=2)
        (rejected,) = s.gw.wait_for("dicom.association.rejected", where=about)
        assert rejected.details["rule"] == "limits.max_associations_per_source"
        assert rejected.details["by"] == "gateway"
        for assoc in held:  # the three that were there first are untouched
            assert assoc.send_c_echo().Status == 0
        # A released association frees its slot at once: the very next one is admitted.
        held.pop().release()
        again = ae.associate(LOCALHOST, s.gw.port("flood"), ae_title=GATEWAY_AE)
        held.append(again)
        assert again.is_established, "an association right after a release was refused"
        assert again.send_c_echo().Status == 0
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()
        ae.shutdown()
    assert_healthy(s)


def test_slow_loris_is_cut_off_by_artim(setup: Setup) -> None:
    s = setup
    start = time.monotonic()
    silent, silent_about = connect(s, "slow")
    half, half_about = connect(s, "slow")
    with silent, half:
        rq = associate_rq("LORIS")
        half.sendall(rq[: len(rq) // 2])
        for sock in (silent, half):
            pdus, _ = until_closed(sock, timeout=4)
            assert pdus in ([], [GATEWAY_ABORT]), pdus
    assert time.monotonic() - start < 2.5, "ARTIM is 1 s, the slow clients were not cut off in time"
    for about in (silent_about, half_about):
        (aborted,) = s.gw.wait_for("dicom.association.aborted", where=about)
        assert "ARTIM" in aborted.details["reason"], aborted.message
        assert aborted.details["cause"] == "timeout"
        assert aborted.details["duration_ms"] < 2500
    assert_healthy(s)


def test_silent_association_is_aborted_when_idle(setup: Setup) -> None:
    s = setup
    sock, about = connect(s, "slow")
    with sock:
        sock.sendall(associate_rq("SLEEPY"))
        ac = read_pdu(sock)
        assert ac is not None and ac[0] == P.PDU_ASSOCIATE_AC
        pdus, took = until_closed(sock, timeout=5)
    assert pdus == [GATEWAY_ABORT]
    assert 1.5 < took < 4, f"idle abort after {took:.1f} s, limit is 2 s"
    (aborted,) = s.gw.wait_for("dicom.association.aborted", where=about)
    assert "idle" in aborted.details["reason"] and aborted.details["cause"] == "timeout"
    assert_healthy(s)


def test_client_that_closes_without_release(setup: Setup) -> None:
    s = setup
    sock, about = connect(s, "sink")
    with sock:
        sock.sendall(associate_rq("VANISHER"))
        ac = read_pdu(sock)
        assert ac is not None and ac[0] == P.PDU_ASSOCIATE_AC
        sock.sendall(echo_rq())
        rsp = read_pdu(sock)
        assert rsp is not None and rsp[0] == P.PDU_P_DATA_TF
    (aborted,) = s.gw.wait_for("dicom.association.aborted", where=about)
    assert "without A-RELEASE" in aborted.details["reason"], aborted.message
    assert aborted.details["cause"] == "connection-lost"
    assert not [e for e in s.gw.events("dicom.protocol.violation") if about(e)]
    assert_healthy(s)


# --- upstream down or mute --------------------------------------------------------------------------


def test_upstream_down_gives_a_transient_reject(setup: Setup) -> None:
    s = setup
    start = time.monotonic()
    echo = s.dcmtk.run("echoscu", "-aet", "HOPEFUL", "-aec", GATEWAY_AE, LOCALHOST, str(s.gw.port("down")),
                       timeout=10)
    took = time.monotonic() - start
    out = echo.stdout + echo.stderr
    assert echo.returncode != 0
    assert "Rejected Transient" in out and "Source: Service Provider (Presentation" in out, out
    assert took < 5, f"the reject took {took:.1f} s"
    (unreachable,) = s.gw.wait_for("gateway.upstream.unreachable", where=on_route("down"))
    assert "connection refused" in unreachable.details["error"]
    assert unreachable.actor.ae_title == "HOPEFUL"
    (rejected,) = s.gw.wait_for("dicom.association.rejected", where=on_route("down"))
    assert rejected.details["rule"] == "upstream" and rejected.details["result"] == 2
    assert rejected.details["source"] == 3
    assert_healthy(s)


def test_mute_upstream_never_hangs_the_client(setup: Setup) -> None:
    s = setup
    sock, about = connect(s, "mute")
    with sock:
        sock.sendall(associate_rq("PATIENT"))
        pdus, took = until_closed(sock, timeout=6)
    # connect_timeout 1 s + artim_timeout 1 s: the client has its answer within ~2 s, a transient
    # A-ASSOCIATE-RJ (temporary congestion: try again later), as when the upstream is down.
    assert pdus == [P.encode_associate_rj(2, 3, 1)], pdus
    assert took < 3.5, f"the client waited {took:.1f} s"
    (unreachable,) = s.gw.wait_for("gateway.upstream.unreachable", where=about)
    assert "did not answer the A-ASSOCIATE-RQ" in unreachable.message
    (rejected,) = s.gw.wait_for("dicom.association.rejected", where=about)
    assert rejected.details["rule"] == "upstream" and rejected.details["result"] == 2
    # And with dcmtk, which must not hang either.
    start = time.monotonic()
    echo = s.dcmtk.run("echoscu", "-aet", "PATIENT", "-aec", GATEWAY_AE, LOCALHOST, str(s.gw.port("mute")),
                       timeout=10)
    assert echo.returncode != 0 and time.monotonic() - start < 4.5, echo.stdout + echo.stderr
    assert_healthy(s)


def test_gateway_survived_everything(setup: Setup) -> None:
    assert setup.gw.proc.poll() is None
    assert "Traceback" not in setup.gw.log.read_text()
    assert_healthy(setup)
