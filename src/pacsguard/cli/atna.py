"""`pacsguard atna listen|sources`: the audit record repository on its own, and its senders."""

from __future__ import annotations

import json
import logging
import os
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import typer

from pacsguard.cli.app import App
from pacsguard.cli.common import CONFIG_OPTION, STORE_OPTION, LogLevel, fail, load, log_level_option, open_store
from pacsguard.cli.events import Format
from pacsguard.cli.gateway import _default_key, _endpoint

app = App(name="atna", no_args_is_help=True,
          help="The audit record repository: IHE ATNA syslog and RESTful audit events in, sources.")


#: The `atna:` key each `atna listen` option fills in (validate_options names the option in errors).
LISTEN_OPTIONS = {"atna.tls": "--tls", "atna.tls.cert_file": "--tls-cert", "atna.tls.key_file": "--tls-key",
                  "atna.tls.ca_file": "--tls-ca", "atna.tcp": "--tcp", "atna.udp": "--udp", "atna.http": "--http",
                  "atna.http.token": "--http-token-env", "atna.max_message": "--max-message",
                  "atna.readers": "--readers", "atna.max_connections": "--max-connections",
                  "atna.frame_timeout": "--frame-timeout", "atna.max_backlog": "--max-backlog"}


@app.command("listen")
def listen(
    tls: str | None = typer.Option(None, "--tls", help="HOST:PORT for syslog over TLS (RFC 5425; 6514 is usual)"),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="the listener's certificate (PEM)"),
    tls_key: Path | None = typer.Option(None, "--tls-key", help="its private key (PEM)"),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="CA whose client certificates are required "
                                       "(mutual TLS, IHE ITI-19)"),
    tcp: str | None = typer.Option(None, "--tcp", help="HOST:PORT for syslog over TCP (RFC 6587)"),
    udp: str | None = typer.Option(None, "--udp", help="HOST:PORT for syslog over UDP (RFC 5426)"),
    http: str | None = typer.Option(None, "--http", help="HOST:PORT for the RESTful ATNA endpoint (ITI-81)"),
    http_token_env: str | None = typer.Option(None, "--http-token-env",
                                              help="environment variable holding the endpoint's bearer token"),
    store: str = typer.Option("var/pacsguard.db", "--store", help="store path or postgresql:// URL"),
    key: Path | None = typer.Option(None, "--key", help="checkpoint signing key (default: STORE.key if it exists, "
                                    "else one named after the store in the key folder, made if missing: "
                                    "$PACSGUARD_KEY_DIR, /etc/pacsguard/keys for root, ~/.config/pacsguard/keys)"),
    max_message: int = typer.Option(1024 * 1024, "--max-message", min=65536, help="largest message, octets"),
    readers: int = typer.Option(0, "--readers", min=0, max=64,
                                help="processes reading the TLS and TCP connections (0: the listener's own loop)"),
    max_connections: int = typer.Option(1000, "--max-connections", min=1, max=100_000,
                                        help="connections open at once per listener and process; more are closed "
                                             "at once and recorded"),
    frame_timeout: float = typer.Option(60.0, "--frame-timeout", min=0.1, max=3600,
                                        help="seconds from a frame's first octet to its last, and for a TLS "
                                             "handshake; a slower sender is closed and recorded"),
    max_backlog: int = typer.Option(50_000, "--max-backlog", min=100, max=200_000,
                                    help="events waiting to be stored at which the TLS and TCP senders are held "
                                         "back (read again at half of it)"),
    log_level: LogLevel = log_level_option(LogLevel.warning),
) -> None:
    """Receive audit messages without a configuration file, recording each into --store."""
    from pacsguard.atna.collector import tune_for_ingest
    from pacsguard.atna.config import AtnaConfig
    from pacsguard.atna.service import AtnaService
    from pacsguard.cli.common import console, quiet_libraries, validate_options
    from pacsguard.cli.serve import show_banner
    from pacsguard.events.durable import Durability
    from pacsguard.runtime import outputs
    from pacsguard.runtime.services import run_foreground
    from pacsguard.store import keys

    logging.basicConfig(level=log_level.value.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    section: dict[str, Any] = {"enabled": True, "max_message": max_message, "readers": readers,
                               "max_connections": max_connections, "frame_timeout": frame_timeout,
                               "max_backlog": max_backlog}
    if tls is not None:
        host, port = _endpoint(tls, "--tls")
        if tls_cert is None or tls_key is None:
            raise fail("--tls needs --tls-cert and --tls-key")
        section["tls"] = {"host": host, "port": port, "cert_file": tls_cert, "key_file": tls_key,
                          "ca_file": tls_ca, "require_client_cert": tls_ca is not None}
    for name, value in (("tcp", tcp), ("udp", udp)):
        if value is not None:
            host, port = _endpoint(value, f"--{name}")
            section[name] = {"host": host, "port": port}
    if http is not None:
        host, port = _endpoint(http, "--http")
        if not http_token_env:  # the endpoint always asks for a credential (docs/audit.md)
            raise fail("--http needs --http-token-env NAME: the environment variable holding its bearer token")
        if not os.environ.get(http_token_env):
            # Named by the option given, not by `atna.http.token`, a key of a file this command has not;
            # an empty token would start an endpoint that refuses every client (RFC 6750 2.1: b64token).
            raise fail(f"--http-token-env {http_token_env}: the environment variable is not set or is empty; "
                       f"export {http_token_env}=TOKEN (the endpoint's bearer token) first")
        section["http"] = {"host": host, "port": port, "token": {"env": http_token_env}}
    if not ({"tls", "tcp", "udp", "http"} & set(section)):
        raise fail("give at least one of --tls, --tcp, --udp, --http")
    config = validate_options(AtnaConfig, section, LISTEN_OPTIONS, prefix="atna")
    # As `gateway run`: a key an earlier version made beside the store is kept, a new one goes to
    # the key folder, so that a copy of the store's folder never carries the key (docs/store.md).
    key_path = key or _default_key(store)
    if not key_path.exists():
        keys.generate_key(key_path)
        console.print(f"generated checkpoint signing key {key_path}")
    with ExitStack() as stack:
        es = outputs.open_store(store, key=key_path, create=True, key_role="--key" if key else "")
        bus = outputs.open_outputs(stack, es).bus
        service = AtnaService(config, bus.publish, es, durability=Durability(bus) if http else None,
                              backlog=lambda: bus.backlog)
        tune_for_ingest()
        run_foreground([service], show_banner, [("store", es.name, f"{es.size()} events")])


@app.command("sources")
def sources(
    since: str | None = typer.Option(None, "--since", help="count from this time (ISO 8601)"),
    fmt: Format = typer.Option(Format.table, "--format", help="table or json"),
    config: Path | None = CONFIG_OPTION,
    store: str | None = STORE_OPTION,
) -> None:
    """Every sender with its counts: messages, malformed frames, wrong framing, missing MSGID,
    unparsable XML, silent connections, failed TLS handshakes, syslog connections refused on a full
    listener, refused HTTP requests, and the last error."""
    from pacsguard.atna.sources import count_sources, recorded
    from pacsguard.cli.events import _when

    es = open_store(load(config, required=store is None), store)
    try:
        # --since is a time of receipt, not the messages' EventDateTime (pacsguard.atna.sources).
        rows = count_sources(recorded(es, _when(since, "since")))
    finally:
        es.close()
    if fmt is Format.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    from pacsguard.cli.layout import Column, render, terminal_width, write_lines

    columns = (Column("sender"), Column("via"), Column("messages"), Column("malformed frames"),
               Column("wrong framing"), Column("missing MSGID"), Column("unparsable XML"), Column("silent"),
               Column("TLS failed"), Column("refused"), Column("HTTP refused"), Column("last error", fold=True))
    write_lines(render(columns, [[r.sender, ",".join(r.transports), str(r.messages), str(r.malformed_frames),
                                  str(r.wrong_framing), str(r.missing_msgid), str(r.unparsable_xml),
                                  str(r.silent_connections), str(r.tls_failed), str(r.refused_connections),
                                  str(r.http_refused),
                                  r.last_error or ""]
                                 for r in rows], terminal_width()))
