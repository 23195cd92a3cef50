"""The registry of parts: config assembly, the live bus subscription, a part whose optional
dependency is missing, the smallest possible part (a heartbeat), and a CLI that starts lazily."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import pytest
from pydantic import Field
from typer.testing import CliRunner

from module_probe import run_listing_modules
from pacsguard.cli import main
from pacsguard.config import ConfigError, LoadedConfig, parse_config
from pacsguard.config.strict import Strict
from pacsguard.events import Event, EventBus
from pacsguard.runtime.outputs import open_config_store, open_outputs
from pacsguard.runtime.part import BannerRow, Dependency, Part, ServiceContext
from pacsguard.runtime.registry import Registry
from pacsguard.runtime.services import build_services, run_services
from pacsguard.store import EventQuery
from pacsguard.store.keys import generate_key


class ListSink:
    """Keeps the events it is given, in memory."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, events: Sequence[Event]) -> None:
        self.events.extend(events)

    def close(self) -> None:
        pass


def _problems(text: str, registry: Registry | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "p.yaml", registry.config_model() if registry else None)
    return [str(p) for p in info.value.problems]


# --------------------------------------------------------------------------- registry and config


def test_default_registry_lists_the_parts_in_start_order() -> None:
    names = [p.name for p in Registry.default()]
    assert names == ["init", "serve", "config", "events", "audit", "store", "tls", "demo", "gateway", "ids", "metrics",
                     "scan", "deid", "atna", "witness"]
    assert [p.section for p in Registry.default().with_config()] == ["demo_upstream", "gateway", "ids", "metrics",
                                                                      "scan", "deid", "atna", "witness"]


def test_a_part_name_or_section_is_registered_once() -> None:
    registry = Registry.default()
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Part("gateway", "again"))
    with pytest.raises(ValueError, match="section 'store' is already taken"):
        registry.register(Part("other", "x", section="store", config=lambda: Strict))


def test_the_ids_section_is_validated_by_the_ids_model_with_its_key_path() -> None:
    assert _problems("ids:\n  internal_networks: [10.0.0.0/33]\n")[0].startswith("ids.internal_networks")
    assert _problems("ids:\n  colour: red\n") == ["ids.colour: unknown key (check its spelling and section)"]
    assert parse_config("ids:\n  dicom_ports: [104]\n").ids.dicom_ports == [104]


# --------------------------------------------------------------------------- subscribe


def test_subscribers_follow_written_events_and_a_failing_one_breaks_nothing() -> None:
    sink = ListSink()
    bus = EventBus(sink, max_delay=0.01)
    seen: list[str] = []
    got_all = threading.Event()

    def follow(event: Event) -> None:
        seen.append(event.kind)
        if len(seen) == 3:
            got_all.set()

    def explode(event: Event) -> None:
        raise RuntimeError("subscriber bug")

    def slow(event: Event) -> None:
        time.sleep(10)

    bus.subscribe(explode)
    sleepy = bus.subscribe(slow, max_pending=1)
    sub = bus.subscribe(follow)
    started = time.monotonic()
    for n in range(3):
        bus.publish(Event(kind=f"test.k{n}", component="test", message="m"))
    assert bus.flush(5) and time.monotonic() - started < 5  # the slow subscriber held nothing up
    assert got_all.wait(5) and seen == ["test.k0", "test.k1", "test.k2"]
    assert [e.kind for e in sink.events] == seen
    assert sleepy.dropped >= 1  # it fell behind and missed events instead of blocking the writer
    sub.unsubscribe()
    bus.publish(Event(kind="test.after", component="test", message="m"))
    assert bus.flush(5) and seen == ["test.k0", "test.k1", "test.k2"]
    sleepy.unsubscribe(timeout=0)
    bus.close(timeout=1)


# --------------------------------------------------------------------------- missing optional dependency


def _registering(monkeypatch: pytest.MonkeyPatch, part: Part) -> None:
    """Registry.default() with one more part, as a part package added later would be."""
    built = Registry.default

    def default(cls: type[Registry]) -> Registry:
        registry = built()
        registry.register(part)
        return registry

    monkeypatch.setattr(Registry, "default", classmethod(default))


