"""`pacsguard init` and `pacsguard serve`: the main job."""

from __future__ import annotations

from contextlib import ExitStack
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from pacsguard import __version__
from pacsguard.cli.common import CONFIG_OPTION, LogLevel, config_path, fail, guarded, load, log_level_option, open_store
from pacsguard.cli.layout import Column
from pacsguard.runtime.registry import Registry

if TYPE_CHECKING:
    from pacsguard.config.loader import LoadedConfig
    from pacsguard.runtime.part import BannerRow


class LogFormat(str, Enum):
    text = "text"
    json = "json"


DEMO_CONFIG = """\
# pacsguard configuration: every key is described in docs/configuration.md.
# Relative paths are relative to the folder of this file.
store:
  url: var/pacsguard.db                 # SQLite file, or postgresql://USER@HOST:PORT/DB
  signing_key: var/keys/store-signing.key
  checkpoint_interval: 60               # seconds between signed checkpoints

# The gateway: modalities call PACSGUARD@127.0.0.1:11112 instead of the PACS (docs/gateway.md).
gateway:
  routes:
    - name: demo
      listen: {host: 127.0.0.1, port: 11112, ae_title: PACSGUARD}
      upstream: {host: 127.0.0.1, port: 11113, ae_title: DEMOPACS}
      policy:
        hosts: [127.0.0.0/8]              # only this machine
        services: [C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET]
        move_destinations: []             # C-MOVE to nowhere until a destination is listed

# An embedded DICOM storage/query SCP so the demo needs no PACS. Not an archive: turn it off in production.
demo_upstream:
  enabled: true
  host: 127.0.0.1
  port: 11113
  ae_title: DEMOPACS
  storage: var/demo-pacs
"""


@guarded
def init(config: Path | None = CONFIG_OPTION,
         demo: bool = typer.Option(True, "--demo/--no-demo",
                                   help="write the demo configuration if none exists")) -> None:
    """Write a configuration (if none), generate the checkpoint signing key (if none) and create the store."""
    from pacsguard.cli.common import console
    from pacsguard.store import keys

    path = config_path(config)
    if not path.exists():
        if not demo:
            raise fail(f"{path}: no configuration; write one (docs/configuration.md) or use --demo")
        write_demo_config(path)
        console.print(f"wrote {path}")
    loaded = load(path)
    key_path = loaded.resolve(loaded.config.store.signing_key)
    if key_path.exists() and not key_path.is_file():
        # Not "exists, kept" and then "[Errno 21] Is a directory" from the store: the key named as such.
        raise fail(f"store.signing_key: {key_path} is not a file (a folder?); name the key file, or a path "
                   "where `pacsguard init` can write one")
    if key_path.exists():
        console.print(f"signing key {key_path} exists, kept")
    else:
        keys.generate_key(key_path)
        console.print(f"generated Ed25519 signing key {key_path} (public half: {keys.public_path(key_path)})")
    es = open_store(loaded, None, writer=True, create=True)
    console.print(f"store {es.name} ready ({es.size()} events)")
    es.close()


def write_demo_config(path: Path) -> None:
    """The demo configuration written to ``path``. Its folder must exist: init does not make it as
    `mkdir -p` would, since a mistyped folder (`/etc/pacsgaurd/`) would then hold a configuration
    that no later `-c` finds; the error names the folder and what to do, not a bare "[Errno 2]"."""
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        raise fail(f"{folder}: a file, not a folder, so {path.name} cannot be written in it; give -c a file "
                   "in a folder")
    if not folder.exists():
        raise fail(f"{folder}: no such folder, so {path.name} cannot be written there; create it first "
                   f"(mkdir -p {folder}) or give -c a file in an existing folder")
    try:
        path.write_text(DEMO_CONFIG)
    except PermissionError:
        raise fail(f"{path}: cannot be written (permission denied in {folder}); run init as a user who may "
                   "write there, or give -c a file in a folder you own") from None


