"""`pacsguard audit verify`: prove the store has not been altered since it was sealed."""

from __future__ import annotations

import json
import sys
from enum import Enum
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pacsguard.cli.app import App
from pacsguard.cli.common import (
    CONFIG_OPTION,
    EXIT_FINDINGS,
    STORE_OPTION,
    fail,
    load,
    open_store,
    shown,
)
from pacsguard.cli.events import FORMAT_OPTION, LIMIT_OPTION, SINCE_OPTION, UNTIL_OPTION, Format

if TYPE_CHECKING:
    from datetime import datetime

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from pacsguard.atna.corroborate import Corroboration
    from pacsguard.atna.explain import ExplainSettings
    from pacsguard.atna.query import Identifier
    from pacsguard.config.loader import LoadedConfig
    from pacsguard.store import Checkpoint, EventStore
    from pacsguard.store.verify import VerifyReport
    from pacsguard.store.witnessed import Unreadable

app = App(name="audit", no_args_is_help=True,
          help="The audit trail: verify the store, patient access reports and their proofs, received audit "
          "messages, daily summaries.")


@app.command("verify")
def verify(
    key: list[Path] = typer.Option([], "--key", help="public (or private) checkpoint key; repeat it for a "
                                   "store several writers sign with keys of their own (each checkpoint is "
                                   "checked with the key it names); default: the key that signed the "
                                   "checkpoints, found beside the store (STORE.key.pub, STORE.key), in the key "
                                   "folder where `gateway run` makes it, or at the config's store.signing_key"),
    witness: list[str] = typer.Option([], "--witness", help="a witness's copy of the checkpoints: a pacsguard "
                                      "witness URL or a witness file (JSON lines); check, with RFC 9162 "
                                      "consistency proofs, that the store extends each (repeat)"),
    witness_ca: Path | None = typer.Option(None, "--witness-ca", help="CA that signed an https:// witness's "
                                           "certificate (default: the system's)"),
    witness_cert: Path | None = typer.Option(None, "--witness-cert", help="client certificate for an https:// "
                                             "witness that requires mutual TLS"),
    witness_key: Path | None = typer.Option(None, "--witness-key", help="the key of --witness-cert"),
    fmt: Format = typer.Option(Format.table, "--format"),
    config: Path | None = CONFIG_OPTION,
    store: str | None = STORE_OPTION,
) -> None:
    """Recompute every seal, chain link and signed checkpoint; with --witness, compare with what
    witnesses hold. Exit 1 on a finding in the store or a witness file's unreadable line (the other
    lines are still checked), 3 deleted checkpoint, 4 truncated tail, 5 rollback, 6 forked (the
    highest applies)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pacsguard.cli.common import err_console
    from pacsguard.store import keys
    from pacsguard.store.verify import verify_store
    from pacsguard.store.witnessed import check_witnessed, exit_code

    witness = _check_witness_urls(witness)
    # With --store, no configuration is needed: the store's key is looked for beside it.
    loaded = load(config, required=store is None)
    es = open_store(loaded, store)
    try:
        public = _public_key(es, key, _key_candidates(loaded, store))
        with Progress(TextColumn("verifying {task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=err_console, transient=True,
                      disable=fmt is Format.json) as progress:
            task = progress.add_task(es.name, total=None)
            report = verify_store(es, public, lambda done, total: progress.update(task, completed=done, total=total))
        stored = es.checkpoints()
        for source in witness:
            tls = (witness_ca, witness_cert, witness_key)
            held, unreadable = _witnessed(source, stored, public, tls)
            # Each writer's log (key) the witness holds is checked on its own; with none of them,
            # the first key's check says so.
            logs = {cp.key_id for cp in held}
            for n, log_key in enumerate([k for k in public if keys.key_id(k) in logs] or public[:1] or [None]):
                check_witnessed(report, stored, held, log_key, source, unreadable if n == 0 else ())
    finally:
        es.close()
    if fmt is Format.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _show(report)
    if not report.ok:
        raise typer.Exit(exit_code(report.findings) or EXIT_FINDINGS)


def _check_witness_urls(sources: list[str]) -> list[str]:
    """``sources`` with each URL's scheme in lower case (HTTPS:// is https://); a --witness URL the
    witness client would misuse is refused before anything is read, by the rules
    store.witnesses.N.url is checked with when the configuration is read (never quoting a password)."""
    from pacsguard.config.witness_url import lower_scheme, witness_url_problem
    from pacsguard.witness.held import is_url

    sources = [lower_scheme(source) for source in sources]
    for source in sources:
        if is_url(source) and (problem := witness_url_problem(source)) is not None:
            raise fail(f"--witness: {problem}")
    return sources


def _witnessed(source: str, stored: list[Checkpoint], public: list[Ed25519PublicKey],
               tls: tuple[Path | None, Path | None, Path | None]) -> tuple[list[Checkpoint], list[Unreadable]]:
    """What the witness ``source`` holds of this store's log(s): a URL is asked for each key that
    signed the store's checkpoints and the keys verify uses; a file is read line by line, and its
    lines that hold no checkpoint are returned beside the checkpoints of the others."""
    from pacsguard.store import keys
    from pacsguard.store.witnessed import read_witness_file
    from pacsguard.tls.contexts import client_context
    from pacsguard.witness.errors import WitnessError
    from pacsguard.witness.held import is_url, read_witness

    logs = list(dict.fromkeys([cp.key_id for cp in reversed(stored)] + [keys.key_id(k) for k in public]))
    if is_url(source) and not logs:
        raise fail(f"--witness {source}: the store has no checkpoint naming its log; give its key with --key")
    ca, cert, key = tls
    # BCP 195 (RFC 9325) with or without --witness-ca: urllib's own default context would accept
    # CBC suites; without a CA, client_context trusts the system's CAs as that default did.
    context = client_context(ca_file=ca, cert_file=cert, key_file=key) if source.startswith("https://") else None
    try:
        if is_url(source):
            return read_witness(source, logs, context=context), []
        return read_witness_file(Path(source))
    except WitnessError as exc:
        raise fail(str(exc)) from None


def _key_candidates(loaded: LoadedConfig, store: str | None) -> list[Path]:
    """Where the checkpoint key may be, in order: beside --store, then the configuration's key (when
    there is a configuration file or no --store); public halves first."""
    from pacsguard.store import keys

    private: list[Path] = []
    beside = keys.beside_store(store) if store is not None else None
    if beside is not None:
        private.append(beside)
    if store is not None:
        private.append(keys.default_key(store))  # where `gateway run --store` makes it now
    if loaded.path is not None or store is None:
        private.append(loaded.resolve(loaded.config.store.signing_key))
    return [p for key in private for p in (keys.public_path(key), key)]


def _public_key(es: EventStore, given: list[Path], candidates: list[Path]) -> list[Ed25519PublicKey]:
    """Every --key given; else the candidate whose fingerprint signed the checkpoints. None ([]) for
    a store with no checkpoint yet and no key at hand; an error naming the key needed otherwise."""
    from pacsguard.store import keys

    if given:
        return [keys.load_public_key(path, role="--key") for path in given]
    signed_by = list(dict.fromkeys(cp.key_id for cp in reversed(es.checkpoints())))
    picked = keys.pick_public_key(candidates, signed_by)
    if picked is not None:
        return [picked[1]]
    if not signed_by:
        return []
    looked = ", ".join(str(p) for p in candidates) or "nowhere (no --key, no configuration)"
    raise fail(f"{es.name}: its checkpoints were signed by key {', '.join(signed_by)}; no key found "
               f"(looked at {looked}): give its public key with --key")


def _show(report: VerifyReport) -> None:
    from rich.table import Table

    from pacsguard.cli.common import console

    console.print(f"store {report.store}: {report.events} events, {report.checkpoints} checkpoints; "
                  f"newest checkpoint: {_checkpoint_line(report)}", highlight=False)
    for seen in report.witnesses:
        bad = seen.get("unreadable_lines", [])
        unread = f"; {len(bad)} unreadable line(s) left out (findings below)" if bad else ""
        console.print(f"witness {shown(seen['source'])}: {seen['checkpoints']} checkpoints of this log, newest at "
                      f"size {seen['newest']}{unread}", highlight=False)
    for note in report.notes:
        console.print(f"[bold yellow]note[/]: {shown(note)}", highlight=False)
    if report.ok:
        held = " and the store extends every checkpoint the witnesses hold" if report.witnesses else ""
        console.print(f"[bold green]OK[/]: every event, chain link, index row and checkpoint verifies{held}")
        return
    table = Table(title=f"[bold red]{len(report.findings)} findings[/]", header_style="bold")
    table.add_column("finding")
    table.add_column("event #", justify="right")
    table.add_column("what was found", overflow="fold")
    for f in report.findings:
        table.add_row(f.kind, "" if f.seq is None else str(f.seq), shown(f.message))
    console.print(table)


def _checkpoint_line(report: VerifyReport) -> str:
    """Signature and root told apart: "INVALID" only for a signature that fails with the key it names."""
    if report.newest_checkpoint is None:
        return "none yet"
    signature = {"valid": "[green]valid[/]", "invalid": "[red]INVALID[/]",
                 "other key": f"[yellow]not checked[/] (signed by key {report.newest_checkpoint_key}, "
                              f"you gave key{'s' * (len(report.key_ids) > 1)} {', '.join(report.key_ids)})",
                 "unchecked": "[yellow]not checked[/] (no key)"}.get(report.newest_checkpoint_signature or "", "?")
    root = {True: "root matches the stored events", False: "[red]root differs[/] from the stored events",
            None: "[red]events it sealed are missing[/]"}[report.newest_checkpoint_root_ok]
    return (f"size {report.newest_checkpoint}, signed by key {report.newest_checkpoint_key}, "
            f"signature {signature}, {root}")


EXPLAIN_OPTION = typer.Option(True, "--explain/--no-explain", help="judge each access by the explanation templates "
                              "(an order, the user's department, a C-MOVE to the workstation, a repeat): the share "
                              "explained, the unexplained listed first (docs/audit.md)")


class ReportFormat(str, Enum):
    table = "table"
    json = "json"
    html = "html"
    csv = "csv"


@app.command("patient")
def patient(
    patient_id: str = typer.Argument(..., help="patient ID, with or without its assigning authority (CX), or "
                                     "system|ID (urn:oid:OID|ID), as `audit search --patient` takes it"),
    since: str | None = typer.Option(None, "--since", help="from this time (ISO 8601)"),
    until: str | None = typer.Option(None, "--until", help="before this time"),
    fmt: ReportFormat = typer.Option(ReportFormat.table, "--format", help="table, json, html or csv"),
    checkpoint: bool = typer.Option(True, "--checkpoint/--no-checkpoint",
                                    help="sign a checkpoint first (needs the signing key) so every event is proven"),
    witness: str | None = typer.Option(None, "--witness", help="a witness of the store (its file, or a pacsguard "
                                       "witness URL): the report carries an RFC 9162 consistency proof to the "
                                       "newest checkpoint it holds, for `audit prove --checkpoint`"),
    key: Path | None = typer.Option(None, "--key", help="the store's private signing key, which signs the checkpoint "
                                    "and the json or html report; default: found beside the store, in the key "
                                    "folder, or at the config's store.signing_key"),
    explain: bool = EXPLAIN_OPTION,
    config: Path | None = CONFIG_OPTION,
    store: str | None = STORE_OPTION,
) -> None:
    """The patient access report: every event naming the patient, each with an RFC 9162 inclusion
    proof against the newest signed checkpoint; the json and html forms are signed with the store's
    key (save one; `audit prove` checks it)."""
    from pacsguard.atna.corroborate import witness_section
    from pacsguard.atna.query import Identifier, QueryError
    from pacsguard.atna.report import patient_report, to_csv, to_html
    from pacsguard.cli.events import _when
    from pacsguard.runtime.outputs import open_store as open_target

    if not patient_id.strip() or patient_id != patient_id.strip():
        # Stored patient IDs are trimmed (an audit message's CX, a DICOM LO value's padding: PS3.5
        # 6.2), so this ID could match nothing; the report would be a signed "nobody accessed it"
        # made from an empty "$PID" or a line read with its CR.
        raise fail(f"patient ID {shown(repr(patient_id))}: " + ("empty; give a patient ID (PID, PID^^^AUTHORITY "
                   "or system|PID)" if not patient_id.strip() else _PADDED))
    try:
        # `audit search --patient`'s own reading (a FHIR token as a portal or ITI-81 gives it), so
        # both name the same events; the report names the patient by the key that finds them.
        wanted = Identifier.parse(patient_id)
    except QueryError as exc:
        raise fail(f"patient ID {shown(repr(patient_id))}: {shown(str(exc))} (a patient ID that itself holds '|' "
                   "is given with it escaped: 'A\\|B')") from None
    if wanted.value != wanted.value.strip():  # urn:oid:1.2.3| PID: the same trimmed store as above
        raise fail(f"patient ID {shown(repr(patient_id))}: its value {shown(repr(wanted.value))} has {_PADDED}")
    if wanted.no_authority:
        # The report names its patient by one key that `audit prove` finds among a sealed record's
        # patient IDs; a bare ID is among those of every authority's patient of that ID, so no key
        # says "without an authority", and the signed report would claim more than was asked.
        raise fail(f"patient ID {shown(repr(patient_id))}: a patient without an assigning authority is a search "
                   f"filter (`audit search --patient {shown(repr(patient_id))}`); a report names the ID under any "
                   f"authority ({shown(repr(wanted.key))}) or one (ID^^^AUTHORITY or system|ID)")
    start, end = _when(since, "since"), _when(until, "until")
    if start is not None and end is not None and end <= start:
        # The window is [since, until): an inverted one holds no time, and the report would be a
        # signed statement that nobody accessed the patient.
        raise fail(f"--until {shown(until)} ({end.isoformat()}) is not after --since {shown(since)} "
                   f"({start.isoformat()}): the report covers from --since to before --until, so that window "
                   "holds no time")
    if witness is not None:  # by the rules of `audit verify --witness`: its URL goes into the signed report
        witness = _check_witness_urls([witness])[0]
    loaded = load(config, required=store is None)
    es = open_store(loaded, store)
    # Without a signing key at hand, events after the newest checkpoint are listed as unproven,
    # and the report is not signed (`audit prove` refuses it).
    if key is not None:  # a wrong --key named before the store is read, not after
        from pacsguard.store import keys

        keys.load_private_key(key, role="--key")
    signing = key or next((k for k in _key_candidates(loaded, store) if k.is_file() and not k.name.endswith(".pub")),
                          None)
    try:
        if checkpoint and signing is not None and es.unsigned():
            writer = open_target(es.url, key=signing)
            try:
                writer.checkpoint()
            finally:
                writer.close()
        report = patient_report(es, wanted.key, start, end,
                                explain=_explain_settings(loaded) if explain else None)
        # 0 events is a signed "nobody accessed the patient": say so where a typo would show.
        nobody = None if report["matched"] else _nobody(es, patient_id, wanted, report, start, end)
        if witness is not None:
            held, unreadable = _witnessed(witness, es.checkpoints(), [], (None, None, None))
            _unreadable_warning(unreadable)
            try:
                report["witness"] = witness_section(es, report, held, witness)
            except ValueError as exc:
                raise fail(f"--witness {witness}: {exc}") from None
    finally:
        es.close()
    if fmt in (ReportFormat.json, ReportFormat.html):
        _sign_report(report, signing)  # last: the signature covers every member, the witness's too
    if fmt is ReportFormat.json:
        # Written as it is encoded: the text of a report of many events is as large as the report.
        json.dump(report, sys.stdout, indent=1)
        sys.stdout.write("\n")
    elif fmt is ReportFormat.html:
        sys.stdout.write(to_html(report))
    elif fmt is ReportFormat.csv:
        sys.stdout.write(to_csv(report))
    else:
        _show_report(report)
    if nobody is not None:
        from pacsguard.cli.common import err_console

        err_console.print(f"[bold yellow]note[/]: {shown(nobody)}", highlight=False, soft_wrap=True)


#: Why a patient ID with white space around it is refused (`audit patient`).
_PADDED = "white space before or after it; patient IDs are stored trimmed, so it would match nothing: give it without"


def _nobody(es: EventStore, given: str, wanted: Identifier, report: dict[str, Any], since: datetime | None,
            until: datetime | None) -> str:
    """Why a report named no event, for stderr: the patient as searched (the key the store's patient
    index holds, atna/message/patient.py) and the window, and what else to try, so a typo in the
    ID or the authority is not taken for "nobody accessed the patient"."""
    from pacsguard.atna.message.patient import PatientId
    from pacsguard.atna.report import window_text
    from pacsguard.store import EventQuery

    key = wanted.key
    held = PatientId.parse(key)
    bare = held.id
    given = f"'{given}'" if given.isprintable() else repr(given)  # repr would double an escape's backslash
    said = [f"no event names patient {key}" + (f" (as {given} names it)" if given != f"'{key}'" else "")
            + f" {window_text(report)}"]
    if bare != key:
        other = next(iter(es.search(EventQuery(patient=bare, since=since, until=until, limit=1))), None)
        said.append(f"events name ID {bare} under another authority: `audit patient {bare}` lists them all, "
                    "check the authority" if other is not None else
                    f"nor under any other authority (the bare ID {bare} finds none): check the ID")
    else:
        said.append("an ID is matched exactly as stored (its case too): check it; the bare ID finds the patient "
                    "under any assigning authority, ID^^^AUTHORITY or system|ID under that one")
    # Read as a FHIR token whose system is no URI (FHIR R4 Identifier.system is an absolute URI, so
    # it holds a scheme's ':'; urn:oid: and urn:uuid: ones are kept as type ISO, UUID): likely an
    # ID that holds '|' (PatientId.of_system: a system other than those is of type URI).
    _, universal, kind = ((held.authority or "") + "&&").split("&")[:3]
    if key != wanted.value and kind == "URI" and ":" not in universal:
        said.append(f"{given} was read as system|ID; a patient ID that itself holds '|' is given with it "
                    "escaped: 'A\\|B'")
    if since is not None or until is not None:
        said.append("or widen --since/--until")
    return "; ".join(said)


def _unreadable_warning(unreadable: list[Unreadable]) -> None:
    """Lines of the witness's copy that were left out, on stderr: the rest still links the report."""
    from pacsguard.cli.common import err_console

    for line in unreadable:
        err_console.print(f"[bold yellow]warning[/]: {shown(str(line))}; left out, the other lines are read",
                          highlight=False, soft_wrap=True)


