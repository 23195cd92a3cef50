"""The patient access report with proofs: who accessed a patient's data, from where, what, when,
with which outcome and purpose, checked offline with only the store's public key (`prove`).

What a saved report binds, and how:

- Each listed event below the checkpoint's tree size carries its sealed record and an RFC 9162
  inclusion proof (section 2.1.3) against the newest signed checkpoint, whose Ed25519 signature
  covers the tree size and root as a signed tree head does (RFC 9162 section 4.10). Events newer
  than the checkpoint carry their sealed record without a proof.
- Every listed field is re-derived from the sealed record, which must name the report's patient
  (the store's own matching: one of its patient IDs, with or without the assigning authority) and
  lie in the report's time window.
- The report as a whole (patient, window, checkpoint, the list of matched events, every row, the
  verdicts, a witness section) is signed with the same key, over a message domain-separated from
  checkpoints and witness countersignatures: a removed row, or an edited header, fails. That
  signature is the store host's statement that these were all the matching events; the inclusion
  proofs cannot show completeness by themselves (docs/audit.md, "What `audit prove` proves").
- The html form carries the report; its visible part must be exactly what `to_html` renders from
  it, so an edit of what a reader sees fails too.
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pacsguard.atna.message.mapping import user_name_of
from pacsguard.events.model import Event
from pacsguard.hidden_characters import HIDDEN, visible

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from pacsguard.atna.explain import ExplainSettings
    from pacsguard.store import Checkpoint, EventStore
    from pacsguard.store.proofs import InclusionProof

FORMAT = "pacsguard-patient-report/v2"
#: Reports written before reports were signed: read, never proven (their header and the
#: completeness of their list were not bound).
OLD_FORMATS = ("pacsguard-patient-report/v1",)
#: The first line of every message a report signature covers. Checkpoint signatures cover
#: "pacsguard-checkpoint/v1\n..." and witness countersignatures "pacsguard-cosignature/v1\n...",
#: so a signature made for one can never be passed off as another.
SIGNED_PREFIX = b"pacsguard-patient-report/v2\n"
_SCRIPT_OPEN = '<script type="application/json" id="pacsguard-report">'
#: Exceptions a hand-edited report of any shape may raise while it is read or rendered.
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def row_of(event: Event) -> dict[str, Any]:
    """The report's fields of one event (each one is re-derived from the sealed record by `prove`)."""
    d = event.details
    purposes = [p.get("meaning") or p.get("code") for p in d.get("purposes", ())]
    event_id = d.get("event_id") or {}
    row = {
        "time": event.time.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "kind": event.kind, "what": event_id.get("meaning") or event.kind,
        "action": d.get("action"), "outcome": event.outcome,
        "user": event.actor.user, "host": event.actor.host, "ae_title": event.actor.ae_title,
        "target": event.target.label() if event.target.label() != "-" else None,
        "purpose": ", ".join(p for p in purposes if p) or None,
        "patient_ids": list(event.patient_ids), "study_uids": list(event.study_uids),
        "source": (d.get("source") or {}).get("id") or event.component,
    }
    # The user is the sealed actor's: the UserID (mapping.identity_of), or the UserName for a message
    # stored before the identity was the UserID, so reports made then still prove. The display name
    # comes beside the identity only when it is another text: then no earlier report had it.
    name = user_name_of(event)
    if name and name != event.actor.user:
        row["user_name"] = name
    if "no-requestor" in d.get("flags", ()):
        # The message named no requestor (mapping.event_of): said, not left as an empty user.
        row["no_requestor"] = True
    return row


def user_cell(row: dict[str, Any]) -> str:
    """A row's user as the table, csv and html show it: the identity, and the display name after it."""
    user, name = row.get("user") or "", row.get("user_name")
    if not user and row.get("no_requestor"):
        return "(no requestor named)"
    return f"{user} ({name})" if name else str(user)


def names_patient(event: Event, patient: str) -> bool:
    """The store's patient matching (store/search.py): the ID is one of the event's patient IDs,
    which hold the bare ID, ID^^^AUTHORITY and the full CX (atna/message/patient.py)."""
    return patient in event.patient_ids


def window_us(when: datetime | None) -> int | None:
    """A window bound as the store's search compares it (store/search.py `bound_us`)."""
    from pacsguard.store.search import bound_us

    return None if when is None else bound_us(when)


