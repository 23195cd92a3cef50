"""The forwarder's Storage SCU (PS3.4 B.2.1) on pacsguard's own PDU and DIMSE codec
(pacsguard.dicom): one association (PS3.8 7.1) carrying C-STOREs (PS3.7 9.1.1) of spooled Part-10
files. A file's data set goes to the socket as stored, never decoded, read into place between
the headers of P-DATA-TF PDUs no longer than the destination's Maximum Length (PS3.8 D.1, 9.3.5),
one PDV each (PS3.8 E.2).

pynetdicom, which the route's SCP and the C-FIND check use, cost 3-5x the relay's CPU per GB here
(a Python object, a queue hand-off and several copies per PDU): docs/PERFORMANCE.md."""

from __future__ import annotations

import os
import socket
import ssl
import struct
from collections import deque
from pathlib import Path

from pydicom.uid import UID
from pynetdicom.dsutils import split_dataset

from pacsguard.config.schema import Destination, Route
from pacsguard.dicom.dimse import C_STORE_RQ, C_STORE_RSP, CommandSet, decode_command_set, encode_command_set
from pacsguard.dicom.errors import DecodeError
from pacsguard.dicom.pdu import (
    PDU_ASSOCIATE_AC,
    PDU_ASSOCIATE_RJ,
    PDU_P_DATA_TF,
    PDU_RELEASE_RP,
    AssociateRQ,
    PresentationContextRQ,
    UserInformation,
    encode_abort,
    encode_associate_rq,
    encode_dimse_message,
    encode_release_rq,
    parse_associate_ac,
    parse_associate_rj,
    parse_p_data_tf,
)
from pacsguard.dicom.stream import PDUReader, RawPDU
from pacsguard.dicom.uids import PACSGUARD_IMPLEMENTATION_CLASS_UID, PACSGUARD_IMPLEMENTATION_VERSION_NAME
from pacsguard.gateway.store_forward.scu import why_not
from pacsguard.runtime.peer import probe

PRIORITY_MEDIUM = 0x0000
DATASET_PRESENT = 0x0000  # Command Data Set Type: any value but 0101H (PS3.7 E.1)
CHUNK_WHEN_UNLIMITED = 1 << 20  # PDV size when the destination sets no maximum (0)
BATCH_BYTES = 1 << 20  # PDUs read and sent together
RECEIVE = 1 << 16
# PDU header (type, reserved, length) and PDV item header (length, context ID, control header).
_DATA_HEADER = struct.Struct(">BBIIBB")
_LAST_DATA = 0x02
MIN_DATA_SET = 8  # one data element header (PS3.5 7.1.2): a data set is at least that long


class Refused(Exception):
    """No association: the destination rejected it or could not be reached."""


class AssociationEnded(Exception):
    """The destination aborted, closed or stopped answering."""


class Undeliverable(Exception):
    """The spooled file holds no data set to send (PS3.7 9.1.1.1: a C-STORE-RQ carries one):
    nothing was sent, the association stays usable."""


_FILE_META_KEYWORDS = ("MediaStorageSOPClassUID", "MediaStorageSOPInstanceUID", "TransferSyntaxUID")


def _file_meta(path: Path) -> tuple[str, str, str, int]:
    """The SOP Class, SOP Instance and Transfer Syntax UIDs of a spooled Part-10 file's File Meta
    Information (PS3.10 7.1, Table 7.1-1: all three mandatory) and where its data set starts.
    Raises Undeliverable when they cannot be read: the gateway wrote them, so the file was
    changed outside pacsguard, and what is left cannot be sent as a C-STORE of any context."""
    try:
        file_meta, offset = split_dataset(path)
    except OSError:
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom's parser fails on damaged bytes in many ways
        raise Undeliverable(f"the spooled file's File Meta Information (PS3.10 7.1) cannot be read "
                            f"({type(exc).__name__}: {exc})") from None
    missing = [k for k in _FILE_META_KEYWORDS if not str(file_meta.get(k, "") or "")]
    if missing:
        raise Undeliverable(f"the spooled file's File Meta Information (PS3.10 7.1) lacks {', '.join(missing)} "
                            f"(it ends or stops being group 0002 at byte {offset})")
    sop, instance, syntax = (str(file_meta[k].value) for k in _FILE_META_KEYWORDS)
    return sop, instance, syntax, offset