def test_a_part_missing_its_dependency_is_listed_and_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    _registering(monkeypatch, Part("scanner", "A part that needs a package that is not installed.",
                                   commands="pacsguard.cli.config:app", requires=(
                                       Dependency("pacsguard_no_such_package", "pip install pacsguard-no-such"),)))
    runner = CliRunner()
    listing = runner.invoke(main.app, ["--help"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0 and "scanner" in listing.output and "not installed" in listing.output
    result = runner.invoke(main.app, ["scanner", "check"])
    assert result.exit_code == 2
    assert "pacsguard_no_such_package" in result.output and "pip install pacsguard-no-such" in result.output


# --------------------------------------------------------------------------- the smallest part: a heartbeat


class HeartbeatConfig(Strict):
    interval: float = Field(1.0, gt=0, description="seconds between two heartbeat events")


class HeartbeatService:
    needs_asyncio_loop = False

    def __init__(self, ctx: ServiceContext) -> None:
        self.config: HeartbeatConfig = ctx.section
        self.publish = ctx.bus.publish
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> list[BannerRow]:
        self.task = asyncio.get_running_loop().create_task(self._beat())
        return [("heartbeat", f"every {self.config.interval:g} s", "")]

    async def _beat(self) -> None:
        while True:
            self.publish(Event(kind="heartbeat", component="heartbeat", message="alive"))
            await asyncio.sleep(self.config.interval)

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()


HEARTBEAT = Part("heartbeat", "Publishes a heartbeat event every interval.", section="heartbeat",
                 config=lambda: HeartbeatConfig, service=lambda: HeartbeatService)


def test_heartbeat_part_runs_under_serve_and_its_section_is_checked(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _registering(monkeypatch, HEARTBEAT)
    registry = Registry.default()
    bad = _problems("heartbeat:\n  interval: 0\n", registry)
    assert bad[0].startswith("heartbeat.interval: Input should be greater")
    unknown = _problems("heartbeat:\n  beat: 1\n", registry)
    assert unknown == ["heartbeat.beat: unknown key (check its spelling and section)"]
    config = tmp_path / "pacsguard.yaml"
    config.write_text("heartbeat:\n  interval: 0.02\n")
    loaded = LoadedConfig(parse_config(config.read_text(), str(config), registry.config_model()), config)
    generate_key(loaded.resolve(loaded.config.store.signing_key))
    rows: list[BannerRow] = []
    with ExitStack() as stack:
        store = open_config_store(loaded, writer=True, create=True)
        bus = open_outputs(stack, store).bus
        services = build_services(registry, loaded, bus, store)
        assert [type(s).__name__ for s in services] == ["HeartbeatService"]  # gateway and demo: nothing enabled

        async def run() -> None:
            stop = asyncio.Event()
            asyncio.get_running_loop().call_later(0.3, stop.set)
            await run_services(services, stop, rows.extend)

        asyncio.run(run())
    assert rows == [("heartbeat", "every 0.02 s", "")]
    reader = open_config_store(loaded)
    beats = [s.event.kind for s in reader.search(EventQuery(kind="heartbeat", limit=None))]
    reader.close()
    assert len(beats) >= 3
    # `config check` validates the new section through the registry, naming the key it rejects.
    assert "heartbeat (heartbeat): OK" in CliRunner().invoke(main.app, ["config", "check", str(config)]).output
    config.write_text("heartbeat:\n  interval: -1\n")
    result = CliRunner().invoke(main.app, ["config", "check", str(config)])
    assert result.exit_code == 2 and "heartbeat.interval" in result.output


def test_config_check_reports_every_part(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("gateway:\n  quarantine_poll_interval: 0\n")
    result = CliRunner().invoke(main.app, ["config", "check", str(tmp_path / "p.yaml")], env={"COLUMNS": "200"})
    assert result.exit_code == 2
    assert "gateway.quarantine_poll_interval" in result.output and "gateway (gateway): 1 problem" in result.output
    assert "ids (ids): OK" in result.output


# --------------------------------------------------------------------------- lazy start-up

HEAVY = ("pydantic", "sqlalchemy", "alembic", "pydicom", "pynetdicom",
         "pacsguard.gateway.server", "pacsguard.ids.engine")


GROUPS = ("init", "serve", "config", "events", "audit", "store", "tls", "gateway", "ids", "scan", "deid", "atna",
          "witness")


@pytest.mark.parametrize("args", [["--version"], ["--help"], *([group, "--help"] for group in GROUPS),
                                  ["ids", "read", "--help"], ["ids", "rules", "list", "--help"],
                                  ["gateway", "quarantine", "--help"], ["deid", "explain", "--help"]])
def test_version_and_help_import_nothing_heavy(args: list[str]) -> None:
    proc, loaded = run_listing_modules(args, {**os.environ, "COLUMNS": "200"})
    assert not [m for m in loaded if m.split(".")[0] in HEAVY or m in HEAVY], proc.stdout[-2000:]
    assert "pacsguard" in proc.stdout
    if "--help" in args:
        assert f"Usage: pacsguard {' '.join(args[:-1])}".rstrip() in proc.stdout, proc.stdout[-2000:]


def test_every_group_is_tested_for_a_light_help() -> None:
    assert {p.name for p in Registry.default() if p.commands is not None} == set(GROUPS)


def test_a_group_lists_each_command_with_its_whole_first_paragraph() -> None:
    result = CliRunner().invoke(main.app, ["ids", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "live Run the IDS rules over live traffic until Ctrl-C, SIGTERM or --duration; exit 1 if any alert fired." \
        in text, result.output
