"""A scan's results in the four formats of `pacsguard scan --format`: table (rich, for a person),
json (one document), SARIF 2.1.0 (OASIS, for code-scanning dashboards) and a self-contained HTML
page. The summary counts what was scanned, skipped and why, and findings per level.

A file name is bytes; Python hands one that is not UTF-8 over as text with surrogate escapes
(PEP 383), which no JSON encoder, terminal or event sink accepts. Every format shows names through
`display_path` (the bytes that are not UTF-8 as ``\\xNN``); SARIF's ``uri`` is `path_uri`."""

from __future__ import annotations

import html
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson

from pacsguard.scan.model import FileReport, Level

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
SARIF_LEVEL = {Level.INFO: "note", Level.LOW: "note", Level.MEDIUM: "warning", Level.HIGH: "error",
               Level.CRITICAL: "error"}


@dataclass(slots=True)
class Summary:
    """Counts over a scan: files scanned and skipped (by reason), findings by level, failing files."""

    fail_on: Level
    scanned: int = 0
    bytes: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    levels: Counter[str] = field(default_factory=Counter)
    failing: int = 0
    seconds: float = 0.0

    def add(self, report: FileReport) -> None:
        if report.skipped:
            self.skipped[report.skipped.split(" (")[0].split(":")[0]] += 1
        else:
            self.scanned += 1
            self.bytes += report.size
        for finding in report.findings:
            self.levels[finding.level.label] += 1
        if report.fails(self.fail_on):
            self.failing += 1

    def to_dict(self) -> dict[str, Any]:
        return {"scanned": self.scanned, "bytes": self.bytes, "skipped": dict(self.skipped),
                "findings": {lv.label: self.levels.get(lv.label, 0) for lv in Level},
                "failing": self.failing, "fail_on": self.fail_on.label, "seconds": round(self.seconds, 3)}