# What a C-STORE-RSP's status means (PS3.4 B.2.3, Table B.2-1; PS3.7 C.4.2 for the general ones),
# by its exact value or, for a range the standard leaves to the SCP (A7xx, A9xx, Cxxx), its mask.
_STATUS_MEANINGS = {0x0001: "warning", 0x0110: "processing failure", 0x0117: "invalid SOP instance",
                    0x0122: "SOP class not supported", 0x0124: "not authorized", 0x0211: "unrecognised operation",
                    0xB000: "coercion of data elements", 0xB006: "elements discarded",
                    0xB007: "data set does not match SOP class"}
_STATUS_RANGES = ((0xFF00, 0xA700, "out of resources"), (0xFF00, 0xA900, "data set does not match SOP class"),
                  (0xF000, 0xC000, "cannot understand"))


def no_context(sop_class: str, transfer_syntax: str) -> str:
    """Why an object is not sent when the destination accepted no presentation context for its
    SOP class in its transfer syntax (PS3.8 9.3.3.2: it rejected or changed the one proposed):
    both named, and what the administrator can do. The object is sent as received, never
    converted ("Objects arrive as sent"), so it waits until the destination takes it."""
    def named(uid: str) -> str:
        name = UID(uid).name
        return f"{name} ({uid})" if name and name != uid else uid

    return (f"the destination accepted no presentation context for {named(sop_class)} in "
            f"{named(transfer_syntax)}: it does not take that SOP class in that transfer syntax; the object "
            "waits until it does, or is purged (a route's accepted_transfer_syntaxes, listing what the "
            "destinations take, makes modalities send in one of those)")


def status_text(status: int, error_comment: str = "") -> str:
    """A destination's C-STORE status as an administrator reads it: the value, what it means
    and the destination's Error Comment (0000,0902), e.g. ``status 0xA700 (out of resources):
    disk full``."""
    meaning = _STATUS_MEANINGS.get(status) or next((m for mask, v, m in _STATUS_RANGES if status & mask == v), "")
    text = f"status 0x{status:04X}" + (f" ({meaning})" if meaning else "")
    return f"{text}: {error_comment}" if error_comment else text


def destination_context(destination: Destination) -> ssl.SSLContext:
    """The client context for a destination with ``tls``: its CA (the system's without one), its
    certificate and key for mutual TLS, TLS 1.2 or later with pacsguard's ciphers (RFC 9325 4.1,
    4.2), as the relay's upstream context (pacsguard.gateway.server.upstream_tls_context). Python's
    default context would ignore all three files. Raises Refused, naming the file, for one it
    cannot use."""
    from pacsguard.tls import TLSConfigError, client_context

    d = destination
    if d.tls is None:
        raise ValueError(f"{d.ae_title}@{d.host}:{d.port} has no tls settings")
    try:
        return client_context(ca_file=d.tls.ca_file, cert_file=d.tls.cert_file, key_file=d.tls.key_file)
    except TLSConfigError as exc:
        raise Refused(f"{d.ae_title}@{d.host}:{d.port}: its TLS settings cannot be used ({exc})") from None


