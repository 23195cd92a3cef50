"""The manifest of a ``pacsguard deid`` run: one record per input file (a JSON list, or CSV): where
it went or why it was withheld, how many attributes each action touched, the key's fingerprint
and the profile's edition. It holds no attribute of the originals, but it names each input by its
path beside its output, and input paths often hold the patient's name or ID: it is the
administrator's, written beside the output folder and never inside it (PS3.15 E.1: the link
between original and de-identified object is the key holder's)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

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
    """JSON (a list) when ``path`` ends in .json, CSV otherwise (cells that would start a formula
    made text, see _inert). Readable by its owner only (0600,
    also when it replaces an earlier manifest): it links input paths, which often name the
    patient, to the outputs, the link de-identification removed."""
    try:
        with _owner_only(path) as fh:
            if path.suffix.lower() == ".json":
                fh.write(json.dumps(records, indent=1) + "\n")
                return
            writer = csv.DictWriter(fh, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows({k: _inert(v) for k, v in r.items()} for r in records)
    except OSError:
        # A manifest cut short (a full disk) is no manifest, and the next run would refuse to
        # replace it (is_manifest): it goes. A device (/dev/full) is left as it is.
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink():
                path.unlink()
        raise


#: What makes a spreadsheet (Excel, LibreOffice Calc) read a CSV cell as a formula or start one
#: (OWASP "CSV Injection"): =, +, -, @, and a tab or carriage return before them.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _inert(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: one that starts like a formula gets a leading
    apostrophe, as OWASP advises. Input paths and reasons carry sender data (a folder named after
    the patient, a file named ``=HYPERLINK(...)``), and the manifest is opened where the key
    holder works. The JSON manifest keeps every value exact."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _owner_only(path: Path) -> TextIO:
    """``path`` opened for writing text, created 0600 or made 0600 if it exists as a regular file
    (a device such as /dev/null keeps its mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            os.fchmod(fd, 0o600)
        return os.fdopen(fd, "w", newline="", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise


def is_manifest(path: Path) -> bool:
    """True when ``path`` holds what :func:`write_manifest` writes (or nothing): a file a run may
    replace. Anything else (an original named by mistake, another tool's file) is not replaced.
    Only a file that starts like a manifest is read whole: an image named by mistake is not."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
            if not head.strip():
                return not fh.read(1)
            if path.suffix.lower() != ".json":
                # A later version may count more actions: the first columns are what matters.
                return head.startswith(",".join(FIELDS[:3]).encode() + b",")
            if not head.lstrip().startswith(b"["):
                return False
            doc = json.loads(head + fh.read())
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return False
    return isinstance(doc, list) and all(isinstance(r, dict) and {"source", "output", "status"} <= r.keys()
                                         for r in doc)
