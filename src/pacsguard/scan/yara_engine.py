"""YARA over DICOM (yara-python): pacsguard's built-in rules (package data, scan/yara/*.yar) and the
administrator's rule directories, compiled once; run over the whole file, each element value that
may carry a payload, and each encapsulated document. A rule's ``level`` and ``reference`` meta
become the finding's; an administrator's rule without ``level`` is medium."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from pacsguard.scan.model import Finding, Level

BUILTIN = files("pacsguard.scan") / "yara"
#: Seconds one match may take before YARA gives up (bounded time per file).
TIMEOUT = 60
#: Matches libyara records of one string per scan (YR_MAX_STRING_MATCHES); past it the string's
#: later occurrences are dropped, with a warning.
MATCH_LIMIT = 1_000_000


class YaraError(Exception):
    """A rule file that does not compile, or yara-python missing."""


def builtin_rule_files() -> list[Path]:
    return sorted(Path(str(p)) for p in BUILTIN.iterdir() if p.name.endswith(".yar"))


def rule_files(dirs: list[Path], builtin: bool = True) -> list[Path]:
    found = builtin_rule_files() if builtin else []
    for folder in dirs:
        if folder.is_file():
            found.append(folder)
            continue
        if not folder.is_dir():
            raise YaraError(f"{folder}: no such YARA rule directory")
        found.extend(sorted(p for p in folder.iterdir() if p.suffix in (".yar", ".yara") and p.is_file()))
    return found


@dataclass(frozen=True, slots=True)
class YaraEngine:
    """Compiled rules; ``match`` returns findings for one buffer (``base``: its offset in the file)."""

    rules: Any
    sources: tuple[Path, ...]
    #: True when administrator rules are loaded: only they may be anchored to the start of a value
    #: (the built-in ones see values in the whole-file pass already).
    site_rules: bool = False

    @classmethod
    def compile(cls, dirs: list[Path] | None = None, builtin: bool = True) -> YaraEngine:
        try:
            import yara
        except ImportError as exc:
            raise YaraError("yara-python is not installed (pip install 'pacsguard[scan]')") from exc
        from pacsguard.scan.signatures import needle_rule

        paths = rule_files(list(dirs or []), builtin)
        texts = [_read(p) for p in paths]
        sources = {f"{i}_{p.stem}": text for i, (p, text) in enumerate(zip(paths, texts, strict=True))}
        # The needles of the embedded family ride along: one pass over the file finds them all.
        sources["pacsguard_internal"] = needle_rule()
        try:
            rules = yara.compile(sources=sources)
        except yara.Error as exc:
            # libyara's message names a line, not which of the sources: each file is compiled alone
            # (only now: compiling is the slow part of starting) to name the one at fault.
            raise YaraError(f"YARA rules do not compile: {_culprit(yara, paths, texts) or exc}") from exc
        return cls(rules, tuple(paths), site_rules=bool(dirs))

    def match(self, data: bytes, *, base: int = 0, tag: str | None = None, where: str = "file",
              inflated: bool = False) -> list[Finding]:
        return self.match_needles(data, base=base, tag=tag, where=where, inflated=inflated)[0]

    def match_needles(self, data: bytes, *, base: int = 0, tag: str | None = None, where: str = "file",
                      inflated: bool = False) -> tuple[list[Finding], list[tuple[int, int]] | None]:
        """Findings, and the (needle index, offset) of every signature needle in ``data``, sorted by
        offset (None when YARA could not finish: the embedded family then searches by itself). A
        needle YARA stopped recording at MATCH_LIMIT (a value flooded with its magic number, which
        would hide a real one further on) comes first as (index, -1): that one is searched again."""
        import yara

        from pacsguard.scan.signatures import NEEDLE_RULE

        flooded: set[tuple[str, str]] = set()
        try:
            with warnings.catch_warnings():
                # The limit is reported through the callback; never as a raw RuntimeWarning on stderr.
                warnings.simplefilter("ignore", RuntimeWarning)
                matches = self.rules.match(data=data, timeout=TIMEOUT, warnings_callback=_recorder(flooded))
        except yara.TimeoutError:
            return [Finding("yara.timeout", Level.MEDIUM, f"YARA gave up on the {where} after {TIMEOUT} s", base,
                            "", tag, inflated)], None
        except yara.Error as exc:
            return [Finding("yara.error", Level.LOW, f"YARA could not scan the {where}: {exc}", base, "", tag,
                            inflated)], None
        out: list[Finding] = []
        needles: list[tuple[int, int]] = []
        for m in matches:
            if m.rule == NEEDLE_RULE:
                needles = _needles(m, {string for rule, string in flooded if rule == NEEDLE_RULE})
            else:
                out.append(_finding(m, base, tag, where, inflated))
        out.extend(_too_many({(r, s) for r, s in flooded if r != NEEDLE_RULE}, base, tag, where, inflated))
        return out, needles


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise YaraError(f"YARA rules cannot be read: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise YaraError(f"YARA rules cannot be read: {path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc


def _culprit(yara: Any, paths: list[Path], texts: list[str]) -> str | None:
    """The first rule file that does not compile on its own, as "FILE: line N: why"; None when
    each does (the fault is between them)."""
    for path, source in zip(paths, texts, strict=True):
        try:
            yara.compile(source=source)
        except yara.Error as exc:
            return f"{path}: {exc}"
    return None


def _recorder(flooded: set[tuple[str, str]]) -> Callable[[int, Any], int]:
    """yara-python's warnings callback: adds (rule, string) to ``flooded`` for each string YARA
    stopped recording at MATCH_LIMIT."""
    import yara

    def warned(kind: int, message: Any) -> int:
        if kind == yara.CALLBACK_TOO_MANY_MATCHES:
            flooded.add((str(getattr(message, "rule", "")), str(getattr(message, "string", ""))))
        return int(yara.CALLBACK_CONTINUE)

    return warned


def _needles(match: Any, flooded: set[str]) -> list[tuple[int, int]]:
    """The internal needle rule's matches as sorted (index, offset), led by (index, -1) for each
    needle cut off at MATCH_LIMIT (named by the callback, or seen to have MATCH_LIMIT matches)."""
    full = {int(s.identifier[1:]) for s in match.strings if s.identifier in flooded or len(s.instances) >= MATCH_LIMIT}
    found = [(int(s.identifier[1:]), i.offset) for s in match.strings for i in s.instances]
    return sorted([(index, -1) for index in full] + found, key=lambda c: (c[1], c[0]))


def _finding(m: Any, base: int, tag: str | None, where: str, inflated: bool) -> Finding:
    meta = m.meta
    try:
        level = Level.parse(str(meta.get("level", "medium")))
    except KeyError:
        level = Level.MEDIUM
    first = min((i.offset for s in m.strings for i in s.instances), default=None)
    offset = base + first if first is not None else (base if where != "file" else None)
    why = str(meta.get("description", m.rule))
    return Finding(f"yara.{m.rule}", level, f"{why} (in the {where})", offset, str(meta.get("reference", "")), tag,
                   inflated)


def _too_many(flooded: set[tuple[str, str]], base: int, tag: str | None, where: str, inflated: bool) -> list[Finding]:
    """A note per string of a rule YARA stopped counting: a rule that needs it at a given place
    (``$eocd in (filesize-65557..filesize)``) may have missed it."""
    return [Finding("yara.too-many-matches", Level.LOW,
                    f"YARA stopped recording {string} of rule {rule} after {MATCH_LIMIT:,} matches in the {where}: "
                    "a rule that needs it at a given place may have missed it", base if where != "file" else None,
                    "", tag, inflated) for rule, string in sorted(flooded)]
