"""Scanning one file: the bounded Part-10 reader, then each enabled rule family, YARA and ClamAV,
into one FileReport. Nothing here raises for a file's content: a rule that fails on some input
becomes a finding naming the failure, and the scan goes on."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING

from pacsguard.scan import part10, signatures
from pacsguard.scan.model import FileReport, Finding, Level
from pacsguard.scan.rules import FAMILIES

if TYPE_CHECKING:
    from pacsguard.scan.clamd import Clamd
    from pacsguard.scan.config import ScanSettings
    from pacsguard.scan.yara_engine import YaraEngine

PATIENT_ID, STUDY_UID, SOP_INSTANCE, DOCUMENT = 0x00100020, 0x0020000D, 0x00080018, 0x00420011
#: YARA over element values: values this small carry no payload worth a match, and a file with
#: thousands of values is bounded to this many.
YARA_MIN_VALUE, YARA_MAX_VALUES = 16, 256


@dataclass(frozen=True, slots=True)
class Scanner:
    """What to run over each file; build it once (compiling YARA is the slow part) and share it."""

    families: tuple[str, ...] = FAMILIES
    limits: part10.Limits = field(default_factory=part10.Limits)
    yara: YaraEngine | None = None
    clamd: Clamd | None = None
    max_file_size: int = 2 * 1024**3

    @classmethod
    def from_settings(cls, settings: ScanSettings, base: Path | None = None, *, one_scan: bool = False) -> Scanner:
        """The scanner a `scan:` section describes; relative yara_dirs are taken from ``base``.
        ``one_scan``: for one `pacsguard scan` run, which stops asking a clamd that keeps failing
        (clamd.GIVE_UP_AFTER); a gateway's long-lived scanner keeps asking (clamd may come back)."""
        from pacsguard.scan.yara_engine import YaraEngine

        rules = settings.rules
        families = tuple(f for f in FAMILIES if getattr(rules, f))
        dirs = [d if d.is_absolute() or base is None else base / d for d in settings.yara_dirs]
        engine = YaraEngine.compile(dirs, builtin=rules.yara) if rules.yara or dirs else None
        clamd = None
        if settings.clamd:
            from pacsguard.scan.clamd import GIVE_UP_AFTER, Clamd

            clamd = Clamd(settings.clamd, max_file_size=settings.clamd_max_file_size,
                          give_up_after=GIVE_UP_AFTER if one_scan else 0)
        lim = settings.limits
        limits = part10.Limits(max_depth=lim.max_depth, max_elements=lim.max_elements, max_inflated=lim.max_inflated,
                               max_pdf_inflated=lim.max_pdf_inflated)
        return cls(families, limits, engine, clamd, lim.max_file_size)

    def scan_file(self, path: Path, name: str | None = None) -> FileReport:
        """Scan a regular file; one that is not read is a report with ``skipped`` set (and a
        scan.not-scanned finding when it exists and could not be read). It is opened as walk's
        read_regular opens it: never through a link, never blocking on a FIFO (a file swapped after
        the walk saw it), the opened descriptor checked, at most max_file_size bytes read."""
        from pacsguard.scan.walk import NotRead, read_regular

        try:
            data = read_regular(path, self.max_file_size)
        except NotRead as exc:
            return FileReport(str(name or path), size=exc.size, skipped=exc.reason, findings=list(exc.findings))
        return self.scan_bytes(data, str(name or path))

    def scan_bytes(self, data: bytes, name: str) -> FileReport:
        started = time.perf_counter()
        report = FileReport(name, size=len(data))
        if not data:
            report.skipped = "empty (0 bytes)"
            return report
        parsed = part10.read(data, self.limits)
        findings: list[Finding] = []
        if self.yara is not None:
            # YARA first: its pass also finds the embedded family's needles (one read of the file).
            findings.extend(_dedupe_yara(self._yara(parsed)))
        for family in self.families:
            findings.extend(_run_family(family, parsed))
        if self.clamd is not None:
            findings.extend(self.clamd.findings(data))
        if not parsed.dicom and signatures.script_name(name) and \
                not any(f.rule == "structure.executable-file" for f in findings):
            # Windows runs it by its name whatever it holds (a .bat of plain commands, AUTORUN.INF).
            findings = [f for f in findings if f.rule != "structure.not-dicom"]
            named = signatures.base_name(name)
            findings.append(Finding("structure.executable-file", Level.MEDIUM,
                                    f"not DICOM: named as a program or script Windows runs ({named})", 0,
                                    "PS3.10 7.1; PS3.12"))
        report.findings = _unique(findings)
        if report.findings:
            # Hashed only when there is something to record or quarantine: on a clean 500 MB CT the
            # hash would cost a fifth of the scan.
            report.sha256 = hashlib.sha256(data).hexdigest()
        if parsed.dicom:
            report.patient_id = _text(parsed, PATIENT_ID)
            report.study_uid = _text(parsed, STUDY_UID)
            report.sop_instance_uid = _text(parsed, SOP_INSTANCE)
        report.seconds = time.perf_counter() - started
        return report

    def scan_container(self, data: bytes) -> list[Finding]:
        """An archive's own bytes through YARA's whole-file pass and clamd, as `yara` and clamscan
        scan a file before (or without) its members: a zip's comment (APPNOTE.TXT 4.3.16) or bytes
        after a tar's end-of-archive blocks (POSIX ustar) belong to no member. Once per container;
        one larger than max_file_size is left to its members (the rule families judge those)."""
        if len(data) > self.max_file_size:
            return []
        findings: list[Finding] = []
        if self.yara is not None:
            findings.extend(_dedupe_yara(self.yara.match(data, where="archive")))
        if self.clamd is not None:
            findings.extend(self.clamd.findings(data))
        return _unique(findings)

    def _yara(self, parsed: part10.Parsed) -> list[Finding]:
        assert self.yara is not None
        out, needles = self.yara.match_needles(parsed.data)
        if parsed.inflated and parsed.body:
            more, needles = self.yara.match_needles(parsed.body, base=0, where="inflated data set", inflated=True)
            out += more
        parsed.needles = needles
        from pacsguard.scan.rules.embedded import candidates

        values = [e for e in candidates(parsed) if e.length >= YARA_MIN_VALUE and not parsed.is_pixel_data(e)
                  and (self.yara.site_rules or e.tag == DOCUMENT)]
        for element in values[:YARA_MAX_VALUES]:
            where = "encapsulated document" if element.tag == DOCUMENT else f"value of {element.label}"
            out += self.yara.match(parsed.value(element), base=element.value_offset, tag=element.label, where=where,
                                   inflated=parsed.inflated)
        return out


