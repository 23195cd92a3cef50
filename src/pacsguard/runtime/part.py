"""A part of pacsguard (DESIGN.md "Seams"): its name, its section of pacsguard.yaml, its service and
its commands, all referenced lazily so that listing the parts imports none of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    from pacsguard.config import LoadedConfig
    from pacsguard.events import EventBus
    from pacsguard.store import EventStore

#: A lazy reference: "package.module:attribute", or a zero-argument function returning the object.
Ref = str | Callable[[], Any]

#: One row of serve's banner: service, where it listens or what it uses, notes.
BannerRow = tuple[str, str, str]


def load_ref(ref: Ref) -> Any:
    """The object a reference names, importing its module now."""
    if callable(ref):
        return ref()
    module, _, attribute = ref.partition(":")
    return getattr(import_module(module), attribute)


@dataclass(frozen=True, slots=True)
class Dependency:
    """An optional package a part needs: the name it is imported by and how to install it."""

    module: str
    install: str

    def present(self) -> bool:
        try:
            return find_spec(self.module) is not None
        except (ImportError, ValueError):  # a parent package missing, or a broken module spec
            return False


class MissingDependency(Exception):
    """A part was asked for but an optional package it needs is not installed."""

    def __init__(self, part: str, missing: list[Dependency]) -> None:
        self.part = part
        self.missing = missing
        names = ", ".join(d.module for d in missing)
        how = "; ".join(d.install for d in missing)
        super().__init__(f"{part} needs {names}, which is not installed (install it: {how})")


class Service(Protocol):
    """What `serve` starts and stops on its one asyncio loop."""

    #: True when the service must run on asyncio's own loop rather than uvloop.
    needs_asyncio_loop: bool

    async def start(self) -> list[BannerRow]:
        """Start listening; return the rows serve's banner shows for this service."""

    async def stop(self) -> None:
        """Stop, letting work in progress finish within a bounded time."""


@dataclass(frozen=True, slots=True)
class ServiceContext:
    """What a part's service factory gets: the loaded configuration, this part's section of it,
    the shared bus (publish Events to it) and the store (read it; writing goes through the bus)."""

    loaded: LoadedConfig
    section: Any
    bus: EventBus
    store: EventStore

    def resolve(self, path: Path) -> Path:
        return self.loaded.resolve(path)


#: A part's service factory: None when the configuration enables nothing of the part.
ServiceFactory = Callable[[ServiceContext], "Service | None"]


@dataclass(frozen=True, slots=True)
class Part:
    """One part: ``section`` is its key in pacsguard.yaml, ``config`` its pydantic model, ``service``
    its factory, ``commands`` its typer app (or one command function), ``requires`` its optional packages,
    ``kinds`` the kinds of Event it records (pacsguard.events.kinds.EventKind)."""

    name: str
    help: str
    section: str | None = None
    config: Ref | None = None
    service: Ref | None = None
    commands: Ref | None = None
    requires: tuple[Dependency, ...] = ()
    kinds: Ref | None = None  # the EventKinds it records (docs/events.schema.json is built from them)
    #: Object checks it offers to store-and-forward routes: (name, factory). A factory takes a
    #: ServiceContext (its ``section`` is this part's section) and returns a
    #: pacsguard.gateway.objects.ObjectCheck; a route names the check in ``object_checks``.
    object_checks: tuple[tuple[str, Ref], ...] = ()

    def missing(self) -> list[Dependency]:
        return [d for d in self.requires if not d.present()]

    def check_dependencies(self) -> None:
        """Raise MissingDependency naming every optional package this part needs and lacks."""
        missing = self.missing()
        if missing:
            raise MissingDependency(self.name, missing)

    def config_model(self) -> Any:
        if self.config is None:
            raise LookupError(f"part {self.name} has no configuration section")
        return load_ref(self.config)

    def service_factory(self) -> ServiceFactory | None:
        if self.service is None:
            return None
        self.check_dependencies()
        factory: ServiceFactory = load_ref(self.service)
        return factory

    def event_kinds(self) -> tuple[Any, ...]:
        return tuple(load_ref(self.kinds)) if self.kinds is not None else ()
