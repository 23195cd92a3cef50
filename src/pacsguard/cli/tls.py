"""`pacsguard tls ...`: make a private CA and issue certificates from it (see pacsguard.tls.certs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pacsguard.cli.app import App

app = App(name="tls", help="Private CA and certificates for TLS (RFC 9325 profile).",
          no_args_is_help=True)


def _fail(message: str) -> typer.Exit:
    # One red line on stderr, no traceback; soft_wrap keeps long paths on that one line.
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(Text(f"error: {message}", style="bold red"))
    return typer.Exit(2)


def _written(cert: Path, key: Path) -> None:
    from rich.text import Text

    from pacsguard.cli.common import new_console

    out = new_console(soft_wrap=True)
    out.print(Text.assemble(("certificate ", "green"), str(cert)))
    out.print(Text.assemble(("private key ", "green"), str(key), (" (mode 0600)", "dim")))


@app.command("make-ca")
def make_ca_cmd(
    out: Annotated[Path, typer.Option("--out", help="Directory for ca.crt and ca.key.")],
    cn: Annotated[str, typer.Option("--cn", help="Common name of the CA.")] = "pacsguard CA",
    days: Annotated[int, typer.Option("--days", min=1, help="Validity in days.")] = 3650,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Create a self-signed CA (EC P-256, SHA-256)."""
    from pacsguard.tls import TLSConfigError, make_ca

    try:
        cert, key = make_ca(out, cn, days, force=force)
    except TLSConfigError as exc:
        raise _fail(str(exc)) from None
    _written(cert, key)


@app.command("make-cert")
def make_cert_cmd(
    name: Annotated[str, typer.Argument(help="Subject CN and file name (NAME.crt, NAME.key).")],
    ca_cert: Annotated[Path, typer.Option("--ca-cert", help="CA certificate (PEM).")],
    ca_key: Annotated[Path, typer.Option("--ca-key", help="CA private key (PEM).")],
    out: Annotated[Path, typer.Option("--out", help="Output directory.")],
    host: Annotated[Optional[list[str]], typer.Option(
        "--host", help="DNS name or IP address for subjectAltName (repeatable).")] = None,
    client: Annotated[bool, typer.Option("--client", help="Usable as a TLS client.")] = False,
    server: Annotated[bool, typer.Option("--server", help="Usable as a TLS server.")] = False,
    days: Annotated[int, typer.Option("--days", min=1, help="Validity in days.")] = 825,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files.")] = False,
) -> None:
    """Issue a certificate signed by the CA (EC P-256, SHA-256)."""
    if not (client or server):
        raise _fail("choose --server and/or --client")
    from pacsguard.tls import TLSConfigError, make_cert

    try:
        cert, key = make_cert(out, name, ca_cert, ca_key, hosts=list(host or []),
                              client=client, server=server, days=days, force=force)
    except TLSConfigError as exc:
        raise _fail(str(exc)) from None
    _written(cert, key)