def _sign_report(report: dict[str, Any], signing: Path | None) -> None:
    """Sign the report with the key that signed its checkpoint, so `audit prove` needs one public
    key; otherwise leave it unsigned and say why on stderr (the report is still written)."""
    from pacsguard.atna.report import sign_report
    from pacsguard.cli.common import err_console
    from pacsguard.store import keys

    private = keys.load_private_key(signing) if signing is not None else None
    cp = report["checkpoint"]
    if private is not None and (cp is None or cp["key_id"] == keys.key_id(private.public_key())):
        sign_report(report, private)
        return
    why = (f"its checkpoint was signed by key {cp['key_id']}, the signing key at hand ({signing}) is key "
           f"{keys.key_id(private.public_key())}" if private is not None else
           "no signing key found: give it with --key")
    err_console.print(f"[bold yellow]warning[/]: the report is not signed ({shown(why)}): `audit prove` will "
                      "refuse it", highlight=False, soft_wrap=True)


def _show_report(report: dict[str, Any]) -> None:
    from pacsguard.atna.report import listed_rows, share_line, user_cell, verdicts
    from pacsguard.cli.layout import Column, printable, render, terminal_width, write_lines

    columns = (Column("#"), Column("time (UTC)"), Column("what"), Column("outcome"), Column("user"),
               Column("host"), Column("purpose"), Column("proven"), Column("explanation"))
    told = verdicts(report)
    rows = [[str(r["seq"]), r["time"][:19], str(r["what"]), r["outcome"], user_cell(r), r.get("host") or "",
             r.get("purpose") or "", "yes" if "proof" in r else "no", told.get(r["seq"], "")]
            for r in listed_rows(report)]
    cp = report["checkpoint"]
    share = share_line(report)
    write_lines([f"patient {printable(report['patient'])}: {len(rows)} events; proven against "
                 + (f"checkpoint {cp['tree_size']} (key {cp['key_id']})" if cp else "no checkpoint")
                 + (f"; {share}, unexplained first" if share else ""),
                 *render(columns, rows, terminal_width())])


