"""The scanner's rule families, one module each: preamble, polyglot, embedded, documents,
structure. Each exposes ``check(parsed) -> list[Finding]``; FAMILIES lists them by name, which is
also the name of their toggle in the `scan:` section (docs/scan.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pacsguard.scan.model import Finding, Level

if TYPE_CHECKING:
    from pacsguard.scan.part10 import Parsed

FAMILIES = ("preamble", "polyglot", "embedded", "documents", "structure")


def guarded(family: str, check: Callable[[Parsed], list[Finding]], parsed: Parsed) -> list[Finding]:
    """One check of a family, run on its own: its bug on hostile input is reported as the
    scanner reports a failed family ("<family>.error", low), and the family's other checks still
    run (a crafted file that breaks one check must not switch the others off)."""
    try:
        return check(parsed)
    except Exception as exc:  # any bug of a check on hostile input: reported, never raised
        return [Finding(f"{family}.error", Level.LOW, f"the {family} rules failed on this file: {exc!r}", None)]
