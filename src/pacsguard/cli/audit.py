"""`pacsguard audit verify`: prove the store has not been altered since it was sealed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pacsguard.cli.app import App
from pacsguard.cli.common import CONFIG_OPTION, EXIT_FINDINGS, STORE_OPTION, fail, guarded, load, open_store
from pacsguard.cli.events import Format

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from pacsguard.config.loader import LoadedConfig
    from pacsguard.store import Checkpoint, EventStore
    from pacsguard.store.verify import VerifyReport

app = App(name="audit", no_args_is_help=True, help="The audit trail: verification of the store.")


@app.command("verify")
@guarded
def verify(
    key: Path | None = typer.Option(None, "--key", help="public (or private) checkpoint key; default: the key "
                                    "that signed the checkpoints, found beside the store (STORE.key.pub, "
                                    "STORE.key), in the key folder where `gateway run` makes it, or at the "
                                    "config's store.signing_key"),
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
    witnesses hold. Exit 1 on a finding in the store, 3 deleted checkpoint, 4 truncated tail,
    5 rollback, 6 forked (the highest applies)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pacsguard.cli.common import err_console
    from pacsguard.store.verify import verify_store
    from pacsguard.store.witnessed import check_witnessed, exit_code

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
            check_witnessed(report, stored, _witnessed(source, stored, public, tls), public, source)
    finally:
        es.close()
    if fmt is Format.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        _show(report)
    if not report.ok:
        raise typer.Exit(exit_code(report.findings) or EXIT_FINDINGS)


def _witnessed(source: str, stored: list[Checkpoint], public: Ed25519PublicKey | None,
               tls: tuple[Path | None, Path | None, Path | None]) -> list[Checkpoint]:
    """What the witness ``source`` holds of this store's log(s): a URL is asked for each key that
    signed the store's checkpoints and the key verify uses."""
    from pacsguard.store import keys
    from pacsguard.tls.contexts import client_context
    from pacsguard.witness.errors import WitnessError
    from pacsguard.witness.held import is_url, read_witness

    logs = [cp.key_id for cp in reversed(stored)] + ([keys.key_id(public)] if public is not None else [])
    if is_url(source) and not logs:
        raise fail(f"--witness {source}: the store has no checkpoint naming its log; give its key with --key")
    ca, cert, key = tls
    context = client_context(ca_file=ca, cert_file=cert, key_file=key) \
        if any(tls) and source.startswith("https://") else None
    try:
        return read_witness(source, logs, context=context)
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


def _public_key(es: EventStore, given: Path | None, candidates: list[Path]) -> Ed25519PublicKey | None:
    """--key if given; else the candidate whose fingerprint signed the checkpoints. None for a store
    with no checkpoint yet and no key at hand; an error naming the key needed otherwise."""
    from pacsguard.store import keys

    if given is not None:
        return keys.load_public_key(given)
    signed_by = list(dict.fromkeys(cp.key_id for cp in reversed(es.checkpoints())))
    picked = keys.pick_public_key(candidates, signed_by)
    if picked is not None:
        return picked[1]
    if not signed_by:
        return None
    looked = ", ".join(str(p) for p in candidates) or "nowhere (no --key, no configuration)"
    raise fail(f"{es.name}: its checkpoints were signed by key {', '.join(signed_by)}; no key found "
               f"(looked at {looked}): give its public key with --key")


def _show(report: VerifyReport) -> None:
    from rich.table import Table

    from pacsguard.cli.common import console

    console.print(f"store {report.store}: {report.events} events, {report.checkpoints} checkpoints; "
                  f"newest checkpoint: {_checkpoint_line(report)}", highlight=False)
    for seen in report.witnesses:
        console.print(f"witness {seen['source']}: {seen['checkpoints']} checkpoints of this log, newest at size "
                      f"{seen['newest']}", highlight=False)
    if report.ok:
        held = " and the store extends every checkpoint the witnesses hold" if report.witnesses else ""
        console.print(f"[bold green]OK[/]: every event, chain link, index row and checkpoint verifies{held}")
        return
    table = Table(title=f"[bold red]{len(report.findings)} findings[/]", header_style="bold")
    table.add_column("finding")
    table.add_column("event #", justify="right")
    table.add_column("what was found", overflow="fold")
    for f in report.findings:
        table.add_row(f.kind, "" if f.seq is None else str(f.seq), f.message)
    console.print(table)


def _checkpoint_line(report: VerifyReport) -> str:
    """Signature and root told apart: "INVALID" only for a signature that fails with the key it names."""
    if report.newest_checkpoint is None:
        return "none yet"
    signature = {"valid": "[green]valid[/]", "invalid": "[red]INVALID[/]",
                 "other key": f"[yellow]not checked[/] (signed by key {report.newest_checkpoint_key}, "
                              f"you gave key {report.key_id})",
                 "unchecked": "[yellow]not checked[/] (no key)"}.get(report.newest_checkpoint_signature or "", "?")
    root = {True: "root matches the stored events", False: "[red]root differs[/] from the stored events",
            None: "[red]events it sealed are missing[/]"}[report.newest_checkpoint_root_ok]
    return (f"size {report.newest_checkpoint}, signed by key {report.newest_checkpoint_key}, "
            f"signature {signature}, {root}")
