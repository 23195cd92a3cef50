"""`pacsguard audit verify`: recompute every seal, chain link, index row and signed checkpoint.

How each tampering shows (the sealed record of event n is {"event", "prev", "seq": n}):
- modified: the record no longer hashes to the leaf the next event sealed (edited), or it does but
  the stored leaf column differs (the hash was changed), or it was re-hashed but the next event
  sealed a different predecessor; or a search column differs from the record. Which of the record
  and the column was edited is told by the next event's seal;
- misplaced (an index finding): the row's place is not the one its seq and first patient give, so
  a search by patient would miss it;
- deleted: no row holds sealed event n;
- inserted: a row whose sealed record is not in the chain (a second claimant for n, or a forgery);
- reordered: sealed event n is stored at another position;
- truncated: a checkpoint or the tree head counts more events than are stored;
- inserted past the head: a sealed event beyond the size the tree head counts;
- checkpoint: its Ed25519 signature fails with the key it names, it names another key than the one
  given (each checkpoint records its key's fingerprint), or its root differs from the recomputed tree.
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
from sqlalchemy import Column, Connection, Row, Table, select
from sqlalchemy.exc import DBAPIError

from pacsguard.events.model import Event
from pacsguard.store import keys
from pacsguard.store.clean_pass import COLUMNS, Terms, clean_chain, columns_of, terms_of
from pacsguard.store.errors import StoreError
from pacsguard.store.index import BatchIndex, bucket_of, other_patients, place_of
from pacsguard.store.merkle import Frontier, leaf_hash
from pacsguard.store.schema import (
    checkpoints,
    event_batches,
    event_patients,
    event_studies,
    event_terms,
    events,
    tree_state,
)
from pacsguard.store.store import GENESIS_PREV, EventStore, checkpoint_message


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # modified | deleted | inserted | reordered | truncated | checkpoint | index | database
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
    key_id: str | None = None  # fingerprint of the key verified with
    findings: list[Finding] = field(default_factory=list)
    #: The leaf hashes of the sealed events in order, and the size the tree head counts: what
    #: witnessed checkpoints are compared with (store/witnessed.py). Not part of the JSON report.
    chain: list[bytes] = field(default_factory=list, repr=False)
    head_size: int | None = None
    witnesses: list[dict[str, Any]] = field(default_factory=list)  # what each witness held (witnessed.py)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {"store": self.store, "ok": self.ok, "events": self.events, "checkpoints": self.checkpoints,
                "newest_checkpoint": self.newest_checkpoint,
                "newest_checkpoint_valid": self.newest_checkpoint_valid,
                "newest_checkpoint_signature": self.newest_checkpoint_signature,
                "newest_checkpoint_root_ok": self.newest_checkpoint_root_ok,
                "newest_checkpoint_key": self.newest_checkpoint_key, "key": self.key_id,
                **({"witnesses": self.witnesses} if self.witnesses else {}),
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


def verify_store(store: EventStore, public_key: Ed25519PublicKey | None,
                 progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    report = VerifyReport(store=store.name)
    try:
        with store.engine.connect() as conn:
            report.findings.extend(_database_damage(conn))
            head = conn.execute(select(tree_state).where(tree_state.c.id == 1)).one_or_none()
            total = conn.execute(select(events.c.seq).order_by(events.c.seq.desc()).limit(1)).scalar() or 0
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
    report.chain, report.head_size = chain, head.size if head is not None else None
    if head is None:
        report.findings.append(Finding("truncated", None, "the tree head (tree_state) is missing"))
    elif head.size < size:
        report.findings.extend(Finding("inserted", seq, f"event #{seq} lies past the tree head, which counts "
                                       f"{head.size} events: it was appended behind pacsguard's back (inserted)")
                               for seq in range(head.size, size))
    elif head.size > size:
        report.findings.append(Finding("truncated", size, f"the tree head counts {head.size} events but only "
                                       f"{size} are stored: events #{size}..#{head.size - 1} were removed"))
    _check_checkpoints(chain, cps, public_key, report)
    return report


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
    rows = _read_rows(conn, expected, progress)
    index_pat = _index_digest(conn, event_patients, event_patients.c.patient_id, report.findings)
    index_std = _index_digest(conn, event_studies, event_studies.c.study_uid, report.findings)
    batches = conn.execute(select(event_batches).order_by(event_batches.c.first_seq)).all()
    terms = conn.execute(select(event_terms)).all()
    report.events = len(rows)
    chain = _reconstruct_chain(rows, report.findings)
    _check_indexes(rows, index_pat, index_std, report.findings)
    report.findings.extend(Finding("index", r.position, r.misplaced) for r in rows if r.misplaced)
    _check_batches(rows, batches, terms, report.findings)
    return chain


def _read_rows(conn: Connection, expected: int, progress: Callable[[int, int], None] | None) -> list[_Row]:
    # In place order: the table's own order, read straight through; sorted by seq afterwards.
    stmt = select(events.c.place, events.c.seq, events.c.body, events.c.leaf,
                  *[events.c[c] for c in COLUMNS]).order_by(events.c.place)
    out: list[_Row] = []
    result = conn.execution_options(stream_results=True, yield_per=20_000).execute(stmt)
    for n, r in enumerate(result):
        problems: list[str] = []
        diffs: list[tuple[str, Any, Any]] = []
        body_bytes = r.body.encode()
        leaf = leaf_hash(body_bytes)
        leaf_ok = leaf == bytes(r.leaf)
        sealed_seq: int | None = None
        prev: bytes | None = None
        sealed_terms: Terms | None = None
        patients: tuple[str, ...] = ()
        studies: tuple[str, ...] = ()
        misplaced: str | None = None
        try:
            sealed = orjson.loads(body_bytes)
            sealed_seq, prev = int(sealed["seq"]), bytes.fromhex(sealed["prev"])
            event = Event.from_dict(sealed["event"])
            patients, studies = other_patients(event.patient_ids), tuple(dict.fromkeys(event.study_uids))
            sealed_terms = terms_of(event)
            expected_cols = columns_of(event)
            place = place_of(r.seq, expected_cols["patient_id"])
            if r.place != place and leaf_ok:  # an edited record names another patient: reported as edited
                misplaced = (f"event #{r.seq} is stored at place {r.place}, not at {place} where its seq and "
                             "first patient put it: a search by patient would miss it")
            diffs = [(name, getattr(r, name), expected_cols[name]) for name in COLUMNS
                     if getattr(r, name) != expected_cols[name]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            problems.append(f"its sealed record is not valid ({exc})")
        out.append(_Row(r.seq, sealed_seq, prev, leaf, leaf_ok, problems, diffs, patients, studies, sealed_terms,
                        misplaced))
        if progress is not None and n % 20_000 == 0:
            progress(n, expected)
    if progress is not None:
        progress(len(out), len(out))
    out.sort(key=lambda row: row.position)
    return out


def _reconstruct_chain(rows: list[_Row], findings: list[Finding]) -> list[bytes]:
    """Pick, for each sealed sequence number, the row that belongs to the chain; classify the rest.
    Returns the leaf hashes of the sealed events in sealed order (a missing one ends the list)."""
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
            findings.append(Finding("deleted", seq, f"event #{seq} is missing (deleted)"))
            prev_leaf = None
            continue
        genuine = genuine_of[seq] = _choose(rows_for, prev_leaf, referenced)
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
        successor = genuine_of.get(seq + 1)
        what = _modification(seq, row, successor.prev if successor is not None else None)
        if what:
            findings.append(Finding("modified", seq, f"event #{seq}: " + "; ".join(what)))
    return chain


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
    covered = 0
    for b in batches:
        if b.first_seq != covered or b.last_seq < b.first_seq:
            findings.append(Finding("index", b.first_seq, f"event_batches: the batch #{b.first_seq}..#{b.last_seq} "
                                    f"does not start where the one before ended (#{covered})"))
        covered = max(covered, b.last_seq + 1)
        sealed = [rows[s].terms_of if s < len(rows) and rows[s].position == s else None
                  for s in range(b.first_seq, b.last_seq + 1)]
        members = [m for m in sealed if m is not None]
        if len(members) != len(sealed):
            continue  # a missing or unreadable event: reported by the chain check
        idx = BatchIndex(b.first_seq)
        for seq, m in enumerate(members, b.first_seq):
            idx.add(seq, *m, (), ())
        if (idx.min_time, idx.max_time) != (b.min_time_us, b.max_time_us):
            findings.append(Finding("index", b.first_seq, f"event_batches: the time range of batch #{b.first_seq}.."
                                    f"#{b.last_seq} was changed (time-range searches would miss events)"))
        for bucket, term, first_seq, blob in idx.term_rows():
            expected[(term, first_seq)] = (bucket, blob)
    if covered < len(rows):
        findings.append(Finding("index", covered, f"event_batches: events #{covered}..#{len(rows) - 1} are in no "
                                "batch (time-range searches would miss them)"))
    for t in terms:
        key = (t.term, t.first_seq)
        want = expected.pop(key, None)
        if want is None:
            findings.append(Finding("index", t.first_seq, f"event_terms: {t.term!r} is listed for batch "
                                    f"#{t.first_seq}, whose sealed events do not carry it"))
        elif (t.bucket, bytes(t.seqs)) != want:
            findings.append(Finding("index", t.first_seq, f"event_terms: the events listed for {t.term!r} in batch "
                                    f"#{t.first_seq} differ from the sealed events"))
    for term, first_seq in expected:
        findings.append(Finding("index", first_seq, f"event_terms: {term!r} is missing for batch #{first_seq} "
                                "(searches by it would miss events)"))


def _check_checkpoints(chain: list[bytes], cps: Sequence[Row[Any]], public_key: Ed25519PublicKey | None,
                       report: VerifyReport) -> None:
    """Each checkpoint's Ed25519 signature (RFC 8032) and, separately, its root against the tree
    recomputed from the stored events (RFC 9162 2.1): a forged signature and rewritten events are
    different findings."""
    report.checkpoints = len(cps)
    frontier = Frontier()
    given = keys.key_id(public_key) if public_key is not None else None
    report.key_id = given
    for cp in cps:
        signature = _signature(cp, public_key, given, report.findings)
        root_ok: bool | None = None
        if cp.tree_size > len(chain):
            report.findings.append(Finding("truncated", len(chain), f"checkpoint at size {cp.tree_size} sealed "
                                           f"{cp.tree_size} events but only {len(chain)} remain in order: events "
                                           f"#{len(chain)}..#{cp.tree_size - 1} were removed"))
        else:
            while frontier.size < cp.tree_size:
                frontier.append(chain[frontier.size])
            root_ok = frontier.root() == cp.root
            if not root_ok:
                report.findings.append(Finding("checkpoint", cp.tree_size, f"checkpoint at size {cp.tree_size}: the "
                                               "signed root differs from the tree recomputed from the stored events "
                                               "(events before it were rewritten)"))
        report.newest_checkpoint = cp.tree_size
        report.newest_checkpoint_key = cp.key_id or None
        report.newest_checkpoint_signature = signature
        report.newest_checkpoint_root_ok = root_ok
        report.newest_checkpoint_valid = signature == "valid" and root_ok is True


def _signature(cp: Row[Any], public_key: Ed25519PublicKey | None, given: str | None,
               findings: list[Finding]) -> str:
    """"valid", "invalid" (fails with the key it names), "other key" (it names another key than the one
    given, so it could not be checked) or "unchecked" (no key given); findings for all but "valid"."""
    at = f"checkpoint at size {cp.tree_size}"
    if public_key is None:
        return "unchecked"
    if keys.verify_signature(public_key, cp.signature, checkpoint_message(cp.tree_size, cp.root, cp.time_us)):
        if cp.key_id != given:
            findings.append(Finding("checkpoint", cp.tree_size, f"{at}: its signature verifies with key {given}, but "
                                    f"its key fingerprint column was changed to {cp.key_id!r}"))
        return "valid"
    if not cp.key_id:
        findings.append(Finding("checkpoint", cp.tree_size, f"{at} records no signing key fingerprint and its "
                                f"signature does not verify with key {given}: signed by another key, or forged"))
        return "invalid"
    if cp.key_id != given:
        findings.append(Finding("checkpoint", cp.tree_size, f"{at} was signed by key {cp.key_id}; the key given is "
                                f"{given}: verify with key {cp.key_id}'s public key (if that key is not yours, the "
                                "checkpoint was signed by someone else)"))
        return "other key"
    findings.append(Finding("checkpoint", cp.tree_size, f"{at}: signature INVALID with key {given}, the key it names "
                            "(the checkpoint was forged or altered)"))
    return "invalid"