def display_path(name: str) -> str:
    """``name`` as valid text: bytes that are not UTF-8 (PEP 383 surrogate escapes, as os.fsdecode
    and tarfile give them) become ``\\xNN``; any other text is returned as it is."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file name decoding made
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def json_safe(value: Any) -> Any:
    """A report document with every string valid UTF-8 (`display_path`), so that it serialises."""
    if isinstance(value, str):
        return display_path(value)
    if isinstance(value, dict):
        return {display_path(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


#: RFC 3986 2.2 sub-delims plus "@" (pchar), and "/" between segments: kept as they are. ":" is
#: encoded: in a relative reference's first segment it would read as a scheme (RFC 3986 4.2).
_URI_SAFE = "/!$&'()*+,;=@"


#: SARIF 2.1.0 uriBaseId of relative paths: the folder the scan ran in (run.originalUriBaseIds).
SCAN_ROOT = "SCANROOT"


def path_uri(name: str) -> str:
    """A SARIF ``artifactLocation.uri`` (SARIF 2.1.0: a URI reference, RFC 3986 4.1) for a
    scanned file: the name's bytes percent-encoded (RFC 3986 2.1: spaces, "#", "%", controls,
    non-ASCII), an absolute path as a ``file://`` URI (RFC 8089), a relative one as a relative
    reference. Members keep their "!" (a sub-delim, legal in a path); a member's own name has its
    "/" encoded too, so that it is one segment with the archive's: its "../" (a hostile archive's
    name) is then no dot segment (RFC 3986 5.2.4) and never resolves outside the archive."""
    archive, member = _split_member(name)
    encoded = quote(_raw(archive), safe=_URI_SAFE)
    if member is not None:
        encoded += "!" + quote(_raw(member), safe=_URI_SAFE.replace("/", ""))
    return f"file://{encoded}" if name.startswith("/") else encoded


def _raw(name: str) -> bytes:
    return os.fsencode(name) if _encodable(name) else name.encode("utf-8", "backslashreplace")


def _split_member(name: str) -> tuple[str, str | None]:
    """(archive, member) of an archive member's name ("a.zip!dir/x.dcm", pacsguard.scan.walk), or
    (name, None) for a file. A "!" in a real file's path is no member: the files on disk decide (the
    archive is the first left side that is a file); a name no longer on disk (quarantined, moved)
    splits at its first "!" whose left side is no folder."""
    if "!" not in name or os.path.lexists(name):
        return name, None
    bangs = [at for at, c in enumerate(name) if c == "!"]
    at = next((b for b in bangs if os.path.isfile(name[:b])), None)
    if at is None:
        at = next((b for b in bangs if not os.path.isdir(name[:b])), None)
    return (name, None) if at is None else (name[:at], name[at + 1:])


def _artifact(name: str) -> dict[str, str]:
    """A SARIF artifactLocation: a relative reference names its base (uriBaseId)."""
    uri = path_uri(name)
    return {"uri": uri} if uri.startswith("file:") else {"uri": uri, "uriBaseId": SCAN_ROOT}


def _encodable(name: str) -> bool:
    try:
        os.fsencode(name)
    except UnicodeEncodeError:
        return False
    return True


def to_json(reports: list[FileReport], summary: Summary) -> str:
    return orjson.dumps(json_safe({"files": [r.to_dict() for r in reports], "summary": summary.to_dict()}),
                        option=orjson.OPT_INDENT_2).decode()


def to_sarif(reports: list[FileReport], summary: Summary, version: str) -> str:
    rules: dict[str, dict[str, Any]] = {}
    results: list[dict[str, Any]] = []
    for report in reports:
        for f in report.findings:
            rules.setdefault(f.rule, {"id": f.rule, "shortDescription": {"text": f.rule},
                                      "helpUri": "https://pacsguard.invalid/docs/scan.html",
                                      "properties": {"reference": f.reference}})
            region = {"byteOffset": f.offset} if f.offset is not None and not f.inflated else {}
            location: dict[str, Any] = {"artifactLocation": _artifact(report.path)}
            if region:
                location["region"] = region
            results.append({"ruleId": f.rule, "level": SARIF_LEVEL[f.level],
                            "message": {"text": f.explanation},
                            "locations": [{"physicalLocation": location}],
                            "properties": {"pacsguardLevel": f.level.label, "tag": f.tag, "sha256": report.sha256}})
    driver = {"name": "pacsguard scan", "version": version, "informationUri": "https://pacsguard.invalid/",
              "rules": list(rules.values())}
    invocation = {"executionSuccessful": True,
                  "toolExecutionNotifications": [_skipped(r) for r in reports if r.skipped]}
    doc = {"$schema": SARIF_SCHEMA, "version": "2.1.0",
           "runs": [{"tool": {"driver": driver}, "invocations": [invocation], "results": results,
                     "originalUriBaseIds": {SCAN_ROOT: {"uri": path_uri(os.getcwd()).rstrip("/") + "/"}},
                     "properties": {"summary": summary.to_dict()}}]}
    return orjson.dumps(json_safe(doc), option=orjson.OPT_INDENT_2).decode()


#: SARIF level of a file not scanned, by the start of its skip reason: what could not be read at
#: all is an error, what was left out by a limit or its kind a warning; anything else (empty, met
#: again, pacsguard's own output) a note.
SKIP_LEVELS = (("unreadable", "error"), ("no such file", "error"), ("scan process ended", "error"),
               ("out of memory", "error"),
               ("larger than", "warning"),
               ("archive larger than", "warning"), ("not a regular file", "warning"), ("gone during", "warning"),
               ("symlink loop", "warning"), ("dangling symlink", "warning"))


def _skipped(report: FileReport) -> dict[str, Any]:
    """A file not scanned as a SARIF notification of the run's invocation (SARIF 2.1.0 3.20.21
    toolExecutionNotifications, 3.58 notification): its reason and where, so that a dashboard
    does not show a medium as clean when some of its files were never read."""
    level = next((lv for start, lv in SKIP_LEVELS if report.skipped.startswith(start)), "note")
    return {"level": level, "message": {"text": f"not scanned: {report.skipped}"},
            "descriptor": {"id": "scan.skipped"},
            "locations": [{"physicalLocation": {"artifactLocation": _artifact(report.path)}}],
            "properties": {"reason": report.skipped}}


def to_html(reports: list[FileReport], summary: Summary) -> str:
    """One page, no scripts, every value escaped (the findings quote hostile files)."""
    rows = []
    for report in reports:
        path = _html(report.path)
        if report.skipped:
            rows.append(f"<tr><td>{path}</td><td>skipped</td><td></td><td></td>"
                        f"<td>{_html(report.skipped)}</td><td></td></tr>")
        for f in report.findings:
            rows.append(f"<tr class='{f.level.label}'><td>{path}</td><td>{f.level.label}</td>"
                        f"<td>{_html(f.rule)}</td><td>{'' if f.offset is None else f.offset}</td>"
                        f"<td>{_html(f.explanation)}</td><td>{_html(f.reference)}</td></tr>")
    counts = ", ".join(f"{n} {lv}" for lv, n in summary.to_dict()["findings"].items() if n) or "no findings"
    skipped = ", ".join(f"{n} {_html(why)}" for why, n in summary.skipped.items()) or "none"
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'\">"
            "<title>pacsguard scan</title><style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left}"
            ".critical,.high{background:#fdd}.medium{background:#ffd}</style></head><body>"
            f"<h1>pacsguard scan</h1><p>{summary.scanned} files scanned ({summary.bytes:,} bytes), skipped: {skipped};"
            f" findings: {counts}; {summary.failing} files at or above {summary.fail_on.label}.</p>"
            "<table><tr><th>file</th><th>level</th><th>rule</th><th>offset</th><th>explanation</th>"
            "<th>reference</th></tr>" + "".join(rows) + "</table></body></html>\n")


def _html(text: str) -> str:
    """A name, reason or explanation as HTML text: escaped (the findings quote hostile files), and
    its control and reordering characters shown as escapes, as on the terminal: a file named
    ``IM1<U+202E>gpj.exe`` would otherwise read "IM1exe.jpg" in the page (Unicode 15 UAX #9)."""
    from pacsguard.cli.layout import printable

    return html.escape(printable(display_path(text)))


def print_table(reports: list[FileReport], summary: Summary, *, show_info: bool = False) -> None:
    from rich.table import Table

    from pacsguard.cli.common import console, shown

    table = Table(title="pacsguard scan", title_justify="left")
    for column in ("file", "level", "rule", "offset", "explanation"):
        table.add_column(column, overflow="fold")
    style = {Level.CRITICAL: "bold red", Level.HIGH: "red", Level.MEDIUM: "yellow"}
    for report in reports:
        path = shown(display_path(report.path))
        if report.skipped:
            table.add_row(path, "skipped", "", "", shown(display_path(report.skipped)))
        for f in report.findings:
            if f.level == Level.INFO and not show_info:
                continue
            level = f"[{style[f.level]}]{f.level.label}[/]" if f.level in style else f.level.label
            table.add_row(path, level, shown(f.rule), "" if f.offset is None else str(f.offset),
                          shown(display_path(f.explanation)))
    if table.row_count:
        console.print(table)
    d = summary.to_dict()
    counts = ", ".join(f"{n} {lv}" for lv, n in d["findings"].items() if n) or "no findings"
    skipped = ", ".join(f"{n} {why}" for why, n in summary.skipped.items()) or "none skipped"
    rate = summary.bytes / 1e6 / summary.seconds if summary.seconds else 0.0
    console.print(f"{summary.scanned:,} files scanned ({summary.bytes / 1e6:,.1f} MB, {rate:,.0f} MB/s); "
                  f"{shown(display_path(skipped))}; {counts}; {summary.failing} at or above {summary.fail_on.label}",
                  highlight=False)