def _explain_settings(loaded: LoadedConfig) -> ExplainSettings:
    """The windows and departments of the configuration's atna.privacy (defaults without one)."""
    from pacsguard.atna.explain import settings_of

    return settings_of(loaded.section("atna").privacy, loaded.resolve)


@app.command("prove")
def prove(
    report: Path = typer.Argument(..., help="a saved report (json or html form of `audit patient`)"),
    key: Path = typer.Option(..., "--key", help="the store's public checkpoint key (or a witness's copy)"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="a witness's copy of the checkpoints (the "
                                           "file witness's file, a witness service's ledger or its saved GET "
                                           "answer): check that it holds the report's checkpoint, or one the "
                                           "report's consistency proof links to"),
    witness_key: Path | None = typer.Option(None, "--witness-key", help="the witness's public key: also check its "
                                            "countersignature on the checkpoint it holds"),
) -> None:
    """Check a saved report offline: the report's and the checkpoint's signatures, each event's
    inclusion proof, listed fields, patient and time, and that an html page shows what it carries;
    with --checkpoint, against a witness's copy. Exit 1 if anything does not hold, 6 if the witness
    saw another tree where the report's should be (forked)."""
    from pacsguard.atna.report import FORMAT, OLD_FORMATS, decode_report, load_report, page_problems
    from pacsguard.atna.report import prove as check
    from pacsguard.cli.common import console
    from pacsguard.store import keys

    for path, what in ((report, "a saved report: give the json or html file `audit patient` wrote"),
                       (key, "a public key: give the store's public key file (.pub)")):
        if path.is_dir():  # read, it is a bare "[Errno 21]" that names neither the file nor its role
            raise fail(f"{path}: a directory, not {what}")
    try:
        # Bytes, not read_text: newline translation would change the page `page_problems` compares.
        raw = report.read_bytes()
    except OSError as exc:
        raise fail(f"{report}: cannot read the report ({exc.strerror or exc})") from None
    try:
        text = decode_report(raw)
        data = load_report(text)
    except ValueError as exc:
        raise fail(f"{report}: not a saved report ({exc})") from None
    except RecursionError:  # Python's JSON reader stops at its recursion limit (RFC 8259 section 9)
        raise fail(f"{report}: not a saved report (its JSON is nested deeper than pacsguard reads)") from None
    if data.get("format") not in (FORMAT, *OLD_FORMATS):
        # Any JSON object is not a report: docs/audit.md gives exit 2 for a file that is not one, and
        # keeps exit 1 for a report that does not hold (an old format's is refused by `check`).
        named = data.get("format")
        what = "it names no format" if named is None else f"its format is {str(named)[:60]!r}"
        raise fail(f"{report}: not a saved report ({what}; a report's is {FORMAT})") from None
    public = keys.load_public_key(key, role="--key")
    findings = [("report", p) for p in [*check(data, public), *page_problems(text, data)]]
    notes: list[str] = []
    code = EXIT_FINDINGS if findings else 0
    if checkpoint is not None and data.get("format") == FORMAT:
        held, notes = _corroborated(data, checkpoint, public, witness_key)
        findings += held.findings
        code = max(code, held.exit_code)
    for kind, problem in findings:
        console.print(f"[bold red]FAILS[/]{'' if kind == 'report' else f' ({kind})'}: {shown(problem)}",
                      highlight=False)
    if findings:
        raise typer.Exit(code)
    _proven(data)
    for note in notes:
        console.print(f"witness: {shown(note)}", highlight=False)
    carried = data.get("witness")
    if checkpoint is None and isinstance(carried, dict):
        console.print(f"the report carries a consistency proof to the checkpoint at size "
                      f"{shown(carried.get('tree_size'))} held by {shown(carried.get('source'))}: check it against "
                      "that witness's copy with --checkpoint",
                      highlight=False)


