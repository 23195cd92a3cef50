"""The scanner's rule families, one module each: preamble, polyglot, embedded, documents,
structure. Each exposes ``check(parsed) -> list[Finding]``; FAMILIES lists them by name, which is
also the name of their toggle in the `scan:` section (docs/scan.md)."""

from __future__ import annotations

FAMILIES = ("preamble", "polyglot", "embedded", "documents", "structure")