def patient_report(store: EventStore, patient: str, since: datetime | None = None,
                   until: datetime | None = None, checkpoint: Checkpoint | None = None,
                   explain: ExplainSettings | None = None, key: Ed25519PrivateKey | None = None) -> dict[str, Any]:
    """Every event naming ``patient`` (with or without its assigning authority), oldest first, proven
    against ``checkpoint`` (default: the newest signed one, RFC 9162 2.1.3); with ``explain``, the
    verdict on each access (atna/explain.py: the share explained, the unexplained first). The
    verdicts are judged when the report is made: `prove` checks the events they rest on and that
    the report was signed as made, not the judgement. With ``key`` (the key that signed the
    checkpoint) the report is signed (`sign_report`); add any further member before signing."""
    from pacsguard.store.proofs import inclusion_proofs, stored_leaves

    found = _matching(store, patient, since, until)
    checkpoints = store.checkpoints()
    newest = checkpoint or (checkpoints[-1] if checkpoints else None)
    proofs = {p.seq: p for p in inclusion_proofs(store, (seq for seq, _ in found), newest)} if newest else {}
    # Events newer than the checkpoint have no proof: their records are held to their stored leaves.
    leaves = stored_leaves(store, (seq for seq, _ in found if seq not in proofs))
    rows: list[dict[str, Any]] = []
    damage: list[str] = []
    for seq, sealed in found:
        event, why = _checked(seq, sealed, proofs.get(seq), newest, leaves.get(seq), patient,
                              (window_us(since), window_us(until)))
        if why is not None:
            damage.append(f"event #{seq}: {why}")
        elif not damage:
            rows.append(_row(seq, event, sealed, proofs.get(seq)))
    if damage:
        # A report lists only what `prove` will find proven as listed: an event whose record is
        # not the one the tree holds would be signed as "proven" (an outside tester saw it), so no
        # report is made of a damaged store (docs/audit.md; exit 2, as a search meeting damage).
        more = f" and {len(damage) - _DAMAGE_SHOWN} more events" if len(damage) > _DAMAGE_SHOWN else ""
        raise _damaged(store, f"{'; '.join(damage[:_DAMAGE_SHOWN])}{more}")
    report: dict[str, Any] = {
        "format": FORMAT, "patient": patient, "store": store.name,
        "generated": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
        "checkpoint": None if newest is None else {
            "tree_size": newest.tree_size, "root": newest.root.hex(), "time_us": newest.time_us,
            "key_id": newest.key_id, "signature": newest.signature.hex()},
        "matched": [seq for seq, _ in found],
        "events": rows,
        "unproven": [r["seq"] for r in rows if "proof" not in r],
    }
    if explain is not None:
        from pacsguard.atna.explain import explain_patient, summary

        report["explanations"] = summary(explain_patient(store, patient, since, until, explain))
    return report if key is None else sign_report(report, key)


def _matching(store: EventStore, patient: str, since: datetime | None,
              until: datetime | None) -> list[tuple[int, str]]:
    """(seq, sealed record) of every event the store's search finds for the patient, oldest first:
    the exact stored text, which the proofs and `prove` hash."""
    from pacsguard.store import EventQuery
    from pacsguard.store.search import select_events

    with store.engine.connect() as conn:
        return list(select_events(conn, EventQuery(patient=patient, since=since, until=until, limit=None)))


#: Damaged events a refused report names, at most.
_DAMAGE_SHOWN = 5
#: Why an event whose record does not hash to the tree's leaf is not listed.
_EDITED = "its sealed record is not the one the tree holds: the store was edited"


def _checked(seq: int, sealed: str, proof: InclusionProof | None, checkpoint: Checkpoint | None,
             stored_leaf: bytes | None, patient: str, window: tuple[int | None, int | None]) -> tuple[Any, str | None]:
    """The event of a sealed record the search found for the report, and why it cannot be listed
    (None when it can): what `prove` checks of the row, checked before the report is signed. Its
    proof must verify against the checkpoint's root with the leaf hash of the record as the report
    carries it (RFC 9162 2.1.3.2, as `prove` does); an event without a proof (newer than the
    checkpoint) must hash to its stored leaf. The record must be event ``seq``, name the patient
    and lie in the window (the index columns the search matched are copies, which an edit can part
    from the record). The reasons name the event, never its contents."""
    from pacsguard.store.merkle import leaf_hash, verify_inclusion

    leaf = leaf_hash(sealed.encode("utf-8", "surrogatepass"))
    if proof is not None and checkpoint is not None:
        if not verify_inclusion(seq, checkpoint.tree_size, leaf, list(proof.path), checkpoint.root):
            return None, f"{_EDITED} (its inclusion proof does not verify against the checkpoint of " \
                         f"{checkpoint.tree_size} events)"
    elif stored_leaf is None or leaf != stored_leaf:
        return None, f"{_EDITED} (it does not hash to its stored leaf)"
    try:
        sealed_seq, event = _sealed_event(sealed)
    except _MALFORMED as exc:
        return None, f"its sealed record does not decode ({type(exc).__name__})"
    if sealed_seq != seq:
        return None, f"its sealed record is event #{_shown_seq(sealed_seq)}"
    if not names_patient(event, patient):
        return None, "its sealed record does not name the patient, the patient index does"
    since_us, until_us = window
    if (since_us is not None and event.time_us < since_us) or (until_us is not None and event.time_us >= until_us):
        return None, "its sealed record's time is outside the window, its time column is in it"
    return event, None


def _shown_seq(value: object) -> str:
    return str(value) if isinstance(value, int) else type(value).__name__


def _damaged(store: EventStore, what: str) -> Exception:
    """The store's search's error for a damaged store (store/search.py `damaged`), naming the events."""
    from pacsguard.store.errors import StoreError

    return StoreError(f"{store.name}: the store is damaged: {what}; run `pacsguard audit verify` to see what "
                      "else is, and restore a backup")


def _row(seq: int, event: Event, sealed: str, proof: InclusionProof | None) -> dict[str, Any]:
    row: dict[str, Any] = {"seq": seq, **row_of(event), "sealed": sealed}
    if proof is not None:
        row["proof"] = [h.hex() for h in proof.path]
    return row