@guarded
def serve(config: Path | None = CONFIG_OPTION,
          log_level: LogLevel = log_level_option(LogLevel.info),
          log_format: LogFormat = typer.Option(LogFormat.text, "--log-format",
                                               help="text, or json: one JSON object per line (journald)")) -> None:
    """Run the services the configuration names, in the foreground, until Ctrl-C, SIGTERM or a hang-up
    (SIGHUP: the terminal's session ended; ignored under nohup)."""
    from pacsguard.cli.common import quiet_libraries
    from pacsguard.cli.config import tls_problems
    from pacsguard.cli.jsonlog import configure_logging
    from pacsguard.config.loader import ConfigError, load_config
    from pacsguard.events import Event, Outcome, Severity
    from pacsguard.runtime.outputs import open_configured_outputs
    from pacsguard.runtime.services import build_services, run_foreground

    configure_logging(log_level.value, log_format.value)
    quiet_libraries()
    registry = Registry.default()
    file = config_path(config)
    loaded = load_config(file, registry.config_model())
    # Every TLS file before anything starts, each problem named by its key, as `config check` does:
    # a service's own error would name the file only, once the store and the others were open.
    tls = tls_problems(loaded)
    if tls:
        raise ConfigError(str(file), tls)
    with ExitStack() as stack:
        outputs = open_configured_outputs(stack, loaded)
        es, bus = outputs.store, outputs.bus
        assert es is not None  # serve always records into the configuration's store
        services = build_services(registry, loaded, bus, es)
        bus.publish(Event(kind="pacsguard.service.started", component="serve",
                          message=f"pacsguard {__version__} started", details={"config": str(loaded.path)}))
        try:
            run_foreground(services, show_banner, [("config", str(loaded.path), "the file in use"),
                                                   ("store", es.name, f"{es.size()} events"), *sink_rows(loaded)],
                           on_stopping=announce_stopping)
        except Exception as exc:
            # A service that could not start (a port in use, a missing certificate) is a failed
            # run in the audit trail too, not a clean stop.
            bus.publish(Event(kind="pacsguard.service.stopped", component="serve", severity=Severity.ERROR,
                              outcome=Outcome.MAJOR_FAILURE, message=f"pacsguard stopped: {exc}",
                              details={"error": str(exc)}))
            raise
        except BaseException:  # Ctrl-C before the loop took over the signals: a stop all the same
            bus.publish(Event(kind="pacsguard.service.stopped", component="serve", message="pacsguard stopped"))
            raise
        bus.publish(Event(kind="pacsguard.service.stopped", component="serve", message="pacsguard stopped"))


def sink_rows(loaded: LoadedConfig) -> list[BannerRow]:
    """One banner row per secondary sink of the configuration (the store is the primary one)."""
    sinks = loaded.config.sinks
    rows: list[BannerRow] = []
    if sinks.jsonl is not None:
        rows.append(("sink: JSON lines", str(loaded.resolve(sinks.jsonl.path)), f"format {sinks.jsonl.format}"))
    if sinks.syslog is not None:
        s = sinks.syslog
        rows.append(("sink: syslog (RFC 5424)", f"{s.host}:{s.port}",
                     f"{s.transport}, facility {s.facility}, format {s.format}"))
    return rows


def announce_stopping() -> None:
    from pacsguard.cli.common import console

    console.print("stopping: letting open associations finish (5 s at most)...")


def show_banner(rows: list[BannerRow]) -> None:
    """What listens where, as serve and `gateway run` print it once everything has started."""
    from pacsguard.cli.layout import render, terminal_width, write_lines

    # Addresses, ports and paths never fold: a narrow terminal gets one block per service instead.
    columns = (Column("service"), Column("listening on / using"), Column("notes"))
    write_lines([f"pacsguard {__version__} is running (Ctrl-C stops it)",
                 *render(columns, rows, terminal_width())])
