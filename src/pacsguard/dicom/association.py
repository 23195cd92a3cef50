"""Per-connection protocol state machine for a relay or a passive observer.

A simplified view of the PS3.8 9.2 state table, from the point of view of
someone who sees both directions of the TCP connection: it follows association
negotiation, release (including release collision) and abort, tracks the
accepted presentation contexts and negotiated maximum lengths (PS3.8 D.1),
and reassembles DIMSE messages (PS3.7 6.3.1, PS3.8 Annex E) into events.

Malformed bytes raise :class:`~pacsguard.dicom.errors.DecodeError`;
well-formed PDUs that are not allowed in the current state produce
:class:`~pacsguard.dicom.events.ProtocolViolation` events and the decoder
carries on, leaving the abort decision to the caller.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from . import events as ev
from .dataset import PeekWalker, peek_walker
from .dimse import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_ECHO_RSP,
    C_STORE_RSP,
    COMMAND_NAMES,
    MAX_COMMAND_SET_LENGTH,
    CommandSet,
    decode_command_set,
)
from .errors import COMMAND_SET_TOO_LARGE, RESERVED_FIELD_NONZERO, UNKNOWN_PDU_TYPE, DecodeError, Tolerate
from .events import (
    Aborted,
    AssociationAccepted,
    AssociationRejected,
    AssociationRequested,
    DimseCommand,
    DimseDatasetEnd,
    DimseDatasetStart,
    ProtocolEvent,
    ProtocolViolation,
    ProtocolWarning,
    ReleaseCompleted,
    ReleaseRequested,
)
from .pdu import (
    PDU_ABORT,
    PDU_ASSOCIATE_AC,
    PDU_ASSOCIATE_RJ,
    PDU_ASSOCIATE_RQ,
    PDU_HEADER_LENGTH,
    PDU_P_DATA_TF,
    PDU_RELEASE_RP,
    PDU_RELEASE_RQ,
    PDU_TYPE_NAMES,
    AssociateAC,
    AssociateRJ,
    AssociateRQ,
    parse_abort,
    parse_associate_ac,
    parse_associate_rj,
    parse_associate_rq,
    parse_release_rp,
    parse_release_rq,
    pdv_spans,
)
from .stream import DEFAULT_MAX_PDU_LENGTH, PDUReader, RawPDU

#: Largest wanted value (a UID, a patient ID) the identifier walk holds across data set fragments.
DEFAULT_VALUE_CAP: Final = 64 * 1024

_IDLE: Final = 0
_COMMAND: Final = 1
_DATASET: Final = 2


#: Commands whose Command Data Set Type must be 0x0101, no data set (PS3.7 9.3.1.2, 9.3.2.3, 9.3.5).
_NO_DATASET_COMMANDS: Final = frozenset({C_ECHO_RQ, C_ECHO_RSP, C_STORE_RSP, C_CANCEL_RQ})

class AssociationState(enum.StrEnum):
    """Where the association stands, as seen on the wire (PS3.8 9.2, simplified)."""

    AWAITING_RQ = "awaiting-rq"  # Sta2
    AWAITING_AC = "awaiting-ac"  # Sta3/Sta5
    ESTABLISHED = "established"  # Sta6
    RELEASE_REQUESTED = "release-requested"  # Sta7 - Sta12
    CLOSED = "closed"  # Sta1/Sta13


@dataclass(slots=True)
class DirectionCounters:
    """Traffic sent by one side of the association."""

    pdus: int = 0
    bytes: int = 0
    pdvs: int = 0
    commands: int = 0
    datasets: int = 0
    dataset_bytes: int = 0


class _Assembly:
    """The DIMSE message in flight in one direction (PS3.7 6.3.1, PS3.8 E.2).

    Messages are not interleaved within an association, so one per direction
    suffices.  Command fragments are joined (command sets are small); data set
    fragments are counted and walked for identifiers as they come, not kept.
    """

    __slots__ = (
        "phase",
        "context_id",
        "command_buf",
        "command",
        "transfer_syntax",
        "message_id",
        "walker",
        "peek_done",
        "dataset_bytes",
        "synced",
    )

    def __init__(self, synced: bool) -> None:
        self.phase = _IDLE
        self.context_id = 0
        self.command_buf = bytearray()
        self.command: CommandSet | None = None
        self.transfer_syntax: str | None = None
        self.message_id: int | None = None
        self.walker: PeekWalker | None = None
        self.peek_done = False
        self.dataset_bytes = 0
        # False while a mid-stream observer has not yet seen a command start in
        # this direction: data PDVs then belong to a message whose start we missed.
        self.synced = synced

    def reset(self) -> None:
        self.phase = _IDLE
        self.command_buf = bytearray()
        self.command = None
        self.walker = None
        self.peek_done = False
        self.dataset_bytes = 0

    @property
    def follows_response(self) -> bool:
        """The data set in flight is a response's (a C-FIND match), not a request's: its message_id
        is then the other side's (PS3.7 9.1.1, Message ID Being Responded To)."""
        return self.command is not None and self.command.is_response


