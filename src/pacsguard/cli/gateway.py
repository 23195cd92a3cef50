"""`pacsguard gateway run|quarantine|spool`: the one-route quick start, the quarantine switch and the
store-and-forward spool (pacsguard.cli.spool)."""

from __future__ import annotations

import getpass
import logging
import re
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pacsguard.cli.app import App
from pacsguard.cli.common import CONFIG_OPTION, STORE_OPTION, LogLevel, fail, load, log_level_option, open_store, shown
from pacsguard.cli.spool import app as spool_app

if TYPE_CHECKING:
    from pacsguard.gateway.quarantine import QuarantineList
    from pacsguard.store import EventStore

app = App(name="gateway", no_args_is_help=True, help="The DICOM security gateway.")
quarantine_app = App(name="quarantine", no_args_is_help=True,
                     help="Cut a host or AE title off at once, on every gateway using this store.")
app.add_typer(quarantine_app)
app.add_typer(spool_app)


def _endpoint(text: str, option: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()):
        raise fail(f"{option}: expected HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


#: The route key each `gateway run` option fills in (validate_options names the option in errors).
RUN_OPTIONS = {"routes.0.listen.host": "--listen", "routes.0.listen.port": "--listen",
               "routes.0.listen.ae_title": "--aet", "routes.0.upstream": "--upstream",
               "routes.0.policy.calling_ae_titles": "--allow-calling",
               "routes.0.policy.hosts": "--allow-host", "routes.0.policy.services": "--allow-service",
               "routes.0.policy.move_destinations": "--allow-move-destination",
               "routes.0.listen.tls": "--tls-cert, --tls-key, --tls-ca, --require-client-cert",
               "routes.0.listen.tls.cert_file": "--tls-cert", "routes.0.listen.tls.key_file": "--tls-key",
               "routes.0.listen.tls.ca_file": "--tls-ca", "routes.0.upstream.tls.ca_file": "--upstream-tls-ca",
               "routes.0.upstream.tls.cert_file": "--upstream-tls-cert",
               "routes.0.upstream.tls.key_file": "--upstream-tls-key", "routes.0.limits.max_pdu_length": "--max-pdu",
               "routes.0.on_record_failure": "--on-record-failure"}


@app.command("run")
def run(
    listen: str = typer.Option(..., "--listen", help="HOST:PORT to listen on (loopback unless you say otherwise)"),
    aet: str = typer.Option(..., "--aet", help="the gateway's AE title, which modalities call"),
    upstream: str = typer.Option(..., "--upstream", help="the PACS as AET@HOST:PORT"),
    allow_calling: list[str] = typer.Option(None, "--allow-calling", help="allowed calling AE title (repeat)"),
    allow_host: list[str] = typer.Option(None, "--allow-host", help="allowed source address or CIDR (repeat)"),
    allow_service: list[str] = typer.Option(None, "--allow-service", help="C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET, "
                                            "storage-commitment, N-* (repeat; default: the five C- services)"),
    allow_move_dest: list[str] = typer.Option(None, "--allow-move-destination", help="allowed C-MOVE destination AE"),
    tls_cert: Path | None = typer.Option(None, "--tls-cert", help="serve TLS with this certificate"),
    tls_key: Path | None = typer.Option(None, "--tls-key"),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="CA for client certificates"),
    require_client_cert: bool = typer.Option(False, "--require-client-cert"),
    upstream_tls_ca: Path | None = typer.Option(None, "--upstream-tls-ca",
                                                help="speak TLS to the upstream, verified by this CA"),
    upstream_tls_cert: Path | None = typer.Option(None, "--upstream-tls-cert"),
    upstream_tls_key: Path | None = typer.Option(None, "--upstream-tls-key"),
    max_pdu: int | None = typer.Option(None, "--max-pdu", help="largest PDU the gateway accepts, bytes; each peer "
                                       "is told at most this Maximum Length (default 4194304)"),
    store: str = typer.Option("var/pacsguard.db", "--store", help="store path or postgresql:// URL"),
    key: Path | None = typer.Option(None, "--key", help="checkpoint signing key (default: STORE.key if it exists, "
                                    "else one named after the store in the key folder, made if missing: "
                                    "$PACSGUARD_KEY_DIR, /etc/pacsguard/keys for root, ~/.config/pacsguard/keys)"),
    journal: str = typer.Option("auto", "--journal",
                                help="where events are durable before the store's commit: auto (beside an SQLite "
                                "store; none for PostgreSQL), none, or a path on this host (docs/store.md)"),
    record_first: bool = typer.Option(True, "--record-before-response/--respond-before-record",
                                      help="hold each answer until its record is durable (default), or answer "
                                      "at once and record after (docs/gateway.md)"),
    on_record_failure: str = typer.Option("refuse", "--on-record-failure",
                                          help="refuse or relay while events cannot be recorded"),
    log_level: LogLevel = log_level_option(LogLevel.info),
) -> None:
    """One route without a configuration file, in dcmtk's spirit; records to --store."""
    from pacsguard.cli.common import console, quiet_libraries, validate_options
    from pacsguard.cli.serve import announce_stopping, show_banner
    from pacsguard.config.schema import GatewayConfig
    from pacsguard.events.durable import Durability
    from pacsguard.gateway.service import GatewayService
    from pacsguard.ids.part import rule_engine
    from pacsguard.runtime import outputs
    from pacsguard.runtime.services import run_foreground
    from pacsguard.store import keys

    logging.basicConfig(level=log_level.value.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    match = re.fullmatch(r"([^@]+)@(.+)", upstream)
    if not match:
        raise fail(f"--upstream: expected AET@HOST:PORT, got {upstream!r}")
    up_host, up_port = _endpoint(match.group(2), "--upstream")
    host, port = _endpoint(listen, "--listen")
    route: dict[str, Any] = {"name": "cli", "listen": {"host": host, "port": port, "ae_title": aet},
                   "upstream": {"host": up_host, "port": up_port, "ae_title": match.group(1)},
                   "policy": {"calling_ae_titles": allow_calling or None, "hosts": allow_host or None,
                              "move_destinations": allow_move_dest or []}}
    if allow_service:
        route["policy"]["services"] = allow_service
    route["record_before_response"] = record_first
    route["on_record_failure"] = on_record_failure
    if max_pdu is not None:
        route["limits"] = {"max_pdu_length": max_pdu}
    if (tls_cert is None) != (tls_key is None):
        raise fail("--tls-cert and --tls-key go together: the gateway's certificate and its private key")
    if tls_cert or tls_key:
        route["listen"]["tls"] = {"cert_file": tls_cert, "key_file": tls_key, "ca_file": tls_ca,
                                  "require_client_cert": require_client_cert}
    if upstream_tls_ca or upstream_tls_cert:
        route["upstream"]["tls"] = {"ca_file": upstream_tls_ca, "cert_file": upstream_tls_cert,
                                    "key_file": upstream_tls_key}
    config = validate_options(GatewayConfig, {"routes": [route]}, RUN_OPTIONS)
    key_path = key or _default_key(store)
    if not key_path.exists():
        keys.generate_key(key_path)
        console.print(f"generated checkpoint signing key {key_path}")
    engine = rule_engine(load(None, required=False))
    with ExitStack() as stack:
        es = outputs.open_store(store, key=key_path, create=True, key_role="--key" if key else "")
        bus = outputs.open_outputs(stack, es, journal=outputs.journal_setting(journal)).bus
        service = GatewayService(config, bus.publish_ticket, es, engine=engine, durability=Durability(bus))
        run_foreground([service], show_banner, [("store", es.name, f"{es.size()} events")],
                       on_stopping=announce_stopping)


def _default_key(store: str) -> Path:
    """A key found where earlier versions made it (beside the store, or ./pacsguard-store.key for a
    URL) is kept; a new one goes to the key folder, off the store's folder (docs/store.md)."""
    from pacsguard.store import keys

    legacy = keys.beside_store(store) or Path("pacsguard-store.key")
    return legacy if legacy.exists() else keys.default_key(store)


def _duration(text: str | None) -> timedelta | None:
    if text is None:
        return None
    match = re.fullmatch(r"(\d+)\s*([smhd])", text.strip())
    if not match:
        raise fail(f"--for: expected a duration such as 90s, 30m, 12h or 7d, got {text!r}")
    unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
    return timedelta(**{unit: int(match.group(1))})


def _open(config: Path | None, store: str | None) -> EventStore:
    return open_store(load(config, required=store is None), store)


@quarantine_app.command("add")
def quarantine_add(target: str = typer.Argument(..., help="host address, AE title, or AE@host"),
                   duration: str | None = typer.Option(None, "--for",
                                                       help="e.g. 30m, 12h, 7d (default: until removed)"),
                   reason: str = typer.Option("", "--reason", help="why, for the audit trail"),
                   config: Path | None = CONFIG_OPTION, store: str | None = STORE_OPTION) -> None:
    """Block a device now: new associations are rejected, open ones aborted within a second."""
    from pacsguard.cli.common import console
    from pacsguard.gateway import quarantine as q

    try:
        target = q.check_target(target)
    except ValueError as exc:
        raise fail(f"TARGET {exc}") from None
    es = _open(config, store)
    try:
        event = q.change_event("add", target, duration=_duration(duration), reason=reason, user=getpass.getuser())
        es.append([event])
    finally:
        es.close()
    console.print(f"[bold]{shown(event.message)}[/] (recorded as event {event.id})", highlight=False)


@quarantine_app.command("remove")
def quarantine_remove(target: str = typer.Argument(...), config: Path | None = CONFIG_OPTION,
                      store: str | None = STORE_OPTION) -> None:
    """Let a device back in."""
    from pacsguard.cli.common import console
    from pacsguard.gateway import quarantine as q

    try:
        target = q.check_target(target)  # the spelling `add` kept (spaces, ::ffff:, IPv6 case)
    except ValueError as exc:
        raise fail(f"TARGET {exc}") from None
    es = _open(config, store)
    try:
        if target not in {entry.target for entry in _current(es).active()}:
            raise fail(f"{target} is not quarantined (`gateway quarantine list` shows what is)", code=1)
        es.append([q.change_event("remove", target, user=getpass.getuser())])
    finally:
        es.close()
    console.print(f"released {shown(target)} from quarantine", highlight=False)


@quarantine_app.command("list")
def quarantine_list(config: Path | None = CONFIG_OPTION, store: str | None = STORE_OPTION) -> None:
    """The devices quarantined now."""
    from pacsguard.cli.layout import Column, printable, render, terminal_width, write_lines

    es = _open(config, store)
    try:
        entries = _current(es).active()
    finally:
        es.close()
    if not entries:
        write_lines(["no device is quarantined"])
        return
    # Targets are never folded; piped, each device is one line (docs/cli.md).
    columns = (Column("target"), Column("until (UTC)"), Column("reason", fold=True), Column("by"))
    rows = [[printable(e.target), e.until.strftime("%Y-%m-%d %H:%M:%S") if e.until else "until removed",
             printable(e.reason), printable(e.by)] for e in entries]
    write_lines(render(columns, rows, terminal_width()))


def _current(es: EventStore) -> QuarantineList:
    """The quarantine as the running gateway folds it, from the same query."""
    from pacsguard.gateway.quarantine import QuarantineList
    from pacsguard.gateway.service import quarantine_reader

    current = QuarantineList()
    for _, event in quarantine_reader(es)(-1):
        current.apply(event)
    return current
