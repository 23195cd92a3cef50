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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pacsguard.atna.message.mapping import user_name_of
from pacsguard.events.model import Event

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
    from pacsguard.store.proofs import inclusion_proofs

    found = _matching(store, patient, since, until)
    checkpoints = store.checkpoints()
    newest = checkpoint or (checkpoints[-1] if checkpoints else None)
    proofs = {p.seq: p for p in inclusion_proofs(store, (seq for seq, _ in found), newest)} if newest else {}
    rows = [_row(seq, sealed, proofs.get(seq)) for seq, sealed in found]
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


def _row(seq: int, sealed: str, proof: InclusionProof | None) -> dict[str, Any]:
    row: dict[str, Any] = {"seq": seq, **row_of(_sealed_event(sealed)[1]), "sealed": sealed}
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
        signature = bytes.fromhex(signed["signature"])
        message = signed_message(report)
    except _MALFORMED as exc:
        return [f"the report's signature is unreadable ({exc})"]
    if signed.get("key_id") != keys.key_id(key):
        return [f"the report was signed by key {signed.get('key_id')}, the key given is {keys.key_id(key)}"]
    if not keys.verify_signature(key, signature, message):
        return ["the report's signature does not verify with the key given: the report was changed after it "
                "was made (a row removed or added, a field, the patient, the window or another member edited)"]
    return []


def _header(report: dict[str, Any], key: Ed25519PublicKey) -> tuple[_Header | None, list[str]]:
    """The patient, the window and the checkpoint, whose signature is checked here (RFC 9162 4.10)."""
    from pacsguard.events.model import parse_time
    from pacsguard.store import keys
    from pacsguard.store.store import checkpoint_message

    patient, cp = report.get("patient"), report.get("checkpoint")
    if not isinstance(patient, str) or not patient:
        return None, [f"the report names no patient (patient: {patient!r})"]
    if cp is None:
        return None, ["the report names no checkpoint: nothing in it is proven"]
    try:
        since, until = (window_us(None if report[k] is None else parse_time(report[k])) for k in ("since", "until"))
        size, time_us = cp["tree_size"], cp["time_us"]
        if not (_is_int(size) and _is_int(time_us)):
            raise TypeError("tree_size and time_us must be integers")
        root, signature = bytes.fromhex(cp["root"]), bytes.fromhex(cp["signature"])
        message = checkpoint_message(size, root, time_us)
    except _MALFORMED as exc:
        return None, [f"the report's checkpoint or window is unreadable ({exc!r})"]
    problems = []
    if cp.get("key_id") != keys.key_id(key):
        problems.append(f"checkpoint signed by key {cp.get('key_id')}, the key given is {keys.key_id(key)}")
    if not keys.verify_signature(key, signature, message):
        problems.append("the checkpoint's signature does not verify with the key given")
    return _Header(patient, since, until, size, root), problems


