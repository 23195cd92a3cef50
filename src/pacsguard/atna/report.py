"""The patient access report with proofs: who accessed a patient's data, from where, what, when,
with which outcome and purpose; each listed event with an RFC 9162 inclusion proof (section 2.1.3)
against the newest signed checkpoint, so the saved report is checked offline with only the store's
public key (`prove`). Editing a listed field, the sealed record, a proof or the checkpoint is caught."""

from __future__ import annotations

import csv
import html
import io
import json
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from pacsguard.events.model import Event

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from pacsguard.atna.explain import ExplainSettings
    from pacsguard.store import Checkpoint, EventStore

FORMAT = "pacsguard-patient-report/v1"
_SCRIPT_OPEN = '<script type="application/json" id="pacsguard-report">'


def row_of(event: Event) -> dict[str, Any]:
    """The report's fields of one event (each one is re-derived from the sealed record by `prove`)."""
    d = event.details
    purposes = [p.get("meaning") or p.get("code") for p in d.get("purposes", ())]
    event_id = d.get("event_id") or {}
    return {
        "time": event.time.astimezone(timezone.utc).isoformat().replace("+00:00", "Z"),
        "kind": event.kind, "what": event_id.get("meaning") or event.kind,
        "action": d.get("action"), "outcome": event.outcome,
        "user": event.actor.user, "host": event.actor.host, "ae_title": event.actor.ae_title,
        "target": event.target.label() if event.target.label() != "-" else None,
        "purpose": ", ".join(p for p in purposes if p) or None,
        "patient_ids": list(event.patient_ids), "study_uids": list(event.study_uids),
        "source": (d.get("source") or {}).get("id") or event.component,
    }


def patient_report(store: EventStore, patient: str, since: datetime | None = None,
                   until: datetime | None = None, checkpoint: Checkpoint | None = None,
                   explain: ExplainSettings | None = None) -> dict[str, Any]:
    """Every event naming ``patient`` (with or without its assigning authority), oldest first, proven
    against ``checkpoint`` (default: the newest signed one); with ``explain``, the verdict on each
    access (atna/explain.py: the share explained, the unexplained first). The verdicts are judged when
    the report is made: `prove` checks the events they rest on, not the judgement."""
    from pacsguard.store import EventQuery
    from pacsguard.store.proofs import inclusion_proofs

    found = list(store.search(EventQuery(patient=patient, since=since, until=until, limit=None)))
    checkpoints = store.checkpoints()
    newest = checkpoint or (checkpoints[-1] if checkpoints else None)
    proofs = {p.seq: p for p in inclusion_proofs(store, (s.seq for s in found), newest)} if newest else {}
    rows = []
    for stored in found:
        row: dict[str, Any] = {"seq": stored.seq, **row_of(stored.event)}
        proof = proofs.get(stored.seq)
        if proof is not None:
            row["sealed"] = proof.sealed
            row["proof"] = [h.hex() for h in proof.path]
        rows.append(row)
    report = {
        "format": FORMAT, "patient": patient, "store": store.name,
        "generated": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
        "since": since.isoformat() if since else None, "until": until.isoformat() if until else None,
        "checkpoint": None if newest is None else {
            "tree_size": newest.tree_size, "root": newest.root.hex(), "time_us": newest.time_us,
            "key_id": newest.key_id, "signature": newest.signature.hex()},
        "events": rows,
        "unproven": [r["seq"] for r in rows if "proof" not in r],
    }
    if explain is not None:
        from pacsguard.atna.explain import explain_patient, summary

        report["explanations"] = summary(explain_patient(store, patient, since, until, explain))
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


