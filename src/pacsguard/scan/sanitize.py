"""Cleaning a file where that is safe, never touching the original: a hostile preamble zeroed
(PS3.10 7.1 allows zeros), a missing one put back as zeros, data after the data set cut off, a
top-level element carrying an executable dropped. The copy is scanned again and kept only if nothing above INFO remains;
anything else (pixel data, structure, documents) cannot be cleaned and is said so."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pacsguard.owner_only import write_private_file
from pacsguard.scan import part10
from pacsguard.scan.model import FileReport, Level
from pacsguard.scan.scanner import Scanner

ENGINES = ("yara.", "clamav.")


@dataclass(frozen=True, slots=True)
class Cleaned:
    """A cleaned copy (``data``) and what was done, or ``refused`` saying why it could not be."""

    data: bytes = b""
    actions: tuple[str, ...] = ()
    refused: str = ""


def clean(data: bytes, report: FileReport, scanner: Scanner) -> Cleaned:
    """The cleaned bytes for a file whose findings all have a remedy."""
    needed = [f for f in report.findings if f.level > Level.INFO]
    if not needed:
        return Cleaned(refused="nothing to clean")
    # Engine signatures name no remedy of their own: the rescan of the copy judges them.
    blocking = [f.rule for f in needed if not f.remedy and not f.rule.startswith(ENGINES)]
    if blocking:
        return Cleaned(refused="cannot be cleaned safely: " + ", ".join(sorted(set(blocking))))
    parsed = part10.read(data, scanner.limits)
    if not parsed.part10:
        return Cleaned(refused="not a Part-10 file")
    remedies = {f.remedy for f in needed}
    drop_tags = {f.tag for f in needed if f.remedy == "element"}
    if drop_tags and parsed.inflated:
        return Cleaned(refused="elements of a deflated data set are not rewritten")
    end = parsed.compressed_end if parsed.inflated else parsed.end
    out = bytearray(data[:end])
    actions: list[str] = []
    if "preamble" in remedies:
        out[:part10.PREAMBLE] = bytes(part10.PREAMBLE)
        actions.append("preamble zeroed")
    if "trailing" in remedies:
        actions.append(f"{len(data) - end:,} bytes after the data set removed")
    drops = [e for e in parsed.elements if e.label in drop_tags]
    if any(e.depth > 0 for e in drops):
        return Cleaned(refused="an element to drop is inside a sequence")
    for element in sorted(drops, key=lambda e: e.offset, reverse=True):
        stop = element.value_offset + max(element.length, 0)
        del out[element.offset:stop]
        actions.append(f"{element.label} removed")
    if "preamble-missing" in remedies:  # after the drops: their offsets are the file's as read
        out[:0] = bytes(part10.PREAMBLE)
        actions.append("a preamble of zeros put back")
    cleaned = bytes(out)
    again = scanner.scan_bytes(cleaned, report.path)
    left = [f.rule for f in again.findings if f.level > Level.INFO]
    if left:
        return Cleaned(refused="still not clean after cleaning: " + ", ".join(sorted(set(left))))
    return Cleaned(cleaned, tuple(actions))


def write_clean(path_in_out: Path, cleaned: Cleaned) -> Path:
    """Write a cleaned copy (new file, never over an existing one; FileExistsError). It holds a
    patient's data: mode 0600, its new folders 0700 (pacsguard.owner_only)."""
    write_private_file(path_in_out, cleaned.data)
    return path_in_out
