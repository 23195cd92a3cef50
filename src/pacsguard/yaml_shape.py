"""How big and how deep a YAML document may be once read (pacsguard.yaml, IDS rule files): the
limits that keep aliases of aliases (the "billion laughs") and self-referring anchors from costing
memory and time. No pydantic here: `ids read` checks rule files without the configuration machinery."""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 32  # deeper nesting than any section or rule needs
MAX_VALUES = 100_000  # values, aliases expanded: a real configuration or rule file has hundreds
TOO_DEEP = f"nested too deeply (at most {MAX_DEPTH} levels)"


def shape_problem(data: Any) -> str | None:
    """What makes ``data`` too deep or too big for a configuration, or None. Walked iteratively
    with early stops, since YAML aliases make hostile input cheap to write: one that refers to
    itself nests without end, and aliases of aliases multiply (the "billion laughs")."""
    values, stack = 0, [(data, 1)]
    while stack:
        value, level = stack.pop()
        values += 1
        if values > MAX_VALUES:
            return f"holds more than {MAX_VALUES:,} values once its YAML aliases are expanded"
        if isinstance(value, (dict, list)):
            if level > MAX_DEPTH:
                return TOO_DEEP  # or an alias in its own anchor
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, level + 1) for child in children)
    return None