class StoreAssociation:
    """An established association for C-STOREs of files in the transfer syntax each was stored in."""

    def __init__(self, sock: socket.socket, max_pdu_length: int) -> None:
        self.sock = sock
        self.contexts: dict[tuple[str, str], int] = {}  # (SOP class, transfer syntax) -> accepted context ID
        self.peer_max = 0
        self.is_established = False
        self._reader = PDUReader(max(max_pdu_length, 1 << 16) + 6)
        self._pending: deque[RawPDU] = deque()
        self._message_id = 0
        # The Error Comment (0000,0902) of the last C-STORE-RSP, "" when it had none: what the
        # destination said of a failure, for the administrator (PS3.7 C.4.2.1.2).
        self.error_comment = ""

    @classmethod
    def open(cls, route: Route, destination: Destination, pairs: list[tuple[str, str]],
             ssl_context: ssl.SSLContext | None = None) -> StoreAssociation:
        """Request an association proposing one context per (SOP class, transfer syntax) pair.
        Over TLS (PS3.15 B.1) with ``ssl_context``, else with the destination's own ``tls`` files
        in pacsguard's client settings (RFC 9325, pacsguard.tls.client_context)."""
        d = destination
        # Never in clear to a TLS destination, and never on Python's default settings.
        context = (ssl_context or destination_context(d)) if d.tls is not None else None
        try:
            sock = socket.create_connection((d.host, d.port), timeout=d.connect_timeout)
        except OSError as exc:
            raise Refused(f"{why_not(d, rejected=False)} ({exc})") from None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if context is not None and d.tls is not None:
                sock = context.wrap_socket(sock, server_hostname=d.tls.server_name or d.host)
            sock.settimeout(max(d.connect_timeout, 30.0))
        except OSError as exc:
            sock.close()
            raise Refused(f"{why_not(d, rejected=False)} ({exc})") from None
        assoc = cls(sock, route.limits.max_pdu_length)
        proposed = {2 * i + 1: pair for i, pair in enumerate(pairs)}  # odd IDs (PS3.8 9.3.2.2)
        info = UserInformation.build(max_length=route.limits.max_pdu_length,
                                     implementation_class_uid=PACSGUARD_IMPLEMENTATION_CLASS_UID,
                                     implementation_version_name=PACSGUARD_IMPLEMENTATION_VERSION_NAME)
        rq = AssociateRQ(called_ae_title=d.ae_title, calling_ae_title=route.listen.ae_title, user_information=info,
                         presentation_contexts=[PresentationContextRQ(i, sop, [ts])
                                                for i, (sop, ts) in proposed.items()])
        try:
            sock.sendall(encode_associate_rq(rq))
            answer = assoc._next()
            if answer.pdu_type == PDU_ASSOCIATE_AC:
                ac = parse_associate_ac(answer.raw)
                assoc.contexts = {proposed[pc.context_id]: pc.context_id for pc in ac.presentation_contexts
                                  if pc.accepted and pc.context_id in proposed
                                  and pc.transfer_syntax == proposed[pc.context_id][1]}
                assoc.peer_max = ac.max_length or 0
                assoc.is_established = True
                return assoc
        except (OSError, AssociationEnded, DecodeError):
            answer = None
        sock.close()
        rj = None
        if answer is not None and answer.pdu_type == PDU_ASSOCIATE_RJ:
            try:
                rj = parse_associate_rj(answer.raw)
            except DecodeError:
                pass  # "rejected" is all that can be said of a malformed A-ASSOCIATE-RJ
        raise Refused(why_not(d, rejected=answer is not None and answer.pdu_type == PDU_ASSOCIATE_RJ, rj=rj))

    def store(self, path: Path) -> int | None:
        """One C-STORE of a Part-10 file; its status, or None when the association ended first.
        Raises ValueError when no accepted context fits the file, Undeliverable when it holds no
        data set or its File Meta Information cannot be read (nothing is sent then: a C-STORE-RQ
        announcing a data set that never comes leaves the destination waiting, PS3.7 9.1.1.1)."""
        sop, instance, syntax, offset = _file_meta(path)
        context_id = self.contexts.get((sop, syntax))
        if context_id is None:
            raise ValueError(no_context(sop, syntax))
        with path.open("rb") as f:
            fd = f.fileno()
            size = os.fstat(fd).st_size - offset
            if size < MIN_DATA_SET:
                raise Undeliverable(f"the spooled file holds no data set ({max(size, 0)} bytes after its "
                                    "file meta information)")
            self._message_id = self._message_id % 0xFFFF + 1
            command = CommandSet(C_STORE_RQ, message_id=self._message_id, affected_sop_class_uid=sop,
                                 affected_sop_instance_uid=instance, priority=PRIORITY_MEDIUM,
                                 command_data_set_type=DATASET_PRESENT)
            try:
                for pdu in encode_dimse_message(context_id, encode_command_set(command), None, self.peer_max):
                    self.sock.sendall(pdu)
                self._send_data_set(fd, offset, size, context_id)
                return self._response(self._message_id)
            except (OSError, AssociationEnded, DecodeError):
                self.abort()  # a protocol error or a lost peer: nothing more on this association
                return None

    def left_alone(self) -> bool:
        """Whether an idle association is still there to use: nothing arrived from the destination
        since the last response (an A-RELEASE-RQ, an A-ABORT or the connection's end, which a
        destination's own idle timeout sends, all mean it is not). A TLS record without data (a
        session ticket) is not something arriving."""
        # Data (an A-RELEASE-RQ, an A-ABORT) or the connection's end: either way it is over.
        return self.is_established and not self._pending and probe(self.sock) == "quiet"

    def release(self) -> None:
        """A-RELEASE-RQ, then wait for the A-RELEASE-RP (PS3.8 7.2); an abort if it does not come."""
        if not self.is_established:
            return
        try:
            self.sock.sendall(encode_release_rq())
            while self._next().pdu_type != PDU_RELEASE_RP:
                pass
        except (OSError, AssociationEnded, DecodeError):
            self.abort()
        self._close()

    def abort(self) -> None:
        if self.is_established:
            try:
                self.sock.sendall(encode_abort())
            except OSError:
                pass
        self._close()

    # --- the wire ----------------------------------------------------------------------------------

    def _send_data_set(self, fd: int, offset: int, left: int, context_id: int) -> None:
        """The ``left`` bytes of the open file ``fd`` from ``offset`` on (at least one element, see
        `store`) as the data set's PDVs, the last one flagged: a batch of PDUs at a time, their
        values read straight into place between their headers by one preadv(2) and the batch
        written by one send (per-PDU work is packing 12 header bytes)."""
        step = self.peer_max - 6 if self.peer_max else CHUNK_WHEN_UNLIMITED
        slot = _DATA_HEADER.size + step
        per_batch = max(1, BATCH_BYTES // slot)
        buffer = memoryview(bytearray(slot * per_batch))
        while left > 0:
            values: list[memoryview] = []
            used = 0
            while left > 0 and len(values) < per_batch:
                size = min(step, left)
                left -= size
                _DATA_HEADER.pack_into(buffer, used, PDU_P_DATA_TF, 0, size + 6, size + 2, context_id,
                                       _LAST_DATA if left == 0 else 0)
                values.append(buffer[used + _DATA_HEADER.size:used + _DATA_HEADER.size + size])
                used += _DATA_HEADER.size + size
            wanted = used - _DATA_HEADER.size * len(values)
            if os.preadv(fd, values, offset) != wanted:
                raise AssociationEnded("the spooled file is shorter than when it was spooled")
            offset += wanted
            self.sock.sendall(buffer[:used])

    def _next(self) -> RawPDU:
        while not self._pending:
            data = self.sock.recv(RECEIVE)
            if not data:
                raise AssociationEnded("the destination closed the connection")
            self._pending.extend(self._reader.feed(data))
        return self._pending.popleft()

    def _response(self, message_id: int) -> int:
        """Read PDUs until the C-STORE-RSP to ``message_id``; its status. Anything but P-DATA-TF
        (A-ABORT, A-RELEASE-RQ, ...) ends the association here."""
        command = bytearray()
        while True:
            pdu = self._next()
            if pdu.pdu_type != PDU_P_DATA_TF:
                raise AssociationEnded(f"the destination sent {pdu.name} instead of a C-STORE-RSP")
            for pdv in parse_p_data_tf(pdu.raw).pdvs:
                if not pdv.is_command:
                    continue
                command += pdv.value
                if not pdv.is_last:
                    continue
                rsp = decode_command_set(bytes(command))
                command.clear()
                if (rsp.command_field == C_STORE_RSP and rsp.message_id_being_responded_to == message_id
                        and rsp.status is not None):
                    # The destination's words go into events and logs: printable and bounded
                    # (an LO is 64 characters, PS3.5 6.2; a peer may send more, or line breaks).
                    said = "".join(c if c.isprintable() else " " for c in (rsp.error_comment or ""))
                    self.error_comment = said.strip()[:128]
                    return rsp.status

    def _close(self) -> None:
        self.is_established = False
        try:
            self.sock.close()
        except OSError:
            pass