def _sealed_event(sealed: str) -> tuple[Any, Event]:
    """The seq a sealed record names and its event; any of `_MALFORMED` for a record that is not one."""
    envelope = json.loads(sealed)
    return envelope.get("seq"), Event.from_dict(envelope["event"])


def signed_message(report: dict[str, Any]) -> bytes:
    """What a report's Ed25519 signature (RFC 8032) covers: SIGNED_PREFIX, then the hex SHA-256 of
    the report without its `signed` member as JSON with sorted keys, no white space and non-ASCII
    as \\u escapes (Python's ``json.dumps(sort_keys=True, separators=(",", ":"))``). Hashing the
    parsed report, not the file's bytes, lets the json be re-indented and the html carry it."""
    digest = hashlib.sha256()
    for piece in _signed_text({k: v for k, v in report.items() if k != "signed"}):
        digest.update(piece.encode())
    return SIGNED_PREFIX + digest.hexdigest().encode() + b"\n"


def _signed_text(body: dict[str, Any]) -> Iterator[str]:
    """The text `signed_message` hashes, piece by piece: each member, and each listed event on its
    own. Joined, the pieces are exactly ``json.dumps(body, sort_keys=True, separators=(",", ":"),
    ensure_ascii=True, allow_nan=False)``; made at once, that text is as large as the report (a
    gigabyte for 200,000 events, beside the report itself)."""
    def dump(value: object) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)

    yield "{"
    for n, name in enumerate(sorted(body)):
        value = body[name]
        yield ("," if n else "") + dump(name) + ":"
        if name == "events" and isinstance(value, list):
            yield "["
            for i, row in enumerate(value):
                yield ("," if i else "") + dump(row)
            yield "]"
        else:
            yield dump(value)
    yield "}"