class AssociationDecoder:
    """Turn the PDUs of one TCP connection into :mod:`~pacsguard.dicom.events`.

    ``on_pdu`` is for callers that already split the stream (the relay);
    ``feed`` splits raw bytes with one :class:`PDUReader` per direction (the IDS).

    Args:
        value_cap: largest wanted value (Patient ID, a UID...) the identifier walk holds
            while it is cut by a fragment boundary; the walk itself sees the whole data set.
        max_pdu_length: largest PDU the internal readers accept (``feed`` only).
        strict: stricter-than-standard checks of reserved fields (see PDUReader).
        resync: let the internal readers skip garbage (IDS joining mid-stream).
        midstream: start in the established state with unknown contexts, for a
            capture that does not contain the association negotiation.
        tolerate: DecodeError codes to report as :class:`ProtocolWarning` events
            instead of raising, where decoding can go on: a Command Group Length
            that does not match (PS3.7 E.1) and, in P-DATA-TF PDUs, a reserved
            header byte or reserved control header bits that are not zero (PS3.8
            9.3.1, E.2: "not tested").  Any other code is raised as before.
    """

    def __init__(
        self,
        *,
        value_cap: int = DEFAULT_VALUE_CAP,
        max_pdu_length: int = DEFAULT_MAX_PDU_LENGTH,
        strict: bool = False,
        resync: bool = False,
        midstream: bool = False,
        tolerate: frozenset[str] = frozenset(),
    ) -> None:
        if value_cap < 1:
            raise ValueError("value_cap must be positive")
        self.value_cap = value_cap
        self.max_pdu_length = max_pdu_length
        self.strict = strict
        self.resync = resync
        self.midstream = midstream
        self.tolerate = tolerate
        self._reserved_ok = RESERVED_FIELD_NONZERO in tolerate and not strict
        self.state = AssociationState.ESTABLISHED if midstream else AssociationState.AWAITING_RQ
        self.rq: AssociateRQ | None = None
        self.ac: AssociateAC | None = None
        self.rj: AssociateRJ | None = None
        #: accepted presentation contexts: id -> (abstract syntax, transfer syntax)
        self.contexts: dict[int, tuple[str, str]] = {}
        self.contexts_known = not midstream
        #: Maximum Length (PS3.8 D.1) each side declared it can receive; 0 = unlimited.
        self.requestor_max_pdu_length = 0
        self.acceptor_max_pdu_length = 0
        self.requestor = DirectionCounters()
        self.acceptor = DirectionCounters()
        self._asm_requestor = _Assembly(synced=not midstream)
        self._asm_acceptor = _Assembly(synced=not midstream)
        # Index 1 = requestor, 0 = acceptor.
        self._release_sent = [False, False]
        self._release_open = [False, False]
        self._readers: list[PDUReader | None] = [None, None]

    # ------------------------------------------------------------------ API

    @property
    def skipped_bytes(self) -> int:
        """Bytes the internal readers skipped while resynchronising."""
        return sum(r.skipped_bytes for r in self._readers if r is not None)

    def in_flight(self, from_requestor: bool) -> CommandSet | None:
        """The command whose data set is currently being transferred in that direction."""
        asm = self._asm_requestor if from_requestor else self._asm_acceptor
        return asm.command if asm.phase == _DATASET else None

    def streaming_context(self, from_requestor: bool) -> int | None:
        """The presentation context of the data set streaming in that direction, or None.

        Set only while the association is established and a data set is in flight
        whose identifiers were already peeked: from then on a P-DATA-TF holding one
        data PDV on that context that is not the last fragment (and within the
        receiver's negotiated maximum) yields no event, only counts, so a relay may
        check such PDUs itself and account them with :meth:`count_data_fragments`
        instead of calling :meth:`on_pdu` for each.
        """
        if self.state is not AssociationState.ESTABLISHED:
            return None
        asm = self._asm_requestor if from_requestor else self._asm_acceptor
        return asm.context_id if asm.phase == _DATASET and asm.peek_done else None

    def count_data_fragments(self, from_requestor: bool, pdus: int, nbytes: int) -> None:
        """Account *pdus* P-DATA-TF PDUs, *nbytes* in all (headers included), passed on unseen.

        Each must be one :meth:`streaming_context` allows: a single data PDV, not
        the last, on that context, of a PDU-length within the limits.  Counts
        exactly what :meth:`on_pdu` would (``pdus``, ``bytes``, ``pdvs`` and the
        data set size that :class:`DimseDatasetEnd` will report); no events.
        """
        if self.streaming_context(from_requestor) is None:
            raise ValueError("no data set is streaming in that direction")
        counters = self.requestor if from_requestor else self.acceptor
        counters.pdus += pdus
        counters.bytes += nbytes
        counters.pdvs += pdus
        asm = self._asm_requestor if from_requestor else self._asm_acceptor
        # Per PDU: 6-byte PDU header, 4-byte PDV item length, context ID, control header.
        asm.dataset_bytes += nbytes - pdus * (PDU_HEADER_LENGTH + 6)

    def reader(self, from_requestor: bool) -> PDUReader:
        """The PDUReader ``feed`` uses for one direction (created on first use)."""
        index = 1 if from_requestor else 0
        reader = self._readers[index]
        if reader is None:
            reader = PDUReader(self.max_pdu_length, strict=self.strict, resync=self.resync)
            self._readers[index] = reader
        return reader

    def feed(self, from_requestor: bool, data: bytes) -> list[ProtocolEvent]:
        """Split *data* into PDUs and decode them.

        On :class:`DecodeError` the events produced before the failure are in the
        exception's ``partial`` list.
        """
        events: list[ProtocolEvent] = []
        try:
            pdus = self.reader(from_requestor).feed(data)
        except DecodeError as exc:
            pdus = exc.partial
            try:
                for pdu in pdus:
                    events.extend(self.on_pdu(from_requestor, pdu))
            except DecodeError as inner:
                inner.partial = events + inner.partial
                raise inner from None
            exc.partial = events
            raise
        for pdu in pdus:
            try:
                events.extend(self.on_pdu(from_requestor, pdu))
            except DecodeError as exc:
                exc.partial = events + exc.partial
                raise
        return events

    def abstract_syntax(self, context_id: int) -> str | None:
        """The abstract syntax of an accepted presentation context (PS3.8 7.1.1.13), if known."""
        context = self.contexts.get(context_id)
        return context[0] if context else None

    def on_pdu(self, from_requestor: bool, pdu: RawPDU) -> list[ProtocolEvent]:
        """Decode one complete PDU sent by the requestor (True) or the acceptor."""
        raw = pdu.raw
        counters = self.requestor if from_requestor else self.acceptor
        counters.pdus += 1
        counters.bytes += len(raw)
        pdu_type = pdu.pdu_type
        if pdu_type == PDU_P_DATA_TF:
            if self._reserved_ok and raw[1]:
                warning = ProtocolWarning(from_requestor, RESERVED_FIELD_NONZERO,
                                        f"P-DATA-TF reserved header byte is 0x{raw[1]:02X}")
                return [warning, *self._on_p_data(from_requestor, raw, counters)]
            return self._on_p_data(from_requestor, raw, counters)
        if pdu_type == PDU_ASSOCIATE_RQ:
            return self._on_associate_rq(from_requestor, raw)
        if pdu_type == PDU_ASSOCIATE_AC:
            return self._on_associate_ac(from_requestor, raw)
        if pdu_type == PDU_ASSOCIATE_RJ:
            return self._on_associate_rj(from_requestor, raw)
        if pdu_type == PDU_RELEASE_RQ:
            parse_release_rq(raw, strict=self.strict)
            return self._on_release_rq(from_requestor)
        if pdu_type == PDU_RELEASE_RP:
            parse_release_rp(raw, strict=self.strict)
            return self._on_release_rp(from_requestor)
        if pdu_type == PDU_ABORT:
            abort = parse_abort(raw, strict=self.strict)
            if self.state is AssociationState.CLOSED:
                return [self._unexpected(from_requestor, pdu_type)]
            self.state = AssociationState.CLOSED
            return [Aborted(from_requestor, abort.source, abort.reason)]
        # Only reachable with a hand-made RawPDU: PDUReader rejects unknown types.
        raise DecodeError(UNKNOWN_PDU_TYPE, f"unknown PDU type 0x{pdu_type:02X}", 0)

    # ------------------------------------------------------- association

    def _unexpected(self, from_requestor: bool, pdu_type: int) -> ProtocolViolation:
        side = "requestor" if from_requestor else "acceptor"
        return ProtocolViolation(
            from_requestor,
            ev.VIOLATION_UNEXPECTED_PDU,
            f"{PDU_TYPE_NAMES[pdu_type]} from the {side} in state {self.state.value}",
        )

    def _on_associate_rq(self, from_requestor: bool, raw: bytes) -> list[ProtocolEvent]:
        rq = parse_associate_rq(raw, strict=self.strict)
        # A mid-stream observer that sees an RQ after all has the whole association.
        fresh_midstream = (
            self.midstream
            and self.rq is None
            and self.state is AssociationState.ESTABLISHED
            and self.requestor.commands == 0
        )
        if not from_requestor or not (
            self.state is AssociationState.AWAITING_RQ or fresh_midstream
        ):
            return [self._unexpected(from_requestor, PDU_ASSOCIATE_RQ)]
        self.rq = rq
        self.contexts_known = True
        self._asm_requestor.synced = self._asm_acceptor.synced = True
        self.requestor_max_pdu_length = rq.max_length or 0
        self.state = AssociationState.AWAITING_AC
        return [AssociationRequested(rq)]

    def _on_associate_ac(self, from_requestor: bool, raw: bytes) -> list[ProtocolEvent]:
        ac = parse_associate_ac(raw, strict=self.strict)
        if from_requestor or self.state is not AssociationState.AWAITING_AC:
            return [self._unexpected(from_requestor, PDU_ASSOCIATE_AC)]
        events: list[ProtocolEvent] = [AssociationAccepted(ac)]
        self.ac = ac
        self.acceptor_max_pdu_length = ac.max_length or 0
        assert self.rq is not None  # AWAITING_AC is only entered with an RQ
        for pc in ac.presentation_contexts:
            if not pc.accepted or pc.transfer_syntax is None:
                continue
            proposed = self.rq.context(pc.context_id)
            if proposed is None:
                events.append(
                    ProtocolViolation(
                        False,
                        ev.VIOLATION_CONTEXT_NOT_PROPOSED,
                        f"A-ASSOCIATE-AC accepts presentation context {pc.context_id}, "
                        "which the A-ASSOCIATE-RQ did not propose",
                    )
                )
                continue
            if pc.transfer_syntax not in proposed.transfer_syntaxes:
                events.append(
                    ProtocolViolation(
                        False,
                        ev.VIOLATION_TRANSFER_SYNTAX_NOT_PROPOSED,
                        f"presentation context {pc.context_id} accepted with transfer syntax "
                        f"{pc.transfer_syntax}, which was not proposed",
                    )
                )
            self.contexts[pc.context_id] = (proposed.abstract_syntax, pc.transfer_syntax)
        self.state = AssociationState.ESTABLISHED
        return events

    def _on_associate_rj(self, from_requestor: bool, raw: bytes) -> list[ProtocolEvent]:
        rj = parse_associate_rj(raw, strict=self.strict)
        if from_requestor or self.state is not AssociationState.AWAITING_AC:
            return [self._unexpected(from_requestor, PDU_ASSOCIATE_RJ)]
        self.rj = rj
        self.state = AssociationState.CLOSED
        return [AssociationRejected(rj)]

    def _on_release_rq(self, from_requestor: bool) -> list[ProtocolEvent]:
        index = 1 if from_requestor else 0
        state = self.state
        # A second A-RELEASE-RQ from the other side is a release collision (PS3.8 9.2.2).
        if state is AssociationState.ESTABLISHED or (
            state is AssociationState.RELEASE_REQUESTED and not self._release_sent[index]
        ):
            self._release_sent[index] = True
            self._release_open[index] = True
            self.state = AssociationState.RELEASE_REQUESTED
            return [ReleaseRequested(from_requestor)]
        return [self._unexpected(from_requestor, PDU_RELEASE_RQ)]

    def _on_release_rp(self, from_requestor: bool) -> list[ProtocolEvent]:
        other = 0 if from_requestor else 1
        if self.state is not AssociationState.RELEASE_REQUESTED or not self._release_open[other]:
            return [self._unexpected(from_requestor, PDU_RELEASE_RP)]
        self._release_open[other] = False
        if any(self._release_open):
            return []
        self.state = AssociationState.CLOSED
        return [ReleaseCompleted()]

    # -------------------------------------------------------------- data

    def _on_p_data(
        self, from_requestor: bool, raw: bytes, counters: DirectionCounters
    ) -> list[ProtocolEvent]:
        events: list[ProtocolEvent] = []
        state = self.state
        if state is not AssociationState.ESTABLISHED:
            if state is AssociationState.RELEASE_REQUESTED:
                # The side that asked for release must not send more data; the other
                # side may until it answers (PS3.8 9.2, Sta7/Sta8).
                if self._release_sent[1 if from_requestor else 0]:
                    events.append(
                        ProtocolViolation(
                            from_requestor,
                            ev.VIOLATION_DATA_AFTER_RELEASE,
                            "P-DATA-TF after this side sent A-RELEASE-RQ",
                        )
                    )
            elif state is AssociationState.CLOSED:
                return [
                    ProtocolViolation(
                        from_requestor,
                        ev.VIOLATION_DATA_AFTER_CLOSE,
                        "P-DATA-TF after the association was released, rejected or aborted",
                    )
                ]
            else:
                return [
                    ProtocolViolation(
                        from_requestor,
                        ev.VIOLATION_DATA_BEFORE_ASSOCIATION,
                        f"P-DATA-TF in state {state.value}, before A-ASSOCIATE-AC",
                    )
                ]
        # The receiver's negotiated Maximum Length bounds the PDU-length (PS3.8 D.1).
        limit = self.acceptor_max_pdu_length if from_requestor else self.requestor_max_pdu_length
        if limit and len(raw) - PDU_HEADER_LENGTH > limit:
            events.append(
                ProtocolViolation(
                    from_requestor,
                    ev.VIOLATION_PDU_EXCEEDS_NEGOTIATED_MAX,
                    f"P-DATA-TF PDU-length {len(raw) - PDU_HEADER_LENGTH} exceeds the "
                    f"receiver's negotiated maximum {limit}",
                )
            )
        spans = pdv_spans(raw, strict=self.strict)
        if self._reserved_ok:
            stray = next((mch for _, mch, _, _ in spans if mch & 0xFC), None)
            if stray is not None:
                events.append(ProtocolWarning(from_requestor, RESERVED_FIELD_NONZERO,
                                            f"PDV message control header 0x{stray:02X} has reserved bits 2-7 set"))
        counters.pdvs += len(spans)
        asm = self._asm_requestor if from_requestor else self._asm_acceptor
        try:
            for context_id, mch, start, end in spans:
                # Hot path: a data set fragment of the message in flight whose
                # identifiers were already extracted - just count it.
                if (
                    asm.phase == _DATASET
                    and asm.peek_done
                    and not mch & 1
                    and context_id == asm.context_id
                ):
                    asm.dataset_bytes += end - start
                    if mch & 2:
                        self._end_dataset(from_requestor, asm, counters, events)
                    continue
                self._on_pdv(from_requestor, asm, counters, raw, context_id, mch, start, end, events)
        except DecodeError as exc:
            exc.partial = events
            raise
        return events

    def _on_pdv(
        self,
        from_requestor: bool,
        asm: _Assembly,
        counters: DirectionCounters,
        raw: bytes,
        context_id: int,
        mch: int,
        start: int,
        end: int,
        events: list[ProtocolEvent],
    ) -> None:
        is_command = mch & 1
        is_last = mch & 2
        if is_command:
            if asm.phase == _DATASET:
                events.append(
                    ProtocolViolation(
                        from_requestor,
                        ev.VIOLATION_COMMAND_WHILE_DATASET_EXPECTED,
                        f"command PDV on context {context_id} while the data set of message "
                        f"{asm.message_id} is still expected",
                    )
                )
                asm.reset()
            elif asm.phase == _COMMAND and context_id != asm.context_id:
                events.append(self._context_changed(from_requestor, asm, context_id))
                asm.reset()
            if asm.phase == _IDLE:
                self._check_context(from_requestor, context_id, events)
                asm.phase = _COMMAND
                asm.context_id = context_id
                asm.synced = True
            if len(asm.command_buf) + (end - start) > MAX_COMMAND_SET_LENGTH:
                raise DecodeError(
                    COMMAND_SET_TOO_LARGE,
                    f"command set fragments on context {context_id} exceed "
                    f"{MAX_COMMAND_SET_LENGTH} bytes",
                    start,
                )
            asm.command_buf += memoryview(raw)[start:end]
            if is_last:
                self._end_command(from_requestor, asm, counters, events)
            return
        # Data set PDV
        if asm.phase != _DATASET:
            if not asm.synced:
                return  # tail of a message that started before the capture
            what = "before its command set was complete" if asm.phase == _COMMAND else (
                "without a command announcing a data set"
            )
            events.append(
                ProtocolViolation(
                    from_requestor,
                    ev.VIOLATION_DATASET_WITHOUT_COMMAND,
                    f"data set PDV on context {context_id} {what}",
                )
            )
            return
        if context_id != asm.context_id:
            events.append(self._context_changed(from_requestor, asm, context_id))
        size = end - start
        asm.dataset_bytes += size
        if not asm.peek_done:
            self._peek(from_requestor, asm, raw, start, end, bool(is_last), events)
        if is_last:
            self._end_dataset(from_requestor, asm, counters, events)

    def _check_context(
        self, from_requestor: bool, context_id: int, events: list[ProtocolEvent]
    ) -> None:
        if self.contexts_known and context_id not in self.contexts:
            events.append(
                ProtocolViolation(
                    from_requestor,
                    ev.VIOLATION_CONTEXT_NOT_ACCEPTED,
                    f"PDV on presentation context {context_id}, which was not accepted",
                )
            )

    def _tolerator(self, from_requestor: bool, events: list[ProtocolEvent]) -> Tolerate | None:
        """The hook handed to the DIMSE decoder: tolerated codes become warnings in *events*."""
        if not self.tolerate:
            return None

        def tolerate(err: DecodeError) -> bool:
            if err.code not in self.tolerate:
                return False
            events.append(ProtocolWarning(from_requestor, err.code, err.detail))
            return True

        return tolerate

    @staticmethod
    def _context_changed(from_requestor: bool, asm: _Assembly, context_id: int) -> ProtocolViolation:
        return ProtocolViolation(
            from_requestor,
            ev.VIOLATION_CONTEXT_CHANGED,
            f"PDV on context {context_id} in the middle of a message on context {asm.context_id}",
        )

    def _end_command(
        self,
        from_requestor: bool,
        asm: _Assembly,
        counters: DirectionCounters,
        events: list[ProtocolEvent],
    ) -> None:
        command = decode_command_set(asm.command_buf, tolerate=self._tolerator(from_requestor, events))
        asm.command_buf = bytearray()  # drop the old buffer, do not keep it growing
        counters.commands += 1
        abstract, transfer = self.contexts.get(asm.context_id, (None, None))
        events.append(DimseCommand(from_requestor, asm.context_id, abstract, transfer, command))
        if command.has_dataset and command.command_field in _NO_DATASET_COMMANDS:
            # The peer may take the data set that follows for something else (an identifier): it
            # must not reach it unjudged. Assembled as any, so its PDVs raise nothing further.
            events.append(
                ProtocolViolation(
                    from_requestor,
                    ev.VIOLATION_DATASET_NOT_ALLOWED,
                    f"{COMMAND_NAMES[command.command_field]} announces a data set (Command Data Set "
                    f"Type 0x{command.command_data_set_type:04X}); PS3.7 9.3 requires 0x0101 (none)",
                )
            )
        if command.has_dataset:
            asm.phase = _DATASET
            asm.command = command
            asm.transfer_syntax = transfer
            asm.message_id = command.correlation_id
            asm.walker = None
            asm.peek_done = False
            asm.dataset_bytes = 0
        else:
            asm.reset()

    def _peek(
        self,
        from_requestor: bool,
        asm: _Assembly,
        raw: bytes,
        start: int,
        end: int,
        is_last: bool,
        events: list[ProtocolEvent],
    ) -> None:
        """Walk one data set fragment for identifiers; once they are all seen, or the walk ends (the
        last fragment, or a structural problem), report them with DimseDatasetStart."""
        walker = asm.walker
        if walker is None:
            walker = asm.walker = peek_walker(asm.transfer_syntax, value_cap=self.value_cap)
        # The fragment is read in place: the walker keeps no reference to it.
        walker.feed(memoryview(raw)[start:end])
        if is_last:
            walker.finish()
        if walker.done:
            events.append(DimseDatasetStart(from_requestor, asm.context_id, asm.message_id, walker.peek,
                                            asm.follows_response))
            asm.peek_done = True
            asm.walker = None

    def _end_dataset(
        self,
        from_requestor: bool,
        asm: _Assembly,
        counters: DirectionCounters,
        events: list[ProtocolEvent],
    ) -> None:
        counters.datasets += 1
        counters.dataset_bytes += asm.dataset_bytes
        events.append(DimseDatasetEnd(from_requestor, asm.message_id, asm.dataset_bytes, asm.follows_response))
        asm.reset()
