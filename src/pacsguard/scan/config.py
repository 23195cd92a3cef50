"""The `scan:` section of pacsguard.yaml (docs/scan.md): which rule families run, extra YARA rule
directories, clamd, the bounds per file, and the level at which a file fails."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from pacsguard.config.strict import Strict

LevelName = Literal["info", "low", "medium", "high", "critical"]


class ScanRules(Strict):
    """Built-in rule families, each on or off (pacsguard.scan.rules.FAMILIES) plus YARA's built-in rules."""

    preamble: bool = True
    polyglot: bool = True
    embedded: bool = True
    documents: bool = True
    structure: bool = True
    yara: bool = True


class ScanLimits(Strict):
    """Bounds per file (and per archive) so that no input costs unbounded time or memory."""

    max_file_size: int = Field(2 * 1024**3, gt=0, description="bytes; larger files are skipped, named")
    max_depth: int = Field(32, gt=0, description="sequence nesting")
    max_elements: int = Field(500_000, gt=0)
    max_inflated: int = Field(256 * 1024**2, gt=0, description="bytes a deflated data set may inflate to")
    max_pdf_inflated: int = Field(64 * 1024**2, gt=0, description="bytes all the streams of one PDF are decoded "
                                  "to; streams past it are named in a finding, not read")
    max_archive_ratio: int = Field(100, gt=0, description="uncompressed/compressed ratio of an archive member")
    max_archive_total: int = Field(4 * 1024**3, gt=0, description="bytes all members of one archive may inflate to")
    max_archive_depth: int = Field(4, ge=0, description="archives nested in archives")
    max_archive_members: int = Field(100_000, gt=0)


class ScanSettings(Strict):
    """The scanner's section."""

    rules: ScanRules = Field(default_factory=ScanRules)
    yara_dirs: list[Path] = Field(default_factory=list, description="administrator YARA rule folders (.yar/.yara)")
    clamd: str | None = Field(None, description="clamd socket path or tcp://host:port; none: ClamAV not used")
    clamd_max_file_size: int = Field(
        25 * 1024**2, gt=0, description="bytes: clamd's MaxFileSize (clamd.conf); clamd answers OK unscanned past it")
    limits: ScanLimits = Field(default_factory=ScanLimits)
    fail_on: LevelName = "medium"

    @field_validator("clamd")
    @classmethod
    def _clamd_address(cls, value: str | None) -> str | None:
        """A socket path or tcp://HOST:PORT (clamd.conf(5) LocalSocket, TCPSocket): one with no
        port, or no number for one, is said when the configuration is loaded, not on each file."""
        if value is not None:
            from pacsguard.scan.clamd import parse_address

            parse_address(value)
        return value
