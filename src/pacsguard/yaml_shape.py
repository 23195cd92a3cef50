"""How big and how deep a YAML document may be once read (pacsguard.yaml, IDS rule files): the
limits that keep aliases of aliases (the "billion laughs") and self-referring anchors from costing
memory and time. No pydantic here: `ids read` checks rule files without the configuration machinery."""

from __future__ import annotations

from typing import Any

import yaml

INT_TAG = "tag:yaml.org,2002:int"
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


def construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    """A YAML integer, for a loader's ``add_constructor(INT_TAG, ...)``. Python refuses to convert
    one of more than 4,300 digits (CVE-2020-10735): that is a YAML error at its place, like any
    other bad value, not an exception from deep inside PyYAML (an internal error)."""
    try:
        return int(yaml.constructor.SafeConstructor.construct_yaml_int(loader, node))
    except ValueError:
        raise yaml.constructor.ConstructorError(
            None, None, f"an integer of {len(node.value):,} characters is too long", node.start_mark) from None
