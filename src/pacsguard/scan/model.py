"""What the scanner reports: a Finding (one rule that matched, where, why, and the reference that
explains it) and a FileReport (every finding of one file, or why the file was skipped)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any


class Level(IntEnum):
    """How bad a finding is. INFO never fails a scan (issue #19: informational notes); LOW is a
    malformed but not hostile file; HIGH is built to attack a reader or carry a payload."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, value: str | int | Level) -> Level:
        if isinstance(value, Level):
            return value
        if isinstance(value, int):
            return cls(value)
        return cls[value.strip().upper()]

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule that matched: ``offset`` is the byte offset in the file (None for the whole file;
    for a deflated data set, the offset in the inflated stream, with ``inflated`` set)."""

    rule: str
    level: Level
    explanation: str
    offset: int | None = None
    reference: str = ""
    tag: str | None = None  # "(gggg,eeee)" of the element the finding is about
    inflated: bool = False
    #: What sanitising would do about it: "preamble", "trailing", "element", or "" (cannot be cleaned).
    remedy: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "level": self.level.label, "explanation": self.explanation,
                               "offset": self.offset, "reference": self.reference}
        if self.tag is not None:
            out["tag"] = self.tag
        if self.inflated:
            out["inflated"] = True
        return out


@dataclass(slots=True)
class FileReport:
    """The scan of one file. ``skipped`` says why a file was not scanned (a device, a loop, unreadable);
    ``member`` names the path inside an archive (``outer.zip!inner/file.dcm``); ``sha256`` is set for
    files with findings (the ones recorded, cleaned or quarantined)."""

    path: str
    size: int = 0
    findings: list[Finding] = field(default_factory=list)
    skipped: str = ""
    sha256: str = ""
    patient_id: str = ""
    study_uid: str = ""
    sop_instance_uid: str = ""
    seconds: float = 0.0

    @property
    def worst(self) -> Level | None:
        return max((f.level for f in self.findings), default=None)

    def fails(self, threshold: Level) -> bool:
        """True when a finding reaches ``threshold``; INFO notes never do."""
        return any(f.level >= threshold and f.level > Level.INFO for f in self.findings)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "size": self.size, "sha256": self.sha256,
                               "findings": [f.to_dict() for f in self.findings]}
        if self.skipped:
            out["skipped"] = self.skipped
        for key in ("patient_id", "study_uid", "sop_instance_uid"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out
