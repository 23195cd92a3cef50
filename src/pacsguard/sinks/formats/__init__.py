"""Event formats for SIEMs: pacsguard's canonical JSON, ArcSight CEF, QRadar LEEF and Elastic ECS.

Each format is a pure function Event -> str; `formatter(name)` picks one by its configuration name.
"""

from __future__ import annotations

from typing import Callable, Literal, get_args

from pacsguard.events.model import Event
from pacsguard.sinks.formats.cef import format_cef
from pacsguard.sinks.formats.ecs import ecs_document, format_ecs
from pacsguard.sinks.formats.leef import format_leef

FormatName = Literal["json", "cef", "leef", "ecs"]
FORMAT_NAMES: tuple[str, ...] = get_args(FormatName)


def format_json(event: Event) -> str:
    """pacsguard's own canonical JSON (docs/events.md), the default of every sink."""
    return event.to_json()


def formatter(name: str) -> Callable[[Event], str]:
    """The formatting function of a format name from pacsguard.yaml (`format:` of a sink)."""
    match name:
        case "json":
            return format_json
        case "cef":
            return format_cef
        case "leef":
            return format_leef
        case "ecs":
            return format_ecs
    raise ValueError(f"unknown event format {name!r}; known: {', '.join(FORMAT_NAMES)}")


__all__ = [
    "FORMAT_NAMES",
    "FormatName",
    "ecs_document",
    "format_cef",
    "format_ecs",
    "format_json",
    "format_leef",
    "formatter",
]
