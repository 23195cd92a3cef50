"""`pacsguard audit verify`: recompute every seal, chain link, index row and signed checkpoint.

How each tampering shows (the sealed record of event n is {"event", "prev", "seq": n}):
- modified: the record no longer hashes to the leaf the next event sealed (edited), or it does but
  the stored leaf column differs (the hash was changed), or it was re-hashed but the next event
  sealed a different predecessor; or a search column differs from the record; or the record was
  moved to another event_bodies row, where nothing reads it. Which of the record
  and the column was edited is told by the next event's seal;
- misplaced (an index finding): the row's place is not the one its seq and first patient give, so
  a search by patient would miss it;
- deleted: no row holds sealed event n; or its events row is there but its sealed record
  (event_bodies, format 4) is not: the stored leaf and the next event's seal still give its hash;
- inserted: a row whose sealed record is not in the chain (a second claimant for n, or a forgery);
  or an event_bodies row with no events row of its seq;
- reordered: sealed event n is stored at another position;
- truncated: a checkpoint or the tree head counts more events than are stored;
- tree head: tree_state (size, frontier, last leaf) is not what the stored events give: the writer
  would chain the next event to a wrong predecessor or sign a root of no stored tree;
- inserted past the head: a sealed event beyond the size the tree head counts;
- checkpoint: its Ed25519 signature fails with the key it names, it names a key none of those given
  is (each checkpoint records its key's fingerprint; several writers of one PostgreSQL store may
  each sign with their own, so several keys may be given), or its root differs from the recomputed
  tree (events rewritten when the signature verifies, the checkpoint row edited when it does not).
A deleted event's leaf hash is still known from the next event's seal, so the tree, the
checkpoints and the witnesses are checked past it. A column holding a value of a type pacsguard
never writes (SQLite keeps whatever is written) is a finding naming the column, not a crash.
Events after the newest checkpoint are protected by the chain only: an attacker holding the
database can rewrite that tail consistently, which is why checkpoints are frequent and exported.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Column, Connection, Row, Table, func, select
from sqlalchemy.exc import DBAPIError

from pacsguard.events.model import Event
from pacsguard.store import keys
from pacsguard.store.bodies import Unreadable, body_columns, body_of
from pacsguard.store.clean_pass import COLUMNS, Terms, clean_chain, columns_of, terms_of
from pacsguard.store.columns import study_keys
from pacsguard.store.errors import StoreError
from pacsguard.store.index import BatchIndex, bucket_of, other_patients, place_of
from pacsguard.store.merkle import Frontier, leaf_hash
from pacsguard.store.schema import (
    checkpoints,
    event_batches,
    event_bodies,
    event_patients,
    event_studies,
    event_terms,
    events,
    tree_state,
)
from pacsguard.store.store import GENESIS_PREV, Checkpoint, EventStore, checkpoint_message


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # modified | deleted | inserted | reordered | truncated | tree head | checkpoint | index | database
    seq: int | None
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "message": self.message}


@dataclass(slots=True)
class VerifyReport:
    store: str
    events: int = 0
    checkpoints: int = 0
    newest_checkpoint: int | None = None
    newest_checkpoint_valid: bool | None = None  # signature valid and root matches the stored events
    newest_checkpoint_signature: str | None = None  # valid | invalid | other key | unchecked
    newest_checkpoint_root_ok: bool | None = None  # None: the checkpoint counts more events than remain
    newest_checkpoint_key: str | None = None  # fingerprint of the key that signed it, as recorded
    key_id: str | None = None  # fingerprint of the (first) key verified with
    key_ids: list[str] = field(default_factory=list)  # fingerprints of every key verified with
    findings: list[Finding] = field(default_factory=list)
    #: The leaf hashes of the sealed events in order, and the size the tree head counts: what
    #: witnessed checkpoints are compared with (store/witnessed.py). Not part of the JSON report.
    chain: list[bytes] = field(default_factory=list, repr=False)
    head_size: int | None = None
    #: The first event whose leaf hash is lost (it and its successor deleted): the chain ends there
    #: although later events remain, so what lies past it cannot be recomputed (not in the JSON).
    lost: int | None = field(default=None, repr=False)
    #: event_bodies rows that no events row claims, (seq, body): told once the chain is known.
    unclaimed: list[tuple[int, Any]] = field(default_factory=list, repr=False)
    #: seq -> the leaf hash the next event sealed for it, where its stored record hashes to another
    #: (the record was edited): the tree the writer's head holds is built of these (not in the JSON).
    sealed: dict[int, bytes] = field(default_factory=dict, repr=False)
    witnesses: list[dict[str, Any]] = field(default_factory=list)  # what each witness held (witnessed.py)
    #: What verifies but deserves a look (no finding: the exit code stays 0): a checkpoint dated
    #: before an earlier one, when the host's clock stepped back.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "ok": self.ok, "events": self.events, "checkpoints": self.checkpoints,
                "newest_checkpoint": self.newest_checkpoint,
                "newest_checkpoint_valid": self.newest_checkpoint_valid,
                "newest_checkpoint_signature": self.newest_checkpoint_signature,
                "newest_checkpoint_root_ok": self.newest_checkpoint_root_ok,
                "newest_checkpoint_key": self.newest_checkpoint_key, "key": self.key_id, "keys": self.key_ids,
                **({"witnesses": self.witnesses} if self.witnesses else {}),
                **({"notes": self.notes} if self.notes else {}),
                "findings": [f.to_dict() for f in self.findings]}


@dataclass(slots=True)
class _Row:
    position: int
    sealed_seq: int | None
    prev: bytes | None
    leaf: bytes  # recomputed from the body
    leaf_ok: bool  # the body hashes to the stored leaf column
    problems: list[str]  # the record itself cannot be read
    column_diffs: list[tuple[str, Any, Any]]  # (column, stored in the column, said by the record)
    patients: tuple[str, ...]  # after the first (index.other_patients): the ones event_patients lists
    studies: tuple[str, ...]
    terms_of: Terms | None = None  # as sealed, for the term index
    misplaced: str | None = None
    missing: bool = False  # the events row has no sealed record (event_bodies row): leaf is the stored one
    unread: bool = False  # its record is there but cannot be read: what it named is unknown
    stored: bytes | None = None  # the leaf column (32 bytes), as stored


#: The key(s) checkpoints are verified with: none, one, or one per writer of the store.
PublicKeys = Ed25519PublicKey | Sequence[Ed25519PublicKey] | None


def verify_store(store: EventStore, public_key: PublicKeys,
                 progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    """Verify ``store``; each checkpoint's signature with the key it names among ``public_key``
    (one key, or one per writer that signs with its own), a checkpoint naming none of them a
    finding that names its key."""
    report = VerifyReport(store=store.name)
    try:
        with store.engine.connect() as conn:
            report.findings.extend(_database_damage(conn))
            head = conn.execute(select(tree_state).where(tree_state.c.id == 1)).one_or_none()
            # The newest seq, for the progress bar only: an edited seq of another type (text and blobs
            # sort after numbers in SQLite) counts the rows instead (an outside tester saw exit 70).
            total = _as_int(conn.execute(select(events.c.seq).order_by(events.c.seq.desc()).limit(1)).scalar())
            if total is None:
                total = max((conn.execute(select(func.count()).select_from(events)).scalar() or 0) - 1, 0)
            cps = conn.execute(select(checkpoints).order_by(checkpoints.c.tree_size)).all()
            clean = clean_chain(conn, total + 1, progress)
            if clean is not None:
                chain = clean
                report.events = len(chain)
            else:
                chain = _forensic_chain(conn, total + 1, progress, report)
    except DBAPIError as exc:
        # A damaged database (a zeroed page, a dropped table) cannot be read to the end: that is
        # "the store cannot be read" (exit 2), not a bug (an outside tester saw exit 70).
        raise StoreError(f"{store.name}: cannot read the store to verify it: {exc.orig or exc}; the "
                         "database is damaged (restore it from a backup and verify that)") from None
    size = len(chain)
    head_size = _as_int(head.size) if head is not None else None
    report.chain, report.head_size = chain, head_size
    if head is None:
        report.findings.append(Finding("truncated", None, "the tree head (tree_state) is missing"))
    elif head_size is None or head_size < 0:
        report.findings.append(Finding("tree head", None, f"tree_state.size holds {_shown_value(head.size)}, not a "
                                       "count of events: the tree head was edited outside pacsguard"))
    elif head_size < size:
        report.findings.extend(Finding("inserted", seq, f"event #{seq} lies past the tree head, which counts "
                                       f"{head_size} events: it was appended behind pacsguard's back (inserted)")
                               for seq in range(head_size, size))
    elif head_size > size and report.lost is None:
        report.findings.append(Finding("truncated", size, f"the tree head counts {head_size} events but only "
                                       f"{size} are stored: events #{size}..#{head_size - 1} were removed"))
    frontier = _check_checkpoints(chain, cps, public_key, report)
    if head is not None and head_size is not None and 0 <= head_size <= size:
        report.findings.extend(_check_head(chain, head_size, head, frontier, report.sealed))
    _unclaimed_records(report)
    return report


def _as_int(value: Any) -> int | None:
    """An integer column as stored, or None: SQLite keeps whatever type an UPDATE writes (a real,
    text), which pacsguard never writes itself."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _as_blob(value: Any, size: int | None = None) -> bytes | None:
    """A binary column as stored (of ``size`` bytes if given), or None for text or a number."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        return None
    blob = bytes(value)
    return blob if size is None or len(blob) == size else None


def _shown_value(value: Any) -> str:
    """A stored value and its type, for a finding: "'x' (text)", "5.5 (real)"."""
    kind = {str: "text", float: "real", int: "integer", bytes: "blob", type(None): "NULL"}.get(type(value), "value")
    text = repr(value)
    return f"{text[:40]}{'...' if len(text) > 40 else ''} ({kind})"


def _check_head(chain: list[bytes], size: int, head: Row[Any], frontier: Frontier,
                sealed: dict[int, bytes]) -> list[Finding]:
    """The tree head (tree_state) against the stored events: its frontier must be the RFC 9162
    (2.1.1) perfect-subtree roots of leaves #0..#size-1 and its last leaf that of event #size-1,
    since the writer chains the next event to the one and signs the root of the other.
    ``frontier`` is the tree built so far by the checkpoint check (reused: the leaves are hashed once).
    A head that holds the tree of the leaves as the events sealed them (``sealed``: an edited record's
    leaf as its successor sealed it) is as the writer left it: the edit is a finding of its own, and
    calling the head "edited outside pacsguard" would accuse a table nobody touched."""
    if frontier.size > size:
        frontier = Frontier()
    while frontier.size < size - 1:
        frontier.append(chain[frontier.size])
    before_last = frontier.copy()
    if frontier.size < size:
        frontier.append(chain[size - 1])
    stored_frontier, last_leaf = _as_blob(head.frontier), _as_blob(head.last_leaf, 32)
    expected_last = chain[size - 1] if size else GENESIS_PREV
    frontier_ok, last_ok = stored_frontier == frontier.to_bytes(), last_leaf == expected_last
    if frontier_ok and last_ok:
        return []
    if any(seq < size for seq in sealed) and last_leaf == sealed.get(size - 1, expected_last):
        as_written = Frontier()
        for seq in range(size):
            as_written.append(sealed.get(seq, chain[seq]))
        if stored_frontier == as_written.to_bytes():
            return []
    if size and not last_ok and last_leaf is not None:
        # The head holds another leaf for the newest event, and its frontier agrees with that
        # leaf: the head is as the writer left it, the event's row was re-hashed since.
        as_sealed = before_last.copy()
        as_sealed.append(last_leaf)
        if stored_frontier == as_sealed.to_bytes():
            return [Finding("modified", size - 1, f"event #{size - 1}: its sealed record was edited and re-hashed: "
                            "the tree head (tree_state.last_leaf and frontier) recorded another leaf for it when it "
                            "was sealed")]
    what = []
    if not last_ok:
        what.append(f"tree_state.last_leaf holds {_shown_hash(head.last_leaf)}, not the leaf of event #{size - 1} "
                    "(the next event would seal a wrong predecessor)" if size else
                    f"tree_state.last_leaf holds {_shown_hash(head.last_leaf)}, not the genesis value of an empty tree")
    if not frontier_ok:
        what.append(f"tree_state.frontier ({_shown_hash(head.frontier)}) is not the tree of events "
                    f"#0..#{size - 1} (the next checkpoint would sign a root of no stored tree)")
    return [Finding("tree head", None, "the tree head was edited outside pacsguard: " + "; ".join(what))]


def _shown_hash(value: Any) -> str:
    blob = _as_blob(value)
    if blob is None:
        return _shown_value(value)
    return f"{len(blob)} bytes {blob.hex()[:16]}..." if blob else "0 bytes"


def _database_damage(conn: Connection) -> list[Finding]:
    """SQLite's own check of every page (PRAGMA quick_check: b-tree structure, not contents): a
    zeroed or overwritten page of an index that the chain never reads (ix_event_batches_time) left
    verify saying OK while searches by time failed (an outside tester, round 5). PostgreSQL keeps
    its own checksums; nothing is asked of it here."""
    if conn.dialect.name != "sqlite":
        return []
    problems = [str(row[0]) for row in conn.exec_driver_sql("PRAGMA quick_check(10)")]
    if problems == ["ok"]:
        return []
    return [Finding("database", None, f"SQLite finds the database damaged below pacsguard's records: "
                    f"{'; '.join(problems)} (restore it from a backup and verify that)")]


def _forensic_chain(conn: Connection, expected: int, progress: Callable[[int, int], None] | None,
                    report: VerifyReport) -> list[bytes]:
    """Every row, index row and batch held at once, so that each departure from the sealed chain is
    told for what it is (the module's docstring); memory grows with the store (~3 KB per event)."""
    rows, report.unclaimed = _read_rows(conn, expected, progress)
    index_pat = _index_digest(conn, event_patients, event_patients.c.patient_id, report.findings)
    index_std = _index_digest(conn, event_studies, event_studies.c.study_uid, report.findings)
    batches = conn.execute(select(event_batches).order_by(event_batches.c.first_seq)).all()
    terms = conn.execute(select(event_terms)).all()
    report.events = len(rows)
    chain = _reconstruct_chain(rows, report.findings, report.sealed)
    sealed = [row.sealed_seq for row in rows if row.sealed_seq is not None]
    if sealed and len(chain) <= max(sealed):
        report.lost = len(chain)
    _check_indexes(rows, index_pat, index_std, report.findings)
    report.findings.extend(Finding("index", r.position, r.misplaced) for r in rows if r.misplaced)
    _check_batches(rows, batches, terms, report.findings)
    return chain


def _read_rows(conn: Connection, expected: int,
               progress: Callable[[int, int], None] | None) -> tuple[list[_Row], list[tuple[int, Any]]]:
    """Every events row with its sealed record, sorted by seq, and the event_bodies rows no events
    row claims. A row whose record is not at its seq (its seq column was edited) is given the
    unclaimed record that hashes to its stored leaf, so the edit is told as an edited column."""
    bodies: dict[Any, str | Unreadable] = {seq: body_of(body, body_type) for seq, body, body_type in (
        conn.execution_options(stream_results=True, yield_per=20_000)
        .execute(select(event_bodies.c.seq, *body_columns(conn.dialect.name))))}
    # In place order: the table's own order, read straight through; sorted by seq afterwards.
    stmt = select(events.c.place, events.c.seq, events.c.leaf, *[events.c[c] for c in COLUMNS]).order_by(events.c.place)
    out: list[_Row] = []
    apart: list[tuple[int, Row[Any]]] = []
    # Rows whose record at their seq does not hash to their leaf: edited, or swapped with another
    # row's record (two raw messages exchanged), which is told as moved records, not as edited
    # columns and leaves of two events whose events rows nobody touched.
    unmatched: list[tuple[int, Row[Any]]] = []
    result = conn.execution_options(stream_results=True, yield_per=20_000).execute(stmt)
    for n, r in enumerate(result):
        seq = _as_int(r.seq)
        if seq is not None and seq in bodies:
            body = bodies[seq]
            if isinstance(body, str) and leaf_hash(body.encode()) != _as_blob(r.leaf, 32):
                unmatched.append((n, r))
            else:
                out.append(_row_of(r, bodies.pop(seq), n))
        else:
            apart.append((n, r))
        if progress is not None and n % 20_000 == 0:
            progress(n, expected)
    if unmatched:
        by_leaf = {leaf_hash(body.encode()): seq for seq, body in bodies.items() if isinstance(body, str)}
        for n, r in unmatched:
            found = by_leaf.get(_as_blob(r.leaf, 32) or b"")
            if found is not None and found != r.seq:
                row = _row_of(r, bodies.pop(found), n)
                if row.sealed_seq != found:  # else the record is where it was sealed: the row moved (reordered)
                    row.problems.append(f"its sealed record was moved to event_bodies row #{found}, where no "
                                        f"search or proof reads it (it belongs in row #{r.seq})")
                out.append(row)
            elif r.seq in bodies:
                out.append(_row_of(r, bodies.pop(r.seq), n))
            else:  # its own record was taken by the row whose record it holds: read as the others
                apart.append((n, r))
    if apart:
        by_leaf = {leaf_hash(body.encode()): seq for seq, body in bodies.items() if isinstance(body, str)}
        for n, r in apart:
            found = by_leaf.pop(_as_blob(r.leaf, 32) or b"", None)
            if found is not None:
                row = _row_of(r, bodies.pop(found), n)
                if _as_int(r.seq) is not None:
                    # Searches and proofs read a record by its row's seq: this one they do not find.
                    row.problems.append(f"its sealed record was moved to event_bodies row #{found}, where no "
                                        f"search or proof reads it (it belongs in row #{r.seq})")
                out.append(row)
            elif _as_int(r.seq) is not None:
                # No record for it at all: the stored leaf stands in for the record's hash.
                stored = _as_blob(r.leaf, 32) or bytes(32)
                out.append(_Row(r.seq, r.seq, None, stored, True, [], [], (), (), None, None, missing=True,
                                stored=stored))
            else:
                out.append(_row_of(r, None, n))
    if progress is not None:
        progress(len(out), len(out))
    out.sort(key=lambda row: row.position)
    # A record's seq of another type (text, a blob) sorts after the numbers, by its text.
    return out, sorted(bodies.items(), key=lambda kv: (0, kv[0], "") if _as_int(kv[0]) is not None
                       else (1, 0, repr(kv[0])))


def _row_of(r: Row[Any], body: str | Unreadable | None, n: int) -> _Row:
    """An events row read with ``body``, its sealed record (None: none was found for it). A record
    that is there but cannot be read still stands for its event (at the row's seq): it is one
    modified record, not a deleted event, and what it named (its index rows) is unknown."""
    problems: list[str] = []
    diffs: list[tuple[str, Any, Any]] = []
    if isinstance(body, str):
        body_bytes = body.encode()
    elif body is None:  # no event_bodies row of its seq, nor one holding the record of its leaf
        body_bytes = b""
        problems.append(f"its sealed record is missing: event_bodies has no row #{_shown_value(r.seq)}")
    else:  # pacsguard writes UTF-8 text; the record was replaced by a value of another type or bytes
        body_bytes = body.raw
        problems.append(f"its sealed record (event_bodies.body) {body.reason}")
    stored = _as_blob(r.leaf, 32)
    leaf = leaf_hash(body_bytes)
    leaf_ok = leaf == _as_blob(r.leaf)
    sealed_seq: int | None = None
    prev: bytes | None = None
    sealed_terms: Terms | None = None
    patients: tuple[str, ...] = ()
    studies: tuple[str, ...] = ()
    misplaced: str | None = None
    parsed = _parse_record(body_bytes) if body is not None and not problems else None
    if isinstance(parsed, str):
        problems.append(f"its sealed record is not valid: {parsed}")
    elif parsed is not None:
        sealed_seq, prev, event = parsed
        patients, studies = other_patients(event.patient_ids), study_keys(event.study_uids)
        sealed_terms = terms_of(event)
        expected_cols = columns_of(event)
        diffs = [(name, getattr(r, name), expected_cols[name]) for name in COLUMNS
                 if getattr(r, name) != expected_cols[name]]
        seq_column = _as_int(r.seq)
        if seq_column is None:  # a seq of another type (5.5, text): edited outside pacsguard
            diffs.append(("seq", r.seq, sealed_seq))
        else:
            place = place_of(seq_column, expected_cols["patient_id"])
            if r.place != place and leaf_ok:  # an edited record names another patient: reported as edited
                misplaced = (f"event #{r.seq} is stored at place {r.place}, not at {place} where its seq and "
                             "first patient put it: a search by patient would miss it")
    # The row's position is its seq column; one of another type stands at the seq it sealed.
    position = _as_int(r.seq)
    unread = parsed is None or isinstance(parsed, str)
    if unread and body is not None and position is not None:
        sealed_seq = position  # present but unreadable: it still stands for the event of its row
    if position is None:
        position = sealed_seq if sealed_seq is not None else -1 - n
    return _Row(position, sealed_seq, prev, leaf, leaf_ok, problems, diffs, patients, studies, sealed_terms, misplaced,
                unread=unread, stored=stored)


#: What a JSON value is, in words.
_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true or false", type(None): "null"}


def _parse_record(body: bytes) -> tuple[int, bytes, Event] | str:
    """(seq, prev, event) of a sealed record, or what is wrong with it in words: never a byte of the
    record (patient data) nor Python's own message about it."""
    try:
        sealed = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth" in exc.msg or "recursion" in exc.msg:
            return "it is JSON nested deeper than any record (edited)"
        if "number" in exc.msg:
            return f"it holds a number too long to read (at character {exc.pos}; edited)"
        if "UTF-8" in exc.msg:
            return "it is not valid UTF-8 text (edited)"
        return f"it is not JSON ({exc.msg} at character {exc.pos}; edited)"
    if not isinstance(sealed, dict):
        return f"it is JSON but not an object: it holds {_JSON_TYPES.get(type(sealed), 'a value')} (edited)"
    absent = [name for name in ("event", "prev", "seq") if name not in sealed]
    if absent:
        return f"it has no {', no '.join(repr(name) for name in absent)} member (edited)"
    seq, prev, event = sealed["seq"], sealed["prev"], sealed["event"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        return f"its 'seq' member holds {_JSON_TYPES.get(type(seq), 'a value')}, not an event number (edited)"
    if not isinstance(prev, str) or len(prev) != 64 or any(c not in "0123456789abcdefABCDEF" for c in prev):
        return "its 'prev' member is not a 32-byte hash in hex (edited)"
    if not isinstance(event, dict):
        return f"its 'event' member holds {_JSON_TYPES.get(type(event), 'a value')}, not an event (edited)"
    try:
        return seq, bytes.fromhex(prev), Event.from_dict(event)
    except KeyError as exc:
        name = exc.args[0] if exc.args and isinstance(exc.args[0], str) and len(exc.args[0]) < 40 else None
        return (f"its event has no {name!r} member (edited)" if name is not None
                else "its event lacks a member every event has (edited)")
    except (ValueError, TypeError, AttributeError, OverflowError):
        return "its event is not one pacsguard writes: a member holds a value of the wrong kind (edited)"


def _reconstruct_chain(rows: list[_Row], findings: list[Finding], sealed: dict[int, bytes]) -> list[bytes]:
    """Pick, for each sealed sequence number, the row that belongs to the chain; classify the rest.
    Returns the leaf hashes of the sealed events in sealed order (a missing one ends the list), and
    puts in ``sealed`` the leaf the next event sealed for each event whose record hashes to another."""
    claimants: dict[int, list[_Row]] = defaultdict(list)
    for row in rows:
        if row.sealed_seq is None:
            findings.append(Finding("modified", row.position, f"event #{row.position}: " + "; ".join(row.problems)))
        else:
            claimants[row.sealed_seq].append(row)
    # prev hashes that some sealed record points back to: tells the genuine claimant apart.
    referenced = {row.prev for row in rows if row.prev is not None}
    last = max(claimants) if claimants else -1
    chain: list[bytes] = []
    genuine_of: dict[int, _Row] = {}
    prev_leaf: bytes | None = GENESIS_PREV
    for seq in range(last + 1):
        rows_for = claimants.get(seq, [])
        if not rows_for:
            prev_leaf = _sealed_by_successor(claimants.get(seq + 1, []))
            if prev_leaf is not None and len(chain) == seq:
                # The next event sealed this one's leaf hash: the tree, the checkpoints and the
                # witnesses are still checked past the gap (a gap, not a cut tail).
                chain.append(prev_leaf)
                findings.append(Finding("deleted", seq, f"event #{seq} is missing (deleted); event #{seq + 1} "
                                        "sealed its hash, so the events and checkpoints past it are still checked"))
            else:
                findings.append(Finding("deleted", seq, f"event #{seq} is missing (deleted)"))
            continue
        genuine = genuine_of[seq] = _choose(rows_for, prev_leaf, referenced)
        if genuine.missing:
            findings.append(_missing_record(seq, genuine, _sealed_by_successor(claimants.get(seq + 1, []))))
        for other in rows_for:
            if other is not genuine:
                findings.append(Finding("inserted", other.position, f"the row at position #{other.position} "
                                        f"claims to be event #{seq} but is not part of the sealed chain (inserted)"))
        if genuine.position != seq:
            findings.append(Finding("reordered", seq, f"event #{seq} is stored at position #{genuine.position} "
                                    "(rows were reordered)"))
        prev_leaf = genuine.leaf
        if len(chain) == seq:
            chain.append(genuine.leaf)
    for seq, row in genuine_of.items():
        if row.missing:
            continue  # told by _missing_record
        successor = genuine_of.get(seq + 1)
        if successor is not None and successor.prev is not None and successor.prev != row.leaf:
            sealed[seq] = successor.prev
        elif successor is None and seq == last and not row.leaf_ok and row.stored is not None:
            # The newest event: no seal of it but its leaf column, which the tree head may confirm.
            sealed[seq] = row.stored
        what = _modification(seq, row, successor.prev if successor is not None else None)
        if what:
            findings.append(Finding("modified", seq, f"event #{seq}: " + "; ".join(what)))
    return chain


def _missing_record(seq: int, row: _Row, sealed: bytes | None) -> Finding:
    """The finding for an events row whose sealed record (its event_bodies row) is gone. The chain
    goes on with the leaf hash event #seq+1 sealed when there is one (``row.leaf`` is set to it),
    else with the stored leaf column, which nothing then confirms."""
    at = f"event #{seq}: its sealed record is missing (event_bodies has no row #{seq}; deleted)"
    if sealed is None:
        return Finding("deleted", seq, f"{at}; no later event sealed its hash, so the checks past it rely on "
                       "its stored leaf column")
    stored, row.leaf = row.leaf, sealed
    if stored != sealed:
        return Finding("deleted", seq, f"{at}, and its stored hash (the leaf column) was changed; event "
                       f"#{seq + 1} sealed its hash, so the events and checkpoints past it are still checked")
    return Finding("deleted", seq, f"{at}; its leaf column and event #{seq + 1}'s seal keep its hash, so the "
                   "events and checkpoints past it are still checked")


def _unclaimed_records(report: VerifyReport) -> None:
    """Tell the event_bodies rows that no events row claims (report.unclaimed). pacsguard writes an
    event's two rows in one transaction, so each is either what is left of a deleted event or a
    record stored outside pacsguard. Left of a deleted event: it seals its own seq and hashes to the
    chain's leaf there (past the remaining chain: links to the record before it); the deletion is
    already a finding (deleted, truncated), which then says where the record is left, and only a
    deletion nothing else tells becomes a finding of its own."""
    chain, findings = report.chain, report.findings
    left: dict[int, bytes] = {}  # seq -> leaf of the records left past the remaining chain
    deleted = {f.seq: i for i, f in enumerate(findings) if f.kind == "deleted" and f.seq is not None}
    cut = [i for i, f in enumerate(findings) if f.kind == "truncated"]
    beyond: list[int] = []
    for seq, body in report.unclaimed:
        if _as_int(seq) is None:  # a seq of another type (text, a blob): no event's, whatever it holds
            findings.append(Finding("inserted", None, f"an event_bodies row has seq {_shown_value(seq)}, not an "
                                    "event number, and no events row claims it: it was stored or edited outside "
                                    "pacsguard"))
            continue
        sealed = _sealed_fields(body)
        genuine = False
        if sealed is not None and sealed[0] == seq:
            _, prev, leaf = sealed
            if seq < len(chain):
                genuine = leaf == chain[seq]
            else:
                genuine = prev == (chain[seq - 1] if seq - 1 < len(chain) else left.get(seq - 1))
                if genuine:
                    left[seq] = leaf
        where = f"event_bodies row #{seq}"
        if genuine and seq in deleted:
            i = deleted[seq]
            findings[i] = Finding("deleted", seq, f"{findings[i].message}; its sealed record is left in {where}")
        elif genuine and seq >= len(chain):
            beyond.append(seq)
        elif genuine:
            findings.append(Finding("deleted", seq, f"event #{seq}'s events row is missing (deleted); its sealed "
                                    f"record is left in {where}"))
        else:
            findings.append(Finding("inserted", seq, f"{where} holds a record that no events row claims and that "
                                    "is not part of the sealed chain: it was stored outside pacsguard (inserted)"))
    if not beyond:
        return
    span = f"#{beyond[0]}..#{beyond[-1]}" if len(beyond) > 1 else f"#{beyond[0]}"
    if cut:
        i = cut[0]
        findings[i] = Finding("truncated", findings[i].seq, f"{findings[i].message} (the sealed records of "
                              f"{len(beyond)} of them are left in event_bodies rows {span})")
    else:
        findings.append(Finding("deleted", beyond[0], f"events {span} are missing (deleted), and the tree head "
                                f"was cut back to match; their sealed records are left in event_bodies rows {span}"))


def _sealed_fields(body: Any) -> tuple[int, bytes, bytes] | None:
    """(seq, prev, leaf hash) of a sealed record, None when it is not one."""
    if not isinstance(body, str):
        return None
    try:
        sealed = orjson.loads(body)
        return int(sealed["seq"]), bytes.fromhex(sealed["prev"]), leaf_hash(body.encode())
    except (ValueError, KeyError, TypeError):
        return None


def _sealed_by_successor(successors: list[_Row]) -> bytes | None:
    """The leaf hash of a deleted event as the event after it sealed it (its "prev"); None when no
    row, or rows that disagree, claim to follow it."""
    sealed = {row.prev for row in successors if row.prev is not None}
    return sealed.pop() if len(sealed) == 1 else None


def _modification(seq: int, row: _Row, next_prev: bytes | None) -> list[str]:
    """What was changed in the row of sealed event ``seq``, told by what the next event sealed
    (``next_prev``, its copy of this event's leaf hash): the record, its stored hash or a column."""
    what = list(row.problems)
    record_edited: bool | None = False
    if not row.leaf_ok:
        if next_prev is not None and next_prev != row.leaf:
            what.append(f"its sealed record was edited: it no longer hashes to the leaf that event #{seq + 1} sealed")
            record_edited = True
        elif next_prev is not None:
            what.append("its stored hash (the leaf column) was changed; the sealed record is intact")
        else:
            what.append("its record does not hash to its stored leaf (the record or the stored hash was edited)")
            record_edited = None
    elif next_prev is not None and next_prev != row.leaf:
        what.append(f"its sealed record was edited and re-hashed: event #{seq + 1} sealed a different predecessor")
        record_edited = True
    for name, column, in_record in row.column_diffs:
        if record_edited is None:
            what.append(f"column {name} holds {column!r}, the record {in_record!r}")
        elif record_edited:
            # The columns are written with the seal, so the column is the likelier original.
            what.append(f"the record now says {name} {in_record!r}; its column, copied at sealing, holds {column!r}")
        else:
            what.append(f"column {name} was changed: stored {column!r}, sealed {in_record!r}")
    return what


def _choose(rows_for: list[_Row], prev_leaf: bytes | None, referenced: set[bytes]) -> _Row:
    def score(row: _Row) -> tuple[int, int, int]:
        return (row.prev == prev_leaf, row.leaf in referenced,
                not row.problems and row.leaf_ok and not row.column_diffs)
    return max(rows_for, key=score)


def _index_digest(conn: Connection, table: Table, column: Column[str],
                  findings: list[Finding]) -> dict[int, set[str]]:
    out: dict[int, set[str]] = defaultdict(set)
    for bucket, value, seq in conn.execute(select(table.c.bucket, column, table.c.seq)):
        if _as_int(seq) is None:
            findings.append(Finding("index", None, f"the {table.name} row of {value!r} has seq {_shown_value(seq)}, "
                                    "not an event number: it was edited outside pacsguard"))
            continue
        out[seq].add(value)
        if bucket != bucket_of(seq):
            findings.append(Finding("index", seq, f"the {table.name} row of {value!r} for event #{seq} is in bucket "
                                    f"{bucket}, not {bucket_of(seq)}: searches would miss it"))
    return out


def _check_indexes(rows: list[_Row], patients: dict[int, set[str]], studies: dict[int, set[str]],
                   findings: list[Finding]) -> None:
    tables = (("event_patients", patients, "patients after its first"), ("event_studies", studies, "studies"))
    for row in rows:
        for (table, index, what), sealed in zip(tables, (row.patients, row.studies), strict=True):
            have = index.pop(row.position, set())
            if row.missing or row.unread:
                continue  # what the record named is unknown; its absence or damage is the finding
            if have != set(sealed):
                findings.append(Finding("index", row.position, f"event #{row.position}: {table} lists "
                                        f"{sorted(have)} but the sealed event names the {what} {sorted(sealed)}"))
    for table, index, _ in tables:
        for seq, values in index.items():
            findings.append(Finding("index", seq, f"{table} lists {sorted(values)} for event #{seq}, "
                                    "which does not exist"))


def _check_batches(rows: list[_Row], batches: Sequence[Row[Any]], terms: Sequence[Row[Any]],
                   findings: list[Finding]) -> None:
    """The batch time ranges must tile the stored events, and the term postings of each batch must be
    exactly what its sealed events say (index.py builds both the same way for the store)."""
    expected: dict[tuple[str, int], tuple[int, bytes]] = {}
    # By seq: after a deleted event, list positions no longer equal seqs (an outside tester saw
    # every later batch's term rows reported as not carried).
    by_seq = {row.position: row for row in rows}
    unchecked: set[int] = set()  # batches with a missing or unreadable event: their term rows too
    covered = 0
    for b in batches:
        if _as_int(b.first_seq) is None or _as_int(b.last_seq) is None:
            findings.append(Finding("index", None, f"event_batches: the batch row #{_shown_value(b.first_seq)}..#"
                                    f"{_shown_value(b.last_seq)} does not hold event numbers: it was edited outside "
                                    "pacsguard"))
            continue
        if b.first_seq != covered or b.last_seq < b.first_seq:
            findings.append(Finding("index", b.first_seq, f"event_batches: the batch #{b.first_seq}..#{b.last_seq} "
                                    f"does not start where the one before ended (#{covered})"))
        covered = max(covered, b.last_seq + 1)
        sealed = [by_seq[s].terms_of if s in by_seq else None for s in range(b.first_seq, b.last_seq + 1)]
        members = [m for m in sealed if m is not None]
        if len(members) != len(sealed):
            unchecked.add(b.first_seq)
            continue  # a missing or unreadable event: reported by the chain check
        idx = BatchIndex(b.first_seq)
        for seq, m in enumerate(members, b.first_seq):
            idx.add(seq, *m, (), ())
        if (idx.min_time, idx.max_time) != (b.min_time_us, b.max_time_us):
            findings.append(Finding("index", b.first_seq, f"event_batches: the time range of batch #{b.first_seq}.."
                                    f"#{b.last_seq} was changed (time-range searches would miss events)"))
        for bucket, term, first_seq, blob in idx.term_rows():
            expected[(term, first_seq)] = (bucket, blob)
    end = max(by_seq, default=-1) + 1
    if covered < end:
        findings.append(Finding("index", covered, f"event_batches: events #{covered}..#{end - 1} are in no "
                                "batch (time-range searches would miss them)"))
    for t in terms:
        key = (t.term, t.first_seq)
        want = expected.pop(key, None)
        if want is None and t.first_seq in unchecked:
            continue
        if want is None:
            findings.append(Finding("index", t.first_seq, f"event_terms: {t.term!r} is listed for batch "
                                    f"#{t.first_seq}, whose sealed events do not carry it"))
        elif (t.bucket, _as_blob(t.seqs)) != want:
            findings.append(Finding("index", t.first_seq, f"event_terms: the events listed for {t.term!r} in batch "
                                    f"#{t.first_seq} differ from the sealed events"))
    for term, first_seq in expected:
        findings.append(Finding("index", first_seq, f"event_terms: {term!r} is missing for batch #{first_seq} "
                                "(searches by it would miss events)"))


def _by_id(public_key: PublicKeys) -> dict[str, Ed25519PublicKey]:
    """The keys given, by fingerprint, in the order given (a key given twice once)."""
    listed = [] if public_key is None else [public_key] if isinstance(public_key, Ed25519PublicKey) else public_key
    return {keys.key_id(k): k for k in listed}


def _check_checkpoints(chain: list[bytes], cps: Sequence[Row[Any]], public_key: PublicKeys,
                       report: VerifyReport) -> Frontier:
    """Each checkpoint's Ed25519 signature (RFC 8032) and, separately, its root against the tree
    recomputed from the stored events (RFC 9162 2.1): a forged signature and rewritten events are
    different findings. Returns the tree as far as it was built (the tree head's check goes on)."""
    report.checkpoints = len(cps)
    frontier = Frontier()
    given = _by_id(public_key)
    report.key_ids = list(given)
    report.key_id = next(iter(given), None)
    beyond_gap: list[int] = []
    previous: Checkpoint | None = None
    for row in cps:
        cp = _checkpoint_of(row, report.findings)
        if cp is None:
            continue
        if previous is not None and cp.time_us < previous.time_us:
            report.notes.append(_dated_back(cp, previous))
        previous = cp
        signature = _signature(cp, given, report.findings)
        root_ok: bool | None = None
        if cp.tree_size > len(chain) and report.lost is not None:
            beyond_gap.append(cp.tree_size)
        elif cp.tree_size > len(chain):
            report.findings.append(Finding("truncated", len(chain), f"checkpoint at size {cp.tree_size} sealed "
                                           f"{cp.tree_size} events but only {len(chain)} remain in order: events "
                                           f"#{len(chain)}..#{cp.tree_size - 1} were removed"))
        else:
            while frontier.size < cp.tree_size:
                frontier.append(chain[frontier.size])
            recomputed = frontier.root()
            root_ok = recomputed == cp.root
            if not root_ok:
                report.findings.append(_root_differs(cp, recomputed, signature, given))
        report.newest_checkpoint = cp.tree_size
        report.newest_checkpoint_key = cp.key_id or None
        report.newest_checkpoint_signature = signature
        report.newest_checkpoint_root_ok = root_ok
        report.newest_checkpoint_valid = signature == "valid" and root_ok is True
    if beyond_gap:
        report.findings.append(Finding("deleted", report.lost, f"{len(beyond_gap)} checkpoint(s), at size "
                                       f"{beyond_gap[0]}..{beyond_gap[-1]}, cannot be checked: event #{report.lost} "
                                       "and the one after it are missing, so its leaf hash is lost (see the "
                                       "deleted events)"))
    return frontier


def _dated_back(cp: Checkpoint, previous: Checkpoint) -> str:
    """A checkpoint signed with a time before its predecessor's: each is signed with the host's
    clock as it read, so this says the clock stepped back (an NTP step, a date set by hand), which
    makes the times of the events between them doubtful too; the seals themselves are unaffected."""
    back = (previous.time_us - cp.time_us) / 1e6
    amount = f"{back / 60:.0f} min" if back >= 60 else f"{back:.1f} s"
    return (f"checkpoint at size {cp.tree_size} is dated {amount} before the one at size {previous.tree_size}: "
            "the host's clock stepped back between them (check NTP); the events' times there are the clock's")


def _checkpoint_of(row: Row[Any], findings: list[Finding]) -> Checkpoint | None:
    """A checkpoint row with the types pacsguard writes; None (and a finding naming the column) for a
    row edited to hold another type, e.g. a root as text."""
    size, time_us = _as_int(row.tree_size), _as_int(row.time_us)
    root, signature = _as_blob(row.root, 32), _as_blob(row.signature)
    wrong = [(name, value, what) for name, value, ok, what in (
        ("tree_size", row.tree_size, size is not None, "a count of events"),
        ("root", row.root, root is not None, "a 32-byte hash"),
        ("time_us", row.time_us, time_us is not None, "a time in microseconds"),
        ("signature", row.signature, signature is not None, "a signature"),
        ("key_id", row.key_id, isinstance(row.key_id, str), "a key fingerprint")) if not ok]
    if size is None or root is None or time_us is None or signature is None or not isinstance(row.key_id, str):
        findings.append(Finding("checkpoint", size, f"the checkpoint row at size {_shown_value(row.tree_size)} was "
                                "edited outside pacsguard: " + "; ".join(f"column {name} holds {_shown_value(value)}, "
                                                                         f"not {what}" for name, value, what in wrong)))
        return None
    return Checkpoint(size, root, time_us, row.key_id, signature)


def _root_differs(cp: Checkpoint, recomputed: bytes, signature: str, given: dict[str, Ed25519PublicKey]) -> Finding:
    """A root that differs from the stored events' tree: the events were rewritten only if the
    signature over that root verifies; when it fails, the checkpoint row is what was edited."""
    at = f"checkpoint at size {cp.tree_size}"
    if signature == "valid":
        return Finding("checkpoint", cp.tree_size, f"{at}: the signed root differs from the tree recomputed from the "
                       "stored events (events before it were rewritten)")
    # The key it names if given, else any given (its fingerprint column may be edited too).
    tried = [given[cp.key_id]] if cp.key_id in given else list(given.values())
    if any(keys.verify_signature(k, cp.signature, checkpoint_message(cp.tree_size, recomputed, cp.time_us))
           for k in tried):
        return Finding("checkpoint", cp.tree_size, f"{at}: its root column was edited: the signature verifies over "
                       "the root recomputed from the stored events, which are as signed")
    if signature == "invalid":
        return Finding("checkpoint", cp.tree_size, f"{at}: the checkpoint row was edited (its signature fails and its "
                       "root is not the tree of the stored events); the events are not blamed from it alone (compare "
                       "the other checkpoints and `audit verify --witness`)")
    return Finding("checkpoint", cp.tree_size, f"{at}: its root differs from the tree recomputed from the stored "
                   "events: events before it were rewritten, or the checkpoint row was edited (verify with its "
                   "key to tell which)")


def _signature(cp: Checkpoint, given: dict[str, Ed25519PublicKey], findings: list[Finding]) -> str:
    """"valid", "invalid" (fails with the key it names), "other key" (it names a key none of those
    given is, so it could not be checked) or "unchecked" (no key given); findings for all but "valid".
    A signature that verifies with a given key other than the one it names is valid, its edited
    fingerprint column a finding."""
    at = f"checkpoint at size {cp.tree_size}"
    if not given:
        return "unchecked"
    message = checkpoint_message(cp.tree_size, cp.root, cp.time_us)
    named = given.get(cp.key_id)
    if named is not None and keys.verify_signature(named, cp.signature, message):
        return "valid"
    if named is None:
        signer = next((kid for kid, k in given.items() if keys.verify_signature(k, cp.signature, message)), None)
        if signer is not None:
            findings.append(Finding("checkpoint", cp.tree_size, f"{at}: its signature verifies with key {signer}, "
                                    f"but its key fingerprint column was changed to {cp.key_id!r}"))
            return "valid"
    keys_given = _keys_given(given)
    if not cp.key_id:
        findings.append(Finding("checkpoint", cp.tree_size, f"{at} records no signing key fingerprint and its "
                                f"signature does not verify with {keys_given}: signed by another key, or forged"))
        return "invalid"
    if named is None:
        findings.append(Finding("checkpoint", cp.tree_size, f"{at} was signed by key {cp.key_id}; the "
                                f"{'keys given are' if len(given) > 1 else 'key given is'} {', '.join(given)}: "
                                f"verify with key {cp.key_id}'s public key (if that key is not yours, the "
                                "checkpoint was signed by someone else)"))
        return "other key"
    findings.append(Finding("checkpoint", cp.tree_size, f"{at}: signature INVALID with key {cp.key_id}, the key it "
                            "names (the checkpoint was forged or altered)"))
    return "invalid"


def _keys_given(given: dict[str, Ed25519PublicKey]) -> str:
    """"key X" or "any of keys X, Y": what a signature was tried with."""
    return f"key {next(iter(given))}" if len(given) == 1 else f"any of keys {', '.join(given)}"
