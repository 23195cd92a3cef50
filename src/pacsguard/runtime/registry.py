"""The registry of parts: which parts pacsguard has, in the order `serve` starts them and the
command line lists them. Built at start-up from PART_MODULES; tests may `register()` more."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from importlib import import_module
from typing import TYPE_CHECKING, Any

from pacsguard.runtime.part import Part

if TYPE_CHECKING:
    from pacsguard.config.schema import PacsguardConfig
    from pacsguard.events.kinds import EventKind

#: Modules holding a ``PART`` (or a tuple ``PARTS``), importing nothing heavy (nor do their packages'
#: ``__init__`` files, which re-export lazily). Order matters: the
#: spine's commands first, then the parts; services start in this order (the demo PACS before the
#: gateway that relays to it) and stop in reverse.
PART_MODULES = (
    "pacsguard.cli.part",
    "pacsguard.tls.part",
    "pacsguard.demo.part",
    "pacsguard.gateway.part",
    "pacsguard.ids.part",
    "pacsguard.metrics.part",
    "pacsguard.scan.part",
    "pacsguard.deid.part",
    "pacsguard.atna.part",
    "pacsguard.witness.part",
)

#: Sections of pacsguard.yaml that belong to the spine, not to a part.
SPINE_SECTIONS = ("store", "sinks")


class Registry:
    """An ordered set of parts, unique by name and by configuration section."""

    def __init__(self, parts: Iterable[Part] = ()) -> None:
        self._parts: dict[str, Part] = {}
        for part in parts:
            self.register(part)

    @classmethod
    def default(cls) -> Registry:
        """A registry of every part in PART_MODULES (a new object each call)."""
        parts: list[Part] = []
        for name in PART_MODULES:
            module = import_module(name)
            parts.extend(getattr(module, "PARTS", None) or (module.PART,))
        return cls(parts)

    def register(self, part: Part) -> None:
        if part.name in self._parts:
            raise ValueError(f"a part named {part.name!r} is already registered")
        taken = {p.section for p in self._parts.values()} | set(SPINE_SECTIONS)
        if part.section is not None and part.section in taken:
            raise ValueError(f"part {part.name!r}: configuration section {part.section!r} is already taken")
        if (part.section is None) != (part.config is None):
            raise ValueError(f"part {part.name!r}: give both a configuration section and its model, or neither")
        self._parts[part.name] = part

    def __iter__(self) -> Iterator[Part]:
        return iter(self._parts.values())

    def get(self, name: str) -> Part | None:
        return self._parts.get(name)

    def object_checks(self) -> dict[str, tuple[Part, Any]]:
        """Every object check the parts offer, by name: the part and its (lazy) factory reference."""
        found: dict[str, tuple[Part, Any]] = {}
        for part in self._parts.values():
            for name, ref in part.object_checks:
                if name in found:
                    other = found[name][0].name
                    raise ValueError(f"object check {name!r} is offered by both {other!r} and {part.name!r}")
                found[name] = (part, ref)
        return found

    def with_config(self) -> list[Part]:
        return [p for p in self._parts.values() if p.section is not None]

    def event_kinds(self) -> list[EventKind]:
        """Every kind of Event the parts record; a declaration two parts share (the DICOM
        association record) counts once, a kind declared twice differently is an error."""
        kinds: dict[str, EventKind] = {}
        for part in self._parts.values():
            for kind in part.event_kinds():
                if kinds.setdefault(kind.kind, kind) != kind:
                    raise ValueError(f"part {part.name!r} declares event kind {kind.kind} differently")
        return list(kinds.values())

    def event_schema(self) -> dict[str, Any]:
        """The JSON Schema of every Event the parts record (docs/events.schema.json)."""
        from pacsguard.events.kinds import event_schema

        return event_schema(self.event_kinds())

    def config_model(self) -> type[PacsguardConfig]:
        """The model of the whole pacsguard.yaml: the spine's sections plus every part's section,
        each defaulting to its model's defaults; unknown keys stay errors (extra="forbid")."""
        from pydantic import Field, create_model

        from pacsguard.config.schema import PacsguardConfig

        fields: dict[str, Any] = {}
        for part in self.with_config():
            model = part.config_model()
            fields[str(part.section)] = (model, Field(default_factory=model))
        root: type[PacsguardConfig] = create_model("PacsguardConfig", __base__=PacsguardConfig, **fields)
        return root
