"""The manifest of a ``pacsguard deid`` run: one record per input file (JSON lines, or CSV): where
it went or why it was withheld, how many attributes each action touched, the key's fingerprint
and the profile's edition. It holds no original identifier: that link is the key holder's."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pacsguard.deid.actions import Effect
from pacsguard.deid.files import FileResult

FIELDS = ("source", "output", "status", "reason", "pixels", "key_fingerprint", "edition", "options",
          *(f"n_{e.value}" for e in Effect))


def record(result: FileResult, fingerprint: str, edition: str, options: Iterable[str]) -> dict[str, Any]:
    counts = result.report.counts()
    return {
        "source": str(result.source),
        "output": str(result.output) if result.output else "",
        "status": "withheld" if result.output is None else "written",
        "reason": result.withheld,
        "pixels": result.report.pixels,
        "key_fingerprint": fingerprint,
        "edition": edition,
        "options": " ".join(sorted(options)),
        **{f"n_{e.value}": counts.get(e.value, 0) for e in Effect},
    }


def write_manifest(path: Path, records: list[dict[str, Any]]) -> None:
    """JSON (a list) when ``path`` ends in .json, CSV otherwise."""
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
        return
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(records)