def sign_report(report: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """Sign ``report`` in place with the store's checkpoint key (the one that signed its checkpoint,
    so `prove` needs one public key) and return it."""
    from pacsguard.store import keys

    report.pop("signed", None)
    report["signed"] = {"key_id": keys.key_id(key.public_key()), "signature": key.sign(signed_message(report)).hex()}
    return report


def verdicts(report: dict[str, Any]) -> dict[int, str]:
    """seq -> the template that explains the access and its evidence ("order-names-user (#12)"), or
    "UNEXPLAINED" (accesses only)."""
    listed = (report.get("explanations") or {}).get("list", ())
    return {v["seq"]: f"{v['template']} (#{v['evidence']})" if v["template"] else "UNEXPLAINED" for v in listed}


def listed_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The events as a report lists them: unexplained accesses first, then explained ones, then the
    other events, each group oldest first."""
    told = verdicts(report)
    def rank(row: dict[str, Any]) -> tuple[int, int]:
        verdict = told.get(row["seq"])
        return (2 if verdict is None else 0 if verdict == "UNEXPLAINED" else 1), row["seq"]

    return sorted(report["events"], key=rank)


def share_line(report: dict[str, Any]) -> str:
    """"17 of 18 accesses explained (94.4%)", or "" when the report judged none."""
    ex = report.get("explanations")
    if not ex or not ex["accesses"]:
        return ""
    return f"{ex['explained']} of {ex['accesses']} accesses explained ({100 * ex['share']:.1f}%)"


# --- proving a saved report -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Header:
    """What every row is checked against: the report's patient and window, the signed tree head."""

    patient: str
    since_us: int | None
    until_us: int | None
    size: int
    root: bytes


def prove(report: dict[str, Any], key: Ed25519PublicKey) -> list[str]:
    """Every reason the report does not hold, checked with the public key alone; empty when it holds.
    Events below the checkpoint's tree size must be proven (RFC 9162 2.1.3.2); newer ones are
    listed unproven, and checked against the sealed record the report carries for them."""
    if not isinstance(report, dict):
        return [f"not a patient report ({FORMAT})"]
    if report.get("format") in OLD_FORMATS:
        return [f"the report predates the format {FORMAT} (it is {report['format']}): its header and the "
                "completeness of its list were not signed, so it cannot be proven; make it again with "
                "`pacsguard audit patient`"]
    if report.get("format") != FORMAT:
        return [f"not a patient report ({FORMAT})"]
    problems = _signature_problems(report, key)
    header, found = _header(report, key)
    problems += found
    if header is not None:
        problems += _rows_problems(report, header)
    return problems


def _signature_problems(report: dict[str, Any], key: Ed25519PublicKey) -> list[str]:
    """The report's own signature: it binds the header and the list (completeness, as stated)."""
    from pacsguard.store import keys

    signed = report.get("signed")
    if signed is None:
        return ["the report is not signed (made without the store's signing key at hand; `audit patient "
                "--key`): its header and the completeness of its list are not proven"]
    try:
        signed = _object_at(signed, "signed")
        signature = _hex_at(signed, "signature", "signed", _SIGNATURE_BYTES)
        key_id = _text_at(signed, "key_id", "signed")
    except _Unfit as exc:
        return [f"{exc}; the report's signature cannot be checked"]
    try:
        message = signed_message(report)
    except ValueError:  # json.dumps(allow_nan=False): NaN or Infinity, which no JSON text holds
        return [f"{_non_json(report)}; the report's signature cannot be checked (it covers the report as JSON)"]
    if key_id != keys.key_id(key):
        return [f"the report was signed by key {key_id}, the key given is {keys.key_id(key)}"]
    if not keys.verify_signature(key, signature, message):
        return ["the report's signature does not verify with the key given: the report was changed after it "
                "was made (a row removed or added, a field, the patient, the window or another member edited)"]
    return []


def _header(report: dict[str, Any], key: Ed25519PublicKey) -> tuple[_Header | None, list[str]]:
    """The patient, the window and the checkpoint, whose signature is checked here (RFC 9162 4.10)."""
    from pacsguard.store import keys
    from pacsguard.store.store import checkpoint_message

    patient, cp = report.get("patient"), report.get("checkpoint")
    if not isinstance(patient, str) or not patient:
        said = "missing" if "patient" not in report else "empty" if patient == "" else _what(patient)
        return None, [f"the report names no patient (patient: {said})"]
    if cp is None:
        return None, ["the report names no checkpoint: nothing in it is proven"]
    try:
        since, until = _bound_at(report, "since"), _bound_at(report, "until")
        cp = _object_at(cp, "checkpoint")
        size = _integer_at(cp, "tree_size", "checkpoint", minimum=0)
        root = _hex_at(cp, "root", "checkpoint", _HASH_BYTES)
        time_us = _integer_at(cp, "time_us", "checkpoint")
        key_id = _text_at(cp, "key_id", "checkpoint")
        signature = _hex_at(cp, "signature", "checkpoint", _SIGNATURE_BYTES)
    except _Unfit as exc:
        return None, [str(exc)]
    problems = []
    if key_id != keys.key_id(key):
        problems.append(f"checkpoint signed by key {key_id}, the key given is {keys.key_id(key)}")
    if not keys.verify_signature(key, signature, checkpoint_message(size, root, time_us)):
        problems.append("the checkpoint's signature does not verify with the key given")
    return _Header(patient, since, until, size, root), problems


def _rows_problems(report: dict[str, Any], head: _Header) -> list[str]:
    """Each row on its own, then the rows against the report's matched and unproven lists."""
    rows, matched, unproven = report.get("events"), report.get("matched"), report.get("unproven")
    if not isinstance(rows, list) or not isinstance(matched, list) or not isinstance(unproven, list):
        return [f"{name}: {'missing' if name not in report else _what(report[name]) + ', not an array'}"
                f" ({what})" for name, what in _LISTS.items() if not isinstance(report.get(name), list)]
    problems: list[str] = []
    seqs: list[int] = []
    without_proof: list[int] = []
    for number, row in enumerate(rows, 1):
        seq = _seq_of(row)
        if seq is None:
            problems.append(f"listed event {number}: not an event (an object with its seq)")
            continue
        if seqs and seq <= seqs[-1]:
            problems.append(f"event #{seq}: listed after event #{seqs[-1]}; a report lists each event once, "
                            "oldest first")
        seqs.append(seq)
        if "proof" not in row:
            without_proof.append(seq)
        problems += [f"event #{seq}: {p}" for p in _event_problems(row, seq, head)]
    return problems + _list_problems(seqs, without_proof, matched, unproven)


#: The report's lists, and what each holds.
_LISTS = {"events": "the listed events", "matched": "the numbers of the events that matched",
          "unproven": "the numbers of the events listed without a proof"}


def _event_problems(row: dict[str, Any], seq: int, head: _Header) -> list[str]:
    """One row: its inclusion proof when it is below the tree size, then its sealed record's seq,
    fields, patient and time (for an unproven row too: all of that is checkable without a proof)."""
    from pacsguard.store.merkle import leaf_hash, verify_inclusion

    sealed = row.get("sealed")
    if not isinstance(sealed, str):
        return ["no sealed record"]
    out = []
    if seq < head.size and "proof" not in row:
        out.append(f"no inclusion proof, though it is below the checkpoint's tree size {head.size} (only "
                   "events newer than the checkpoint may be unproven)")
    elif "proof" in row:
        try:
            path = _proof_at(row)
        except _Unfit as exc:
            return [*out, str(exc)]
        # surrogatepass: a hand-edited record may hold a lone surrogate; it then matches no leaf.
        if not verify_inclusion(seq, head.size, leaf_hash(sealed.encode("utf-8", "surrogatepass")), path, head.root):
            return [f"not included in the signed tree of {head.size} events"]  # its record is not the store's
    try:
        sealed_seq, event, fields = _read_sealed(sealed)
    except _Unfit as exc:  # any JSON may have been sealed, or put in the report
        return [*out, str(exc)]
    if sealed_seq != seq:
        out.append(f"the sealed record is event #{sealed_seq}")
    listed = {k: v for k, v in row.items() if k not in ("seq", "sealed", "proof")}
    if listed != fields:
        changed = sorted(k for k in {*fields, *listed} if listed.get(k) != fields.get(k))
        out.append(f"listed fields differ from the sealed record: {', '.join(changed)}")
    if not names_patient(event, head.patient):
        out.append(f"the sealed record names patient {', '.join(event.patient_ids) or 'none'}, not the report's "
                   f"patient {head.patient}")
    if (head.since_us is not None and event.time_us < head.since_us) or (
            head.until_us is not None and event.time_us >= head.until_us):
        out.append(f"its time {fields['time']} is outside the report's window")
    return out


def _list_problems(seqs: list[int], without_proof: list[int], matched: list[Any], unproven: list[Any]) -> list[str]:
    """The rows against the signed statement of what matched, and the unproven list."""
    problems = []
    if not all(_is_int(m) for m in matched):
        problems.append("the report's matched list holds something other than event numbers")
    listed, stated = set(seqs), {m for m in matched if _is_int(m)}
    problems += [f"event #{s}: matched (the report's list of matched events), but its row is missing"
                 for s in sorted(stated - listed)]
    problems += [f"event #{s}: listed, but not among the report's matched events" for s in sorted(listed - stated)]
    if unproven != without_proof:
        problems.append(f"the report's unproven list {_short(unproven)} is not its events without a proof "
                        f"{_short(without_proof)}")
    return problems


def _seq_of(row: object) -> int | None:
    seq = row.get("seq") if isinstance(row, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0 else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(values: Iterable[Any]) -> str:
    listed = list(values)
    return str(listed) if len(listed) <= 8 else f"{str(listed[:8])[:-1]}, ... ({len(listed)} in all)]"


# --- reading a saved report's members, each by its type --------------------------------------------

#: SHA-256 (RFC 9162 2.1.1): a tree root and each hash of an inclusion proof.
_HASH_BYTES = 32
#: Ed25519 (RFC 8032 5.1.6): a checkpoint's and a report's signature.
_SIGNATURE_BYTES = 64
#: What a listed event's sealed record holds in its `event` member, and of which JSON type.
_EVENT_TEXTS = ("id", "time", "kind", "component", "outcome")


class _Unfit(ValueError):
    """A member of a saved report that is not what `audit patient` writes there. Its text names the
    member by its path (``checkpoint.tree_size``, ``proof[2]``) and says, in JSON's words, what it
    holds instead."""


def _what(value: object) -> str:
    """A JSON value in plain words, for a reason: its type, with the value when it is short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{_non_finite(value)}, which is not a number JSON allows"
    if isinstance(value, int | float):
        text = str(value) if isinstance(value, float) or value.bit_length() < 200 else "of more than 60 digits"
        return f"the number {text}"
    if isinstance(value, str):
        return f"the string {json.dumps(value[:40])}{'...' if len(value) > 40 else ''}"
    if isinstance(value, list):
        return f"an array of {len(value)}" if value else "an empty array"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}, which is not JSON"  # only a report built in Python, not one read


def _non_finite(value: float) -> str:
    """How JavaScript (and Python's JSON reader) writes a value no JSON text holds (RFC 8259 section 6)."""
    return "NaN" if value != value else "Infinity" if value > 0 else "-Infinity"


def _join(parent: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{parent}[{name}]"
    if not name.isidentifier():  # "user name", "a.b": a path a reader can still tell apart
        name = json.dumps(name)
    return f"{parent}.{name}" if parent else name


def _member(obj: dict[str, Any], name: str, parent: str) -> tuple[Any, str]:
    """A member of ``obj`` (at ``parent``) and its path; _Unfit when it is missing or no JSON number."""
    path = _join(parent, name)
    if name not in obj:
        raise _Unfit(f"{path}: missing")
    return _finite(obj[name], path), path


def _finite(value: Any, path: str) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        raise _Unfit(f"{path}: {_non_finite(value)} is not a number JSON allows")
    return value


def _object_at(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Unfit(f"{path}: {_what(value)}, not an object")
    return value


def _integer_at(obj: dict[str, Any], name: str, parent: str, minimum: int | None = None) -> int:
    value, path = _member(obj, name, parent)
    if not _is_int(value):
        raise _Unfit(f"{path}: {_what(value)}, not a whole number")
    if minimum is not None and value < minimum:
        raise _Unfit(f"{path}: {_what(value)}, less than {minimum}")
    return int(value)


def _text_at(obj: dict[str, Any], name: str, parent: str) -> str:
    value, path = _member(obj, name, parent)
    if not isinstance(value, str):
        raise _Unfit(f"{path}: {_what(value)}, not a string")
    return value


def _hex_at(obj: dict[str, Any], name: str, parent: str, size: int) -> bytes:
    value, path = _member(obj, name, parent)
    return _hex(value, path, size)


def _hex(value: Any, path: str, size: int) -> bytes:
    """``size`` bytes written as 2 * ``size`` hex digits, as `audit patient` writes a hash or signature."""
    value = _finite(value, path)
    if not isinstance(value, str):
        raise _Unfit(f"{path}: {_what(value)}, not {2 * size} hex digits")
    try:
        # fromhex skips white space: the length of what it gives tells "aa bb" from 2 * size digits.
        found = bytes.fromhex(value) if len(value) == 2 * size else b""
    except ValueError:
        found = b""
    if len(found) != size:
        raise _Unfit(f"{path}: {_what(value)} is not {2 * size} hex digits")
    return found


def _bound_at(report: dict[str, Any], name: str) -> int | None:
    """The report's ``since`` or ``until`` as the store's search compares it; None for no bound."""
    from pacsguard.events.model import parse_time

    value, path = _member(report, name, "")
    if value is None:
        return None
    if not isinstance(value, str):
        raise _Unfit(f"{path}: {_what(value)}, not a time (ISO 8601) or null")
    try:
        return window_us(parse_time(value))
    except ValueError:
        raise _Unfit(f"{path}: {_what(value)} is not an ISO 8601 time in the years 1-9999") from None


def _proof_at(row: dict[str, Any]) -> list[bytes]:
    """A row's inclusion proof: an array of hashes (RFC 9162 2.1.3.1), each as hex digits."""
    value = _finite(row["proof"], "proof")
    if not isinstance(value, list):
        raise _Unfit(f"proof: {_what(value)}, not an array of hashes")
    return [_hex(h, f"proof[{n}]", _HASH_BYTES) for n, h in enumerate(value)]


def _read_sealed(sealed: str) -> tuple[Any, Event, dict[str, Any]]:
    """The seq a row's sealed record names, its event and the fields a report lists of it; _Unfit,
    naming the member (``sealed.event.time``), for a record that is not one the store seals."""
    from pacsguard.events.model import Outcome, Severity, parse_time

    try:
        envelope = json.loads(sealed)
    except RecursionError:
        raise _Unfit("sealed: its JSON is nested deeper than pacsguard reads") from None
    except json.JSONDecodeError as exc:
        raise _Unfit(f"sealed: not JSON ({exc.msg} at character {exc.pos})") from None
    except ValueError:  # the only other: an integer beyond Python's limit on digits
        raise _Unfit(f"sealed: it holds a number too long to read (more than {sys.get_int_max_str_digits():,} "
                     "digits)") from None
    envelope = _object_at(envelope, "sealed")
    event = _object_at(_member(envelope, "event", "sealed")[0], "sealed.event")
    for name in _EVENT_TEXTS:
        _text_at(event, name, "sealed.event")
    if event["outcome"] not in Outcome.ALL:
        raise _Unfit(f"sealed.event.outcome: {_what(event['outcome'])}, not an outcome "
                     f"({', '.join(sorted(Outcome.ALL))})")
    severity, _ = _member(event, "severity", "sealed.event")
    if not (isinstance(severity, str) and severity.strip().upper() in Severity.__members__):
        raise _Unfit(f"sealed.event.severity: {_what(severity)}, not a severity "
                     f"({', '.join(s.name.lower() for s in Severity)})")
    for name, kind in (("actor", dict), ("target", dict), ("patient_ids", list), ("study_uids", list),
                       ("details", dict)):
        value = _finite(event.get(name), f"sealed.event.{name}")
        if value is not None and not isinstance(value, kind):
            raise _Unfit(f"sealed.event.{name}: {_what(value)}, not {'an object' if kind is dict else 'an array'}")
    for name in ("patient_ids", "study_uids"):
        for n, item in enumerate(event.get(name) or ()):
            if not isinstance(item, str):
                raise _Unfit(f"sealed.event.{name}[{n}]: {_what(item)}, not a string")
    if "sop_instance_count" in event and not _is_int(event["sop_instance_count"]):
        raise _Unfit(f"sealed.event.sop_instance_count: {_what(event['sop_instance_count'])}, not a whole number")
    try:
        parse_time(event["time"])
    except ValueError:
        raise _Unfit(f"sealed.event.time: {_what(event['time'])} is not an ISO 8601 time in the years "
                     "1-9999") from None
    try:
        parsed = Event.from_dict(event)
        return envelope.get("seq"), parsed, row_of(parsed)
    except _MALFORMED:
        # The members above are of their types; a deeper one (a party's user, a detail's code) is not.
        raise _Unfit("sealed.event: a member deeper in it (in actor, target or details) is not of the type "
                     "pacsguard seals; the listed fields cannot be derived from it") from None


def _non_json(report: dict[str, Any]) -> str:
    """Where the report holds a value no JSON text has (NaN, Infinity), and which, as a reason: the
    json form's signature covers the report as JSON (`signed_message`)."""
    for path, value in _walk(report):
        if isinstance(value, float) and not math.isfinite(value):
            return f"{path}: {_non_finite(value)} is not a number JSON allows"
        if isinstance(value, int) and value.bit_length() > 10_000:  # 3,010 digits; Python writes 4,300 at most
            try:
                str(value)
            except ValueError:
                return f"{path}: a number too long to write (more than {sys.get_int_max_str_digits():,} digits)"
    return "the report holds a value JSON does not have"


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every value in a report with its path, in document order (not recursive: any depth is read)."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        path, value = stack.pop()
        yield path, value
        if isinstance(value, dict):
            stack.extend((_join(path, k), v) for k, v in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend((_join(path, n), v) for n, v in reversed(list(enumerate(value))))

# --- saved forms --------------------------------------------------------------------------------


def decode_report(raw: bytes) -> str:
    """A saved report's text. `audit patient` writes UTF-8 (the json form's encoding, RFC 8259
    section 8.1); a UTF-8 byte order mark is dropped, as a JSON reader may (an editor that
    re-indents the json may put one first). Anything else is a ValueError that says what the file
    holds instead: a report re-saved as UTF-16 (Windows "Unicode") is named so, not as a codec
    error, so the administrator knows to convert it back."""
    for marks, name in ((_UTF32_MARKS, "UTF-32"), (_UTF16_MARKS, "UTF-16")):  # UTF-32LE's starts as UTF-16LE's
        mark = next((m for m in marks if raw.startswith(m)), None)
        if mark is not None:
            raise ValueError(f"{name} text, byte order mark {mark.hex(' ').upper()}; a saved report is UTF-8, as "
                             f"`audit patient` writes it: convert it back (iconv -f {name} -t UTF-8)")
    if b"\x00" in raw[:64]:
        # ASCII in UTF-16 or UTF-32 without a mark is half NUL bytes, valid UTF-8 all the same;
        # neither form holds one (RFC 8259 section 7 escapes control characters; HTML forbids it).
        raise ValueError(f"a NUL byte at offset {raw.index(0)}: UTF-16 or UTF-32 text without a byte order mark, "
                         "or no text at all; a saved report is UTF-8, as `audit patient` writes it")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); a saved report is "
                         "UTF-8, as `audit patient` writes it") from None


#: Byte order marks (The Unicode Standard, 23.8, "Specials": U+FEFF in each encoding form).
_UTF32_MARKS = (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")
_UTF16_MARKS = (b"\xff\xfe", b"\xfe\xff")


def load_report(text: str) -> dict[str, Any]:
    """A saved report: its JSON, or the HTML form (which carries the JSON). ValueError when it is
    neither (naming what it is: empty, JSON of another shape), or names a member twice (two
    readers could then see two reports)."""
    if _is_page(text):
        start, end = text.find(_SCRIPT_OPEN), text.find("</script>", text.find(_SCRIPT_OPEN))
        if start < 0 or end < 0:
            raise ValueError(_not_a_page(text))
        text = text[start + len(_SCRIPT_OPEN):end]  # v1 wrote "<\/": JSON reads it as "</"
    too_long: list[_LongNumber] = []

    def number(digits: str) -> int | _LongNumber:
        try:
            return int(digits)
        except ValueError:  # the only one for JSON's digits: more than sys.get_int_max_str_digits()
            too_long.append(_LongNumber(len(digits.lstrip("-"))))
            return too_long[-1]

    loaded = json.loads(text, object_pairs_hook=_unique_members, parse_int=number)
    if not isinstance(loaded, dict):
        raise ValueError("a report is a JSON object")
    if too_long:
        raise ValueError(f"{_path_of(loaded, too_long[0])}: a number of {too_long[0].digits:,} digits, longer than "
                         f"the {sys.get_int_max_str_digits():,} pacsguard reads; `audit patient` writes none")
    return loaded


@dataclass(frozen=True, slots=True, eq=False)
class _LongNumber:
    """Where `load_report` met an integer of more digits than Python converts (CVE-2020-10735)."""

    digits: int


def _path_of(report: dict[str, Any], wanted: object) -> str:
    """The path (``checkpoint.tree_size``, ``events[3].seq``) of the value that is ``wanted`` itself."""
    return next((path for path, value in _walk(report) if value is wanted), "the report")


def _not_a_page(text: str) -> str:
    """What a text that is neither form is, for the ValueError: valid JSON of another shape (an
    array, a string: RFC 8259 section 3) is said to be that, not "no html page"."""
    if not text.strip():
        return "the file is empty"
    try:
        value = json.loads(text)
    except ValueError:
        return "neither a json report nor an html page that carries one"
    kind = ("an array" if isinstance(value, list) else "a string" if isinstance(value, str) else
            f"the literal {json.dumps(value)}" if value is None or isinstance(value, bool) else "a number")
    return f"valid JSON, but {kind}: a report is a JSON object (the json form of `audit patient`)"


def _is_page(text: str) -> bool:
    """The html form, told by how it starts: the json form may hold the script tag in a value (a
    user name a sender chose)."""
    return not text.lstrip().startswith("{")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    if len(set(names)) != len(names):
        raise ValueError(f"member {next(n for n in names if names.count(n) > 1)!r} given twice")
    return dict(pairs)


def page_problems(text: str, report: dict[str, Any]) -> list[str]:
    """For the html form: the page must be exactly what `to_html` renders from the report it carries
    (its line end aside), so no edit of what a reader sees goes unnoticed; [] for the json form, and
    for a report of another format (`prove` names that)."""
    if not _is_page(text) or report.get("format") != FORMAT:
        return []
    try:
        parts = _page_parts(report)
        # A page saved before the hidden characters were shown showed them as they are: the same
        # report, rendered as it was then, still proves (only a page with such a character differs).
        earlier = _page_parts(report, _earlier_text) if HIDDEN.search(text) else None
    except _MALFORMED:
        # Rendering reads members as `audit patient` writes them; `prove` names the one that is not.
        return ["the html page cannot be rendered from the report it carries: a member it shows is not of the type "
                "`audit patient` writes"]
    page = text.removesuffix("\n").removesuffix("\r")
    problems = _page_differs(page, parts)
    if problems and earlier is not None and not _page_differs(page, earlier):
        return []
    return problems


def _page_differs(page: str, parts: list[tuple[str, str]]) -> list[str]:
    """Why ``page`` is not the rendered ``parts`` ([] when it is)."""
    at = 0
    for what, part in parts:
        if not page.startswith(part, at):
            return [f"the html page's {what} is not what the report it carries shows: the page or the report in "
                    f"it was edited ({_difference(page, part, at)})"]
        at += len(part)
    if at != len(page):
        return [f"the html page goes on after the report it carries ({page[at:at + 40]!r})"]
    return []


def _difference(page: str, part: str, at: int) -> str:
    """Where the page leaves the rendered part, with a little text around it."""
    i = next((j for j, c in enumerate(part) if at + j >= len(page) or page[at + j] != c), len(part))
    lo = max(0, i - 24)
    return f"the page has {page[at + lo:at + i + 40]!r} where the report renders {part[lo:i + 40]!r}"


_COLUMNS = ("time", "what", "action", "outcome", "user", "host", "ae_title", "target", "purpose", "source")


#: What a spreadsheet reads as the start of a formula (OWASP, "CSV Injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> object:
    """A value for a CSV cell: text a spreadsheet would run as a formula gets a leading ``'``, and
    characters a spreadsheet shows as nothing or that reorder the cell (HIDDEN: "\\u202enimda"
    reads "admin") are shown as ``<U+XXXX>``, as the html form shows them. The users, hosts and AE
    titles come from audit messages, which a compromised workstation writes (``=HYPERLINK(...)`` in
    a user name); the JSON report keeps every value exact."""
    if not isinstance(value, str):
        return value
    value = visible(value)
    return "'" + value if value.startswith(_FORMULA_START) else value


def to_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    told = verdicts(report)
    writer.writerow(["seq", *_COLUMNS, "proven", "explanation"])
    for row in listed_rows(report):
        writer.writerow([row["seq"], *(_cell(user_cell(row) if c == "user" else row.get(c) or "") for c in _COLUMNS),
                         "yes" if "proof" in row else "no", told.get(row["seq"], "")])
    return out.getvalue()


def to_html(report: dict[str, Any]) -> str:
    """A page for the privacy officer; the JSON report rides along, and `prove` checks that the page
    shows exactly what it renders from it."""
    return "".join(part for _, part in _page_parts(report)) + "\n"


def _text(value: object) -> str:
    """Text for the page: its hidden characters shown (`visible`), escaped, and CR and LF as
    character references, so the page is one line (an AE title "\\r=1+2" survives a reader's
    newline translation, and the line end can be told)."""
    return html.escape(visible(str(value))).replace("\r", "&#13;").replace("\n", "&#10;")


def _earlier_text(value: object) -> str:
    """`_text` as pages were rendered before the hidden characters were shown."""
    return html.escape(str(value)).replace("\r", "&#13;").replace("\n", "&#10;")


def _page_parts(report: dict[str, Any], text: Callable[[object], str] = _text) -> list[tuple[str, str]]:
    """The page in order, each part with the name `page_problems` gives it, its values shown by ``text``."""
    told = verdicts(report)
    patient = text(report["patient"])
    head = "".join(f"<th>{text(c)}</th>" for c in ("#", *_COLUMNS, "proven", "explanation"))
    # "<" never appears in the data: no "</script>" or "<!--" can end or bend the script element.
    data = json.dumps(report).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return [
        ("title", f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Access report: {patient}</title>"
                  "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:2px 6px}"
                  "table{border-collapse:collapse}</style></head><body>"),
        ("heading", f"<h1>Who accessed patient {patient}</h1>"),
        ("summary", f"<p>{_summary(report, text)}</p>"),
        ("table header", f"<table><tr>{head}</tr>"),
        *((f"row of event #{_text(row['seq'])}", _html_row(row, told, text)) for row in listed_rows(report)),
        ("end", f"</table>{_SCRIPT_OPEN}{data}</script></body></html>"),
    ]


def _html_row(row: dict[str, Any], told: dict[int, str], text: Callable[[object], str]) -> str:
    cells = (user_cell(row) if c == "user" else row.get(c) or "" for c in _COLUMNS)
    return ("<tr>" + f"<td>{text(row['seq'])}</td>" + "".join(f"<td>{text(v)}</td>" for v in cells)
            + f"<td>{'yes' if 'proof' in row else 'not yet'}</td><td>{text(told.get(row['seq'], ''))}</td></tr>")


def _summary(report: dict[str, Any], text: Callable[[object], str]) -> str:
    """The paragraph above the table: what was searched, what signs it, what proves the rows."""
    cp, signed, share = report["checkpoint"], report.get("signed"), share_line(report)
    unproven = len(report["unproven"])
    proven_by = (f"proven against the checkpoint of {cp['tree_size']} events, root {cp['root']}, key "
                 f"{cp['key_id']}" + (f"; {unproven} newer than it, not yet proven" if unproven else "")
                 if cp else "no checkpoint: none is proven")
    signature = (f"Signed by the store's key {text(signed['key_id'])}." if isinstance(signed, dict) else
                 "<strong>NOT SIGNED</strong> (made without the store's signing key): "
                 "<code>audit prove</code> refuses it.")
    return (f"{len(report['events'])} events in {text(report['store'])} named the patient "
            f"({text(window_text(report))}) when the report was generated, {text(report['generated'])}; "
            f"{text(proven_by)}. {signature} "
            f"{text(share + ', unexplained listed first. ' if share else '')}Check it offline with "
            "<code>pacsguard audit prove FILE --key STORE-KEY.pub</code>.")


def window_text(report: dict[str, Any]) -> str:
    """The report's time window in words ("from ... to before ...", "at any time")."""
    since, until = report["since"], report["until"]
    if since and until:
        return f"from {since} to before {until}"
    return f"from {since} on" if since else f"before {until}" if until else "at any time"