def _proven(data: dict[str, Any]) -> None:
    """What a report that holds says: the proven events, and what its signature states."""
    from pacsguard.atna.report import window_text
    from pacsguard.cli.common import console

    cp = data["checkpoint"]
    proven = sum("proof" in r for r in data["events"])
    console.print(f"[bold green]OK[/]: {proven} events proven against checkpoint {shown(cp['tree_size'])} "
                  f"(key {shown(cp['key_id'])}); {len(data['unproven'])} newer than it, unproven", highlight=False)
    console.print(f"signed by key {shown(data['signed']['key_id'])}: {len(data['events'])} events named patient "
                  f"{shown(data['patient'])} ({shown(window_text(data))}) in {shown(data['store'])} when the report "
                  f"was made ({shown(data['generated'])}); that none was left out rests on that key", highlight=False)


def _corroborated(data: dict[str, Any], copy: Path, public: Ed25519PublicKey,
                  witness_key: Path | None) -> tuple[Corroboration, list[str]]:
    """The report's checkpoint against the witness's copy, and its countersignature with --witness-key."""
    from pacsguard.atna.corroborate import corroborate
    from pacsguard.store import keys
    from pacsguard.store.witnessed import read_witness_copy
    from pacsguard.witness.errors import WitnessError

    try:
        copies, unreadable = read_witness_copy(copy)
    except WitnessError as exc:
        raise fail(str(exc)) from None
    result = corroborate(data, [c.checkpoint for c in copies], public)
    # The other lines still count: a report whose checkpoint they hold (or link to) is proven; when
    # they do not, the lines left out are named with the failure (one may have held it).
    for line in unreadable:
        if result.findings:
            result.findings.append(("unreadable line", f"{line}; left out, it may have held the checkpoint"))
        else:
            result.notes.append(f"{line}; left out, the other lines hold the report up")
    matched = result.matched
    if witness_key is not None and matched is not None:
        countersigner = keys.load_public_key(witness_key, role="--witness-key")
        mine = [c for c in copies if c.checkpoint == matched]
        if not any(c.held is not None for c in mine):
            result.findings.append(("witness", f"{copy} carries no countersignature (a file witness's copy has none); "
                                               "--witness-key needs a witness service's copy"))
        elif not any(c.countersigned(countersigner) for c in mine):
            result.findings.append(("witness", f"the countersignature on the checkpoint at size {matched.tree_size} "
                                               f"does not verify with {witness_key}"))
        else:
            result.notes.append(f"countersigned by witness key {keys.key_id(countersigner)}")
    return result, result.notes