def _run_family(family: str, parsed: part10.Parsed) -> list[Finding]:
    try:
        found: list[Finding] = import_module(f"pacsguard.scan.rules.{family}").check(parsed)
    except Exception as exc:  # a rule's bug on hostile input must not end the scan: it is reported
        return [Finding(f"{family}.error", Level.LOW, f"the {family} rules failed on this file: {exc!r}", None)]
    return found


def _dedupe_yara(findings: list[Finding]) -> list[Finding]:
    """One finding per YARA rule (the first place it matched), and one yara.too-many-matches note
    per rule and string YARA stopped counting: the notes of two rules are two (one rule's low note,
    its match reported, must not hide another's at that rule's level)."""
    seen: set[str] = set()
    out: list[Finding] = []
    for f in findings:
        key = _kind(f)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def _kind(f: Finding) -> str:
    """What makes two findings the same: their rule, and for yara.too-many-matches the rule and
    string it is about ("YARA stopped recording $z of rule R")."""
    if f.rule == "yara.too-many-matches":
        return f.rule + " " + f.explanation.split(" after ", 1)[0]
    return f.rule


def _unique(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, int | None, str | None]] = set()
    out: list[Finding] = []
    for f in findings:
        key = (_kind(f), f.offset, f.tag)
        if key not in seen:
            seen.add(key)
            out.append(f)
    return sorted(out, key=lambda f: (-f.level, f.offset if f.offset is not None else -1))


def _text(parsed: part10.Parsed, tag: int) -> str:
    try:
        return (parsed.text(tag) or "")[:64]
    except Exception:  # a value in an encoding nobody can read: no patient context, no failure
        return ""