def _rows_problems(report: dict[str, Any], head: _Header) -> list[str]:
    """Each row on its own, then the rows against the report's matched and unproven lists."""
    rows, matched, unproven = report.get("events"), report.get("matched"), report.get("unproven")
    if not isinstance(rows, list) or not isinstance(matched, list) or not isinstance(unproven, list):
        return ["the report's events, matched or unproven list is missing or not a list"]
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
            path = [bytes.fromhex(h) for h in row["proof"]]
        except _MALFORMED:
            return [*out, "proof unreadable"]
        # surrogatepass: a hand-edited record may hold a lone surrogate; it then matches no leaf.
        if not verify_inclusion(seq, head.size, leaf_hash(sealed.encode("utf-8", "surrogatepass")), path, head.root):
            return [f"not included in the signed tree of {head.size} events"]  # its record is not the store's
    try:
        sealed_seq, event = _sealed_event(sealed)
        fields = row_of(event)
    except _MALFORMED as exc:  # any JSON may have been sealed, or put in the report
        return [*out, f"sealed record unreadable ({exc!r})"]
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
    loaded = json.loads(text, object_pairs_hook=_unique_members)
    if not isinstance(loaded, dict):
        raise ValueError("a report is a JSON object")
    return loaded


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
    except _MALFORMED as exc:
        return [f"the html page cannot be rendered from the report it carries ({exc!r})"]
    page = text.removesuffix("\n").removesuffix("\r")
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
    """A value for a CSV cell: text a spreadsheet would run as a formula gets a leading ``'``. The
    users, hosts and AE titles come from audit messages, which a compromised workstation writes
    (``=HYPERLINK(...)`` in a user name); the JSON report keeps every value exact."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


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
    """Text for the page: escaped, and CR and LF as character references, so the page is one line
    (an AE title "\\r=1+2" survives a reader's newline translation, and the line end can be told)."""
    return html.escape(str(value)).replace("\r", "&#13;").replace("\n", "&#10;")


def _page_parts(report: dict[str, Any]) -> list[tuple[str, str]]:
    """The page in order, each part with the name `page_problems` gives it."""
    told = verdicts(report)
    patient = _text(report["patient"])
    head = "".join(f"<th>{_text(c)}</th>" for c in ("#", *_COLUMNS, "proven", "explanation"))
    # "<" never appears in the data: no "</script>" or "<!--" can end or bend the script element.
    data = json.dumps(report).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return [
        ("title", f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Access report: {patient}</title>"
                  "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:2px 6px}"
                  "table{border-collapse:collapse}</style></head><body>"),
        ("heading", f"<h1>Who accessed patient {patient}</h1>"),
        ("summary", f"<p>{_summary(report)}</p>"),
        ("table header", f"<table><tr>{head}</tr>"),
        *((f"row of event #{_text(row['seq'])}", _html_row(row, told)) for row in listed_rows(report)),
        ("end", f"</table>{_SCRIPT_OPEN}{data}</script></body></html>"),
    ]


def _html_row(row: dict[str, Any], told: dict[int, str]) -> str:
    cells = (user_cell(row) if c == "user" else row.get(c) or "" for c in _COLUMNS)
    return ("<tr>" + f"<td>{_text(row['seq'])}</td>" + "".join(f"<td>{_text(v)}</td>" for v in cells)
            + f"<td>{'yes' if 'proof' in row else 'not yet'}</td><td>{_text(told.get(row['seq'], ''))}</td></tr>")


def _summary(report: dict[str, Any]) -> str:
    """The paragraph above the table: what was searched, what signs it, what proves the rows."""
    cp, signed, share = report["checkpoint"], report.get("signed"), share_line(report)
    unproven = len(report["unproven"])
    proven_by = (f"proven against the checkpoint of {cp['tree_size']} events, root {cp['root']}, key "
                 f"{cp['key_id']}" + (f"; {unproven} newer than it, not yet proven" if unproven else "")
                 if cp else "no checkpoint: none is proven")
    signature = (f"Signed by the store's key {_text(signed['key_id'])}." if isinstance(signed, dict) else
                 "<strong>NOT SIGNED</strong> (made without the store's signing key): "
                 "<code>audit prove</code> refuses it.")
    return (f"{len(report['events'])} events in {_text(report['store'])} named the patient "
            f"({_text(window_text(report))}) when the report was generated, {_text(report['generated'])}; "
            f"{_text(proven_by)}. {signature} "
            f"{_text(share + ', unexplained listed first. ' if share else '')}Check it offline with "
            "<code>pacsguard audit prove FILE --key STORE-KEY.pub</code>.")


def window_text(report: dict[str, Any]) -> str:
    """The report's time window in words ("from ... to before ...", "at any time")."""
    since, until = report["since"], report["until"]
    if since and until:
        return f"from {since} to before {until}"
    return f"from {since} on" if since else f"before {until}" if until else "at any time"