def prove(report: dict[str, Any], key: Ed25519PublicKey) -> list[str]:
    """Every reason the report does not hold, checked with the public key alone; empty when it holds.
    Events newer than the checkpoint are listed as unproven, not as failures."""
    from pacsguard.store import keys
    from pacsguard.store.merkle import leaf_hash, verify_inclusion
    from pacsguard.store.store import checkpoint_message

    problems: list[str] = []
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        return [f"not a patient report ({FORMAT})"]
    cp = report.get("checkpoint")
    if cp is None:
        return ["the report names no checkpoint: nothing in it is proven"]
    try:
        size, root, signature = int(cp["tree_size"]), bytes.fromhex(cp["root"]), bytes.fromhex(cp["signature"])
        message = checkpoint_message(size, root, int(cp["time_us"]))
    except (KeyError, TypeError, ValueError) as exc:
        return [f"checkpoint unreadable: {exc}"]
    if cp.get("key_id") != keys.key_id(key):
        problems.append(f"checkpoint signed by key {cp.get('key_id')}, the key given is {keys.key_id(key)}")
    if not keys.verify_signature(key, signature, message):
        problems.append("the checkpoint's signature does not verify with the key given")
    rows, unproven_seqs = report.get("events"), report.get("unproven")
    if not isinstance(rows, list) or not isinstance(unproven_seqs, list):
        return [*problems, "the report's events or its unproven list is missing or not a list"]
    unproven = {u for u in unproven_seqs if isinstance(u, int)}
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            problems.append(f"listed event {number}: not an object")
            continue
        seq = row.get("seq")
        if "proof" not in row:
            if seq not in unproven:
                problems.append(f"event #{seq}: no proof and not listed as unproven")
            continue
        sealed = str(row.get("sealed", ""))
        try:
            path = [bytes.fromhex(h) for h in row["proof"]]
        except (TypeError, ValueError):
            problems.append(f"event #{seq}: proof unreadable")
            continue
        if not isinstance(seq, int) or not verify_inclusion(seq, size, leaf_hash(sealed.encode()), path, root):
            problems.append(f"event #{seq}: not included in the signed tree of {size} events")
            continue
        try:
            envelope = json.loads(sealed)
            event = Event.from_dict(envelope["event"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # any JSON may have been sealed
            problems.append(f"event #{seq}: sealed record unreadable ({exc})")
            continue
        if envelope.get("seq") != seq:
            problems.append(f"event #{seq}: the sealed record is event #{envelope.get('seq')}")
        listed = {k: v for k, v in row.items() if k not in ("seq", "sealed", "proof")}
        if listed != row_of(event):
            changed = sorted(k for k, v in row_of(event).items() if listed.get(k) != v)
            problems.append(f"event #{seq}: listed fields differ from the sealed record: {', '.join(changed)}")
    return problems


def load_report(text: str) -> dict[str, Any]:
    """A saved report: its JSON, or the HTML form (which carries the JSON)."""
    start = text.find(_SCRIPT_OPEN)
    if start >= 0:
        end = text.index("</script>", start)
        text = text[start + len(_SCRIPT_OPEN):end].replace("<\\/", "</")
    loaded: dict[str, Any] = json.loads(text)
    return loaded


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
        writer.writerow([row["seq"], *(_cell(row.get(c) or "") for c in _COLUMNS),
                         "yes" if "proof" in row else "no", told.get(row["seq"], "")])
    return out.getvalue()


def to_html(report: dict[str, Any]) -> str:
    """A page for the privacy officer; the JSON report rides along, so `prove` reads the page too."""
    esc = html.escape
    cp = report["checkpoint"]
    told = verdicts(report)
    head = "".join(f"<th>{esc(c)}</th>" for c in ("#", *_COLUMNS, "proven", "explanation"))
    body = "".join(
        "<tr>" + f"<td>{row['seq']}</td>" + "".join(f"<td>{esc(str(row.get(c) or ''))}</td>" for c in _COLUMNS)
        + f"<td>{'yes' if 'proof' in row else 'not yet'}</td><td>{esc(told.get(row['seq'], ''))}</td></tr>"
        for row in listed_rows(report))
    share = share_line(report)
    proven_by = (f"checkpoint of {cp['tree_size']} events, root {cp['root']}, key {cp['key_id']}" if cp
                 else "no checkpoint")
    data = json.dumps(report).replace("</", "<\\/")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>Access report: {esc(report['patient'])}"
            f"</title><style>body{{font-family:sans-serif}}td,th{{border:1px solid #ccc;padding:2px 6px}}"
            f"table{{border-collapse:collapse}}</style></head><body><h1>Who accessed patient "
            f"{esc(report['patient'])}</h1><p>{len(report['events'])} events from {esc(report['store'])}, "
            f"generated {esc(report['generated'])}; proven against the {esc(proven_by)}. "
            f"{esc(share + ', unexplained listed first. ' if share else '')}Check it offline with "
            f"<code>pacsguard audit prove FILE --key STORE-KEY.pub</code>.</p><table><tr>{head}</tr>{body}</table>"
            f"{_SCRIPT_OPEN}{data}</script></body></html>\n")