@app.command("search")
def search(
    patient: str | None = typer.Option(None, "--patient", help="patient ID, with or without its assigning "
                                       "authority, or system|ID (urn:oid:OID|ID)"),
    user: str | None = typer.Option(None, "--user", help="a participant's user ID or name (prefix, any case)"),
    event_id: list[str] = typer.Option(None, "--event-id", help="PS3.15 event ID such as 110110 (repeat)"),
    action: list[str] = typer.Option(None, "--action", help="EventActionCode C, R, U, D or E, or its name "
                                     "create, read, update, delete, execute (any case; repeat)"),
    outcome: list[str] = typer.Option(None, "--outcome", help="EventOutcomeIndicator 0, 4, 8 or 12, or its name "
                                      "success, minor-failure, serious-failure, major-failure (repeat)"),
    source: list[str] = typer.Option(None, "--source", help="AuditSourceID of the sender (compared whole), Device/ID, "
                                                            "or system|ID (repeat)"),
    entity_type: list[str] = typer.Option(None, "--entity-type", help="participant object type 1-4, or its name "
                                          "person, system-object, organization, other (repeat)"),
    since: str | None = SINCE_OPTION,
    until: str | None = UNTIL_OPTION,
    limit: int = LIMIT_OPTION,
    fmt: Format = FORMAT_OPTION,
    config: Path | None = CONFIG_OPTION,
    store: str | None = STORE_OPTION,
) -> None:
    """Received audit messages by patient, user, event ID, action, outcome, source and time, in order of storage."""
    from pacsguard.atna.message.codes import ACTIONS, OUTCOMES
    from pacsguard.atna.query import AuditQuery, CodeToken, Identifier, QueryError, source_token
    from pacsguard.cli.events import print_limited, window

    def anyof(values: list[str] | None) -> list[tuple[str, ...]]:  # an option repeated: any of its values
        return [tuple(values)] if values else []

    who: list[tuple[Identifier, ...]] = []
    if patient is not None and not patient.strip():
        # An empty "$PID" in a script: no filter at all would list every patient's accesses.
        raise fail("--patient: empty; give a patient ID (PID, PID^^^AUTHORITY, or system|PID)")
    try:
        if patient:
            who.append((Identifier.parse(patient),))
    except QueryError as exc:
        raise fail(f"--patient: {exc}") from None
    if event_id and not all(e.strip() for e in event_id):
        raise fail("--event-id: empty; give an event ID such as 110110")
    try:  # a value, system|value or |value (the RESTful query's source token)
        sources = [tuple(source_token(s) for s in source)] if source else []
    except QueryError as exc:
        raise fail(f"--source: {exc}") from None
    start, end = window(since, until)
    q = AuditQuery(patients=who, since=start, until=end,
                   agent_names=anyof([user.lower()] if user else None),
                   entity_types=_coded("--entity-type", entity_type, ENTITY_TYPES),
                   outcomes=_coded("--outcome", outcome, OUTCOMES),
                   event_ids=[tuple(CodeToken(e) for e in event_id)] if event_id else [],
                   actions=_coded("--action", action, ACTIONS), sources=sources, count=limit + 1)
    es = open_store(load(config, required=store is None), store)
    try:
        # One event more than asked tells whether the output stops short of what matched.
        found = list(islice((s for s in q.stored(es) if q.matches(s.event)), limit + 1))
    finally:
        es.close()
    print_limited(found, limit, fmt, "audit search")


