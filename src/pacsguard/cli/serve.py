"""`pacsguard init` and `pacsguard serve`: the main job."""

from __future__ import annotations

import logging
from contextlib import ExitStack
from pathlib import Path

import typer
from pacsguard import __version__
from pacsguard.cli.common import (CONFIG_OPTION, build_engine, config_path, console, fail, guarded, ids_settings, load,
                                  open_store)
from pacsguard.cli.runner import run_foreground
from pacsguard.config import LoadedConfig
from pacsguard.events import Event, EventBus, FanOut
from pacsguard.events.sink import EventSink
from pacsguard.store import keys

log = logging.getLogger("pacsguard")

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
         demo: bool = typer.Option(True, "--demo/--no-demo", help="write the demo configuration if none exists")) -> None:
    """Write a configuration (if none), generate the checkpoint signing key (if none) and create the store."""
    path = config_path(config)
    if not path.exists():
        if not demo:
            raise fail(f"{path}: no configuration; write one (docs/configuration.md) or use --demo")
        path.write_text(DEMO_CONFIG)
        console.print(f"wrote {path}")
    loaded = load(path)
    key_path = loaded.resolve(loaded.config.store.signing_key)
    if key_path.exists():
        console.print(f"signing key {key_path} exists, kept")
    else:
        keys.generate_key(key_path)
        console.print(f"generated Ed25519 signing key {key_path} (public half: {keys.public_path(key_path)})")
    es = open_store(loaded, None, writer=True, create=True)
    console.print(f"store {es.name} ready ({es.size()} events)")
    es.close()


@guarded
def serve(config: Path | None = CONFIG_OPTION,
          log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error")) -> None:
    """Run the services the configuration names, in the foreground, until Ctrl-C or SIGTERM."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # pynetdicom (the demo PACS) and Alembic narrate every step at INFO; their warnings still show.
    for noisy in ("pynetdicom", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    loaded = load(config)
    engine = build_engine(ids_settings(loaded)) if loaded.config.gateway.routes else None
    with ExitStack() as stack:
        es = open_store(loaded, None, writer=True, create=True)
        stack.callback(es.close)
        sink = FanOut(es, build_sinks(loaded, stack), on_error=lambda s, e: log.warning("sink %s: %s", type(s).__name__, e))
        bus = EventBus(sink)
        stack.callback(bus.close)
        listeners: list[tuple[str, str, str]] = [("store", es.name, f"{es.size()} events")]
        bus.publish(Event(kind="pacsguard.service.started", component="serve",
                          message=f"pacsguard {__version__} started", details={"config": str(loaded.path)}))
        stack.callback(lambda: bus.publish(Event(kind="pacsguard.service.stopped", component="serve",
                                                 message="pacsguard stopped")))
        start_demo(loaded, stack, listeners)
        run_foreground(stack, bus, es, loaded.config.gateway, loaded.resolve, listeners, engine)


def build_sinks(loaded: LoadedConfig, stack: ExitStack) -> list[EventSink]:
    """The secondary sinks of the configuration: JSON lines and syslog."""
    sinks: list[EventSink] = []
    cfg = loaded.config.sinks
    if cfg.jsonl is not None:
        from pacsguard.sinks import JsonLinesSink

        sinks.append(JsonLinesSink(loaded.resolve(cfg.jsonl.path)))
    if cfg.syslog is not None:
        from pacsguard.sinks import SyslogSink
        from pacsguard.tls import client_context

        s = cfg.syslog
        context = None
        if s.transport == "tls":
            context = client_context(ca_file=s.ca_file and loaded.resolve(s.ca_file),
                                     cert_file=s.cert_file and loaded.resolve(s.cert_file),
                                     key_file=s.key_file and loaded.resolve(s.key_file))
        sinks.append(SyslogSink(s.host, s.port, transport=s.transport, ssl_context=context))
    for sink in sinks:
        stack.callback(sink.close)
    return sinks


def start_demo(loaded: LoadedConfig, stack: ExitStack, listeners: list[tuple[str, str, str]]) -> None:
    demo = loaded.config.demo_upstream
    if not demo.enabled:
        return
    from pacsguard.demo import DemoPACS

    pacs = DemoPACS(demo.ae_title, demo.host, demo.port, loaded.resolve(demo.storage), {})
    pacs.start()
    stack.callback(pacs.stop)
    listeners.append(("demo upstream (DICOM SCP)", f"{demo.ae_title}@{demo.host}:{demo.port}",
                      f"storage {loaded.resolve(demo.storage)}"))
