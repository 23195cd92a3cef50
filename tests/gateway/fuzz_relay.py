"""A seeded PDU-level fuzzer for the relay (issue #16, section 3), in memory on the playbook harness.

An input is a real association, as a list of reads from either side (A-ASSOCIATE-RQ/AC, C-ECHO,
C-STORE with a data set, C-FIND, release, abort), with one to three mutations: bit flips, truncation
of a PDU, a lie in a PDU-length or an item length, items of the A-ASSOCIATE-RQ shuffled, a PDU
dropped or repeated, reads coalesced or split. Each input runs on a fresh connection of one
long-lived route (with or without the built-in IDS rules behind the inline check), and `run_one`
checks what the issue asks of every path:

- no exception escapes the relay (it would be "internal error" with a traceback in the gateway);
- a protocol violation is followed by the association's abort, a requested association ends in a
  recorded outcome (rejected, aborted, released) once its connection is closed, and no association
  ends for an "internal-error";
- everything the upstream received is a whole PDU the decoder accepts, and the A-ASSOCIATE-RQ it
  received is one the conformance check accepts (nothing malformed reaches the PACS); the same for
  what the client received from the upstream.

Inputs are a pure function of (seed, index), so a failure names the one input to replay.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import ip_network

from playbook import (
    CT_STORAGE,
    IMPLICIT_LE,
    STUDY_FIND,
    VERIFICATION,
    Playbook,
    associate_ac,
    echo_rq,
    request,
    response,
    route_config,
)

from pacsguard.dicom import dimse
from pacsguard.dicom import pdu as P
from pacsguard.dicom.conformance import associate_rq_faults
from pacsguard.dicom.errors import DecodeError
from pacsguard.events import Event
from pacsguard.gateway.checks import Shared, build_chain
from pacsguard.gateway.quarantine import QuarantinePolicy
from pacsguard.ids import DicomAdapter, Engine, IdsSettings, load_rules

Read = tuple[bool, bytes]  # (from the client, bytes of one read)

#: Every association event that ends a requested association.
ENDINGS = frozenset({"dicom.association.rejected", "dicom.association.aborted", "dicom.association.released"})
MUTATIONS = ("flip", "truncate", "pdu-length", "item-length", "shuffle", "drop", "repeat", "coalesce", "split",
             "garbage")


def _rq(calling: str, *contexts: str, roles: bool = False, identity: bool = False) -> bytes:
    items: list[P.UserInfoSubItem] = [P.MaximumLength(16384), P.ImplementationClassUID("1.2.826.0.1.3680043.9.3811"),
                                      P.ImplementationVersionName("FUZZ_1")]
    if roles:
        items.append(P.RoleSelection(CT_STORAGE, 1, 1))
    if identity:
        items.append(P.UserIdentityRQ(2, True, b"user", b"secret"))
    return P.encode_associate_rq(P.AssociateRQ(
        "PACSGUARD", calling, [P.PresentationContextRQ(2 * i + 1, uid, [IMPLICIT_LE, "1.2.840.10008.1.2.1"])
                               for i, uid in enumerate(contexts)], P.UserInformation(items)))


def _store(message_id: int) -> bytes:
    command = dimse.CommandSet(dimse.C_STORE_RQ, message_id=message_id, affected_sop_class_uid=CT_STORAGE,
                               affected_sop_instance_uid=f"1.2.3.4.{message_id}", priority=0,
                               command_data_set_type=0x0000)
    dataset = (b"\x10\x00\x20\x00\x04\x00\x00\x00PAT1" + b"\x20\x00\x0d\x00\x08\x00\x00\x001.2.3.4\x00"
               + b"\xe0\x7f\x10\x00\x00\x10\x00\x00" + bytes(4096))
    return request(command, dataset, context_id=3)


def _find(message_id: int) -> bytes:
    command = dimse.CommandSet(dimse.C_FIND_RQ, message_id=message_id, affected_sop_class_uid=STUDY_FIND,
                               priority=0, command_data_set_type=0x0001)
    return request(command, b"\x08\x00\x52\x00\x06\x00\x00\x00STUDY \x10\x00\x20\x00\x00\x00\x00\x00", context_id=5)


def _ac(n: int) -> bytes:
    return associate_ac(*[P.PC_ACCEPTANCE] * n)


def seeds() -> list[list[Read]]:
    """Real associations, as the reads each side makes."""
    echo, store, find = echo_rq(1), _store(2), _find(3)
    release = [(True, P.encode_release_rq()), (False, P.encode_release_rp())]
    return [
        [(True, _rq("CT1", VERIFICATION)), (False, _ac(1)), (True, echo), (False, response(echo)), *release],
        [(True, _rq("CT1", VERIFICATION, CT_STORAGE, STUDY_FIND, roles=True)), (False, _ac(3)), (True, echo),
         (False, response(echo)), (True, store), (False, response(store, context_id=3)), (True, find),
         (False, response(find, status=dimse.STATUS_SUCCESS, context_id=5)), *release],
        [(True, _rq("MR1", VERIFICATION, CT_STORAGE, identity=True)), (False, _ac(2)), (True, store),
         (False, response(store, context_id=3)), (True, P.encode_abort(0, 0))],
        [(True, _rq("CT1", VERIFICATION)), (False, P.encode_associate_rj(1, 1, 3))],
        # The A-ASSOCIATE-RQ alone, and with data sent before the answer: most hostile input ends here,
        # so these are weighted up (the same list twice).
        [(True, _rq("CT1", VERIFICATION, CT_STORAGE, roles=True, identity=True))],
        [(True, _rq("MR1", VERIFICATION, STUDY_FIND))],
        [(True, _rq("CT1", VERIFICATION)), (True, echo)],
        [(True, _rq("CT1", VERIFICATION, CT_STORAGE, roles=True, identity=True))],
        [(True, _rq("MR1", VERIFICATION, STUDY_FIND))],
    ]


# --- mutations -----------------------------------------------------------------------------------------


def _pick(rng: random.Random, reads: list[Read]) -> int:
    return rng.randrange(len(reads))


def _flip(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        # Headers and item headers are where parsers trip: bias towards the first 80 bytes.
        pos = rng.randrange(min(len(buf), 80)) if rng.random() < 0.7 else rng.randrange(len(buf))
        buf[pos] ^= 1 << rng.randrange(8)
    return bytes(buf)


def _length_lie(rng: random.Random, data: bytes) -> bytes:
    if len(data) < 6:
        return data
    length = struct.unpack_from(">I", data, 2)[0]
    lie = rng.choice((0, 1, length - 1, length + 1, length * 2, 0xFFFFFFFF, rng.randrange(1 << 32)))
    return data[:2] + struct.pack(">I", lie & 0xFFFFFFFF) + data[6:]


def _item_offsets(data: bytes) -> list[int]:
    """Offsets of the items of an A-ASSOCIATE-RQ/AC (PS3.8 9.3.2), as far as they can be followed."""
    out, pos = [], P.ASSOCIATE_ITEMS_OFFSET
    while pos + 4 <= len(data):
        out.append(pos)
        pos += 4 + struct.unpack_from(">H", data, pos + 2)[0]
    return out


def _item_length_lie(rng: random.Random, data: bytes) -> bytes:
    if not data or data[0] not in (P.PDU_ASSOCIATE_RQ, P.PDU_ASSOCIATE_AC):
        return _length_lie(rng, data)
    offsets = _item_offsets(data)
    if not offsets:
        return data
    at = rng.choice(offsets)
    if rng.random() < 0.5 and data[at] in (P.ITEM_PRESENTATION_CONTEXT_RQ, P.ITEM_USER_INFORMATION):
        at += 8 if data[at] == P.ITEM_PRESENTATION_CONTEXT_RQ else 4  # a sub-item's length instead
        if at + 4 > len(data):
            return data
    old = struct.unpack_from(">H", data, at + 2)[0]
    lie = rng.choice((0, 1, old - 1, old + 1, old + 100, 0xFFFF)) & 0xFFFF
    return data[:at + 2] + struct.pack(">H", lie) + data[at + 4:]


def _shuffle_items(rng: random.Random, data: bytes) -> bytes:
    if not data or data[0] not in (P.PDU_ASSOCIATE_RQ, P.PDU_ASSOCIATE_AC):
        return data
    offsets = _item_offsets(data)
    if not offsets:
        return data
    items = [data[a:b] for a, b in zip(offsets, [*offsets[1:], len(data)], strict=True)]
    rng.shuffle(items)
    if items and rng.random() < 0.3:
        items.append(items[rng.randrange(len(items))])  # an item twice
    body = data[6:P.ASSOCIATE_ITEMS_OFFSET] + b"".join(items)
    return data[:2] + struct.pack(">I", len(body)) + body


def mutate(rng: random.Random, reads: list[Read]) -> tuple[list[Read], list[str]]:
    """One to three mutations of *reads*; the mutated reads and the names of what was done."""
    reads = list(reads)
    done: list[str] = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        what = rng.choice(MUTATIONS)
        i = _pick(rng, reads)
        side, data = reads[i]
        if what == "flip" and data:
            reads[i] = (side, _flip(rng, data))
        elif what == "truncate" and data:
            reads[i] = (side, data[:rng.randrange(len(data))])
        elif what == "pdu-length":
            reads[i] = (side, _length_lie(rng, data))
        elif what == "item-length":
            reads[i] = (side, _item_length_lie(rng, data))
        elif what == "shuffle":
            reads[i] = (side, _shuffle_items(rng, data))
        elif what == "drop" and len(reads) > 1:
            del reads[i]
        elif what == "repeat":
            reads.insert(i, reads[i])
        elif what == "coalesce" and i + 1 < len(reads) and reads[i + 1][0] == side:
            reads[i:i + 2] = [(side, data + reads[i + 1][1])]
        elif what == "split" and len(data) > 1:
            cut = rng.randrange(1, len(data))
            reads[i:i + 1] = [(side, data[:cut]), (side, data[cut:])]
        elif what == "garbage":
            reads.insert(i, (side, rng.randbytes(rng.randrange(1, 64))))
        else:
            continue
        done.append(what)
    return reads, done


def make_input(seed: int, index: int, corpus: list[list[Read]]) -> tuple[list[Read], list[str]]:
    """Input *index* of the run seeded *seed*: a pure function of both."""
    rng = random.Random(seed * 1_000_003 + index)
    return mutate(rng, corpus[rng.randrange(len(corpus))])


# --- running and judging -------------------------------------------------------------------------------


@dataclass
class Finding:
    """An input that broke a promise: what, and how to replay it."""

    index: int
    mutations: list[str]
    problem: str

    def __str__(self) -> str:
        return f"input {self.index} ({', '.join(self.mutations)}): {self.problem}"


def whole_pdus(data: bytes) -> tuple[list[bytes], int]:
    """The whole PDUs at the start of *data*, and how many bytes follow the last one."""
    out, pos = [], 0
    while pos + 6 <= len(data):
        end = pos + 6 + struct.unpack_from(">I", data, pos + 2)[0]
        if end > len(data):
            break
        out.append(data[pos:end])
        pos = end
    return out, len(data) - pos


def _malformed(frames: list[bytes], check_rq: bool) -> str | None:
    for frame in frames:
        try:
            if frame[0] == P.PDU_P_DATA_TF:
                P.pdv_spans(frame)  # the PDV items; their content is the decoder's and the checks' business
                continue
            parsed = P.parse_pdu(frame)
        except DecodeError as exc:
            return f"forwarded a PDU the decoder refuses: {exc}"
        if check_rq and isinstance(parsed, P.AssociateRQ) and (faults := associate_rq_faults(parsed)):
            return f"forwarded an A-ASSOCIATE-RQ the conformance check refuses: {faults[0]}"
    return None


def judge(pb: Playbook, events: list[Event], closed: bool) -> str | None:
    """What is wrong with how one input ended (None: nothing)."""
    kinds = [e.kind for e in events]
    if "dicom.protocol.violation" in kinds and "dicom.association.aborted" not in kinds:
        return "a protocol violation was recorded but the association was not aborted"
    if closed and "dicom.association.requested" in kinds and not ENDINGS & set(kinds):
        return f"a requested association closed without a recorded outcome: {kinds}"
    for e in events:
        if e.details.get("cause") == "internal-error":
            return f"internal error: {e.message}"
    up, tail = whole_pdus(bytes(pb.upstream_wire.out))
    if tail and not closed:
        return f"{tail} bytes of a partial PDU were sent upstream on an open association"
    problem = _malformed(up, check_rq=True)
    if problem is None:
        down, _ = whole_pdus(bytes(pb.client_wire.out))
        problem = _malformed(down, check_rq=False)
        problem = problem and f"to the client: {problem}"
    return problem


class Fuzzer:
    """One route (and one event loop) for many inputs: fresh connections, shared checks, as a gateway."""

    def __init__(self, *, with_ids: bool) -> None:
        route = route_config(policy={"calling_ae_titles": ["CT1", "MR1"]}, limits={"requests_per_minute": 100_000})
        # The built-in brute-force rule would quarantine the fuzzing AE titles and mask later inputs.
        self.pb = Playbook(route, quarantine_policy=QuarantinePolicy(admin_hosts=(ip_network("127.0.0.0/8"),)))
        if with_ids:
            engine = Engine(load_rules([]), IdsSettings())
            self.pb.checks = build_chain(route, Shared(self.pb.quarantined, DicomAdapter(engine)))
        self.corpus = seeds()
        #: how the inputs ended: rejected, aborted, released (recorded outcomes), open, not-requested
        self.outcomes: Counter[str] = Counter()

    async def run_one(self, seed: int, index: int) -> Finding | None:
        reads, done = make_input(seed, index, self.corpus)
        pb = self.pb
        pb.events = []
        relay = pb.connect(40000 + index % 20000)
        try:
            for n, (from_client, data) in enumerate(reads):
                if relay.closed:
                    break
                relay.data_received(from_client, data)
                if n == 0 or relay.state == "connecting":
                    await asyncio.sleep(0)  # the upstream leg is opened by a task
        except Exception as exc:  # noqa: BLE001 - this is the finding
            relay.close()
            return Finding(index, done, f"{type(exc).__name__}: {exc}")
        closed = relay.closed
        problem = judge(pb, pb.events, closed)
        ended = [e.kind.rsplit(".", 1)[1] for e in pb.events if e.kind in ENDINGS]
        requested = any(e.kind == "dicom.association.requested" for e in pb.events)
        self.outcomes[ended[0] if ended else "open" if requested and not closed else "not-requested"] += 1
        relay.close()
        return Finding(index, done, problem) if problem else None


@dataclass
class Report:
    ran: int
    findings: list[Finding]
    outcomes: Counter[str]


async def run(seed: int, count: int, *, ids_every: int = 5, stop: Callable[[], bool] = lambda: False,
              max_findings: int = 20) -> Report:
    """Inputs 0..count-1 of *seed* (or until *stop*), every *ids_every*-th with the built-in IDS rules
    inline (0: none); how many ran, what they found, how they ended."""
    plain = Fuzzer(with_ids=False)
    ids = Fuzzer(with_ids=True) if ids_every else plain
    findings: list[Finding] = []
    ran = 0
    for index in range(count):
        if stop():
            break
        fuzzer = ids if ids_every and index % ids_every == 0 else plain
        found = await fuzzer.run_one(seed, index)
        ran += 1
        if found is not None:
            findings.append(found)
            if len(findings) >= max_findings:
                break
    return Report(ran, findings, plain.outcomes + ids.outcomes if ids is not plain else plain.outcomes)