#: ParticipantObjectTypeCode (PS3.15 A.5.1, RFC 3881 5.5.1) and the names `audit search` takes for them.
ENTITY_TYPES = {"1": "person", "2": "system-object", "3": "organization", "4": "other"}


def _coded(option: str, given: list[str] | None, names: dict[str, str]) -> list[tuple[str, ...]]:
    """An option's values (repeated: any of them) as the codes stored, each given as its code or its
    name, in any case. Anything else is refused (exit 2), naming the option and what it takes:
    compared as given, it could only match nothing, and the search would answer nothing silently."""
    if not given:
        return []
    words = {**{code.lower(): code for code in names}, **{name.lower(): code for code, name in names.items()}}
    codes: list[str] = []
    for value in given:
        code = words.get(value.strip().lower())
        if code is None:
            accepted = ", ".join(f"{code} ({name})" for code, name in names.items())
            raise fail(f"{option} {value!r}: expected one of {accepted}")
        codes.append(code)
    return [tuple(dict.fromkeys(codes))]


class DailyFormat(str, Enum):
    html = "html"
    json = "json"


@app.command("report")
def report(
    day: str = typer.Option(..., "--day", help="the day to summarise, YYYY-MM-DD, from midnight to midnight in "
                            "the site's time zone"),
    fmt: DailyFormat = typer.Option(DailyFormat.html, "--format", help="html (with charts) or json"),
    hours: str = typer.Option("7-19", "--hours", help="working hours in the site's time zone, as START-END (22-6 "
                              "spans midnight); access to patient data outside them is listed"),
    time_zone: str | None = typer.Option(None, "--time-zone", help="the site's time zone: an IANA name "
                                         "(Europe/Berlin) or local (this host's); default: the configuration's "
                                         "atna.time_zone, else local"),
    explain: bool = EXPLAIN_OPTION,
    config: Path | None = CONFIG_OPTION,
    store: str | None = STORE_OPTION,
) -> None:
    """The daily summary: top users and hosts, failed authentications, security alerts, break-glass
    uses and access to patient data outside working hours."""
    from datetime import date

    from pacsguard.atna.daily import EXPLANATIONS_LISTED, summarise, to_html
    from pacsguard.atna.explain import Accesses
    from pacsguard.atna.explain import summary as explained
    from pacsguard.atna.zone import SiteZone
    from pacsguard.store import EventQuery

    try:
        when = date.fromisoformat(day)
    except ValueError as exc:
        raise fail(f"--day {day!r}: not a date, YYYY-MM-DD expected ({exc})") from None
    try:
        start_hour, end_hour = (int(h) for h in hours.split("-", 1))
    except ValueError:
        raise fail(f"--hours {hours!r}: START-END expected, hours 0 to 24 (7-19; 22-6 spans midnight)") from None
    # START > END spans midnight (a night shift). START == END would hold no hour, or all of them:
    # not told apart.
    if not (0 <= start_hour < 24 and 0 <= end_hour <= 24 and start_hour != end_hour):
        raise fail(f"--hours {hours!r}: expected START-END, START from 0 to 23, END from 0 to 24, not the same")
    loaded = load(config, required=store is None)
    try:
        zone = loaded.section("atna").site_zone() if time_zone is None else SiteZone.named(time_zone)
    except ValueError as exc:
        raise fail(f"--time-zone: {exc}") from None
    since, until = zone.day_span(when)
    es = open_store(loaded, store)
    try:
        seen = Accesses()
        settings = _explain_settings(loaded) if explain else None
        summary = summarise((seen.see(s) for s in es.search(EventQuery(since=since, until=until, limit=None))), when,
                            (start_hour, end_hour),
                            None if settings is None
                            else lambda: explained(seen.explain(es, since, until, settings), EXPLANATIONS_LISTED),
                            zone=zone)
    finally:
        es.close()
    sys.stdout.write(to_html(summary) if fmt is DailyFormat.html else json.dumps(summary, indent=1) + "\n")
