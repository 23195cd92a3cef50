"""YARA over DICOM (yara-python): pacsguard's built-in rules (package data, scan/yara/*.yar) and the
administrator's rule directories, compiled once; run over the whole file, each element value that
may carry a payload, and each encapsulated document. A rule's ``level`` and ``reference`` meta
become the finding's; an administrator's rule without ``level`` is medium."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
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


#: Rule files by their name's ending, in any case (a Windows-made SITE.YAR is a rule file too).
RULE_SUFFIXES = (".yar", ".yara")
#: Names an administrator gives a rule file to keep it out (an editor's backup, a disabled copy):
#: left out without a word, whatever they hold.
KEPT_OUT = ("~", ".bak", ".orig", ".old", ".disabled", ".off", ".swp")
#: A rule declaration (YARA's grammar: "rule NAME", after "private" or "global", then ":" tags or
#: "{"), at the start of a line: what tells a rule file under another name from a README.
RULE_DECLARATION = re.compile(r"^[ \t]*(?:(?:private|global)[ \t]+)*rule[ \t]+[A-Za-z_]\w*[ \t]*(?::|\{|$)", re.M)
#: How much of a file that is not named as rules is read to see whether it holds some.
SNIFF = 64 * 1024
#: yarac's compiled rules start with this magic: not source, which yara_dirs hold.
COMPILED_MAGIC = b"YARA"


def rule_files(dirs: list[Path], builtin: bool = True) -> list[Path]:
    """The built-in rule files, then each of ``dirs``'s (a file given itself is taken as is). No
    rule is dropped without a word: a folder with no rule file, rules under a name that is not
    .yar or .yara, a subfolder of rule files (not read: list it in yara_dirs) stop the start with
    YaraError naming the path (and the line of its first rule). Hidden files and KEPT_OUT names
    are the administrator's choice to leave out; other files (a README, a LICENSE) hold no rule;
    subfolders of a folder whose files include others are what those include."""
    found = builtin_rule_files() if builtin else []
    for folder in dirs:
        if folder.is_file():
            found.append(folder)
            continue
        if not folder.is_dir():
            raise YaraError(f"{folder}: no such YARA rule directory")
        found.extend(_folder_rules(folder))
    return found


def _folder_rules(folder: Path) -> list[Path]:
    """The rule files of one folder; YaraError for rules it would leave out, or for none at all."""
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise YaraError(f"{folder}: the YARA rule directory cannot be read ({exc.strerror or exc})") from None
    rules = [p for p in entries if _rule_name(p.name) and p.is_file()]
    others = [p for p in entries if p not in rules and not p.name.startswith(".")
              and not p.name.lower().endswith(KEPT_OUT)]
    for entry in others:
        if entry.is_file() and (line := _holds_rules(entry)) is not None:
            raise YaraError(f"{entry}: line {line}: holds YARA rules but is not named .yar or .yara, so it would "
                            "not be loaded: rename it (or add .disabled to its name to leave it out)")
    folders = [p for p in others if p.is_dir()]
    if folders and not _includes(rules):
        for sub in folders:
            inner = _first_rule_file(sub)
            if inner is not None:
                raise YaraError(f"{inner}: YARA rules in a subfolder of {folder} are not loaded (rule directories "
                                "are not read recursively): list the subfolder in scan.yara_dirs (or --yara-dir), "
                                "or name it with a leading dot to leave it out")
    if not rules:
        raise YaraError(f"{folder}: no .yar or .yara rule file in this YARA rule directory")
    return rules


def _first_rule_file(folder: Path) -> Path | None:
    try:
        return next((p for p in sorted(folder.iterdir()) if _rule_name(p.name) and p.is_file()), None)
    except OSError:
        return None  # a subfolder pacsguard cannot read: yara could not read its rules either


#: An include statement: a rule set split in files, whose subfolders its files include.
INCLUDE = re.compile(rb'^[ \t]*include[ \t]+"', re.M)


def _includes(rules: list[Path]) -> bool:
    """Does any of a folder's rule files include others? Its subfolders are then the rule set's
    own (Yara-Rules' index files include malware/*.yar), not rules left out."""
    for path in rules:
        try:
            if INCLUDE.search(path.read_bytes()):
                return True
        except OSError:
            continue  # named when compiled
    return False


def _rule_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(RULE_SUFFIXES)


def _holds_rules(path: Path) -> int | None:
    """The line of the first rule declaration in a file not named as rules; None: no rule there
    (or not text, or not readable: a file yara would not read either)."""
    try:
        with path.open("rb") as stream:
            head = stream.read(SNIFF)
    except OSError:
        return None
    if b"\x00" in head:
        return None
    text = head.decode("utf-8", "replace")
    m = RULE_DECLARATION.search(text)
    return None if m is None else text.count("\n", 0, m.start()) + 1


@dataclass(frozen=True, slots=True)
class YaraEngine:
    """Compiled rules; ``match`` returns findings for one buffer (``base``: its offset in the file)."""

    rules: Any
    sources: tuple[Path, ...]
    #: True when administrator rules are loaded: only they may be anchored to the start of a value
    #: (the built-in ones see values in the whole-file pass already).
    site_rules: bool = False
    #: Each rule's level (its ``level`` meta, medium without one): a rule YARA could not judge because
    #: one of its strings passed MATCH_LIMIT is reported at it, not below it.
    levels: dict[str, Level] = field(default_factory=dict)

    @classmethod
    def compile(cls, dirs: list[Path] | None = None, builtin: bool = True) -> YaraEngine:
        try:
            import yara
        except ImportError as exc:
            raise YaraError("yara-python is not installed (pip install 'pacsguard[scan]')") from exc
        from pacsguard.scan.signatures import needle_rule

        paths = rule_files(list(dirs or []), builtin)
        texts = [_read(p) for p in paths]
        for path, text in zip(paths, texts, strict=True):
            _check_imports(yara, path, text)
        names = [f"{i}_{p.stem}" for i, p in enumerate(paths)]
        sources = dict(zip(names, texts, strict=True))
        # The needles of the embedded family ride along: one pass over the file finds them all.
        sources["pacsguard_internal"] = needle_rule()
        include = _includer(dict(zip(names, paths, strict=True)))
        try:
            rules = yara.compile(sources=sources, include_callback=include)
        except yara.Error as exc:
            # libyara's message names a line, not which of the sources: each file is compiled alone
            # (only now: compiling is the slow part of starting) to name the one at fault.
            raise YaraError(f"YARA rules do not compile: {_culprit(yara, names, paths, texts, include) or exc}") \
                from exc
        levels: dict[str, Level] = {}
        for rule in rules:
            level = _level(rule.meta)
            levels[rule.identifier] = max(level, levels.get(rule.identifier, level))
        return cls(rules, tuple(paths), site_rules=bool(dirs), levels=levels)

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
        matched = {m.rule for m in matches}
        out.extend(_too_many({(r, s) for r, s in flooded if r != NEEDLE_RULE}, matched, self.levels, base, tag,
                             where, inflated))
        return out, needles


def _read(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise YaraError(f"YARA rules cannot be read: {path}: {exc.strerror or exc}") from exc
    if raw.startswith(COMPILED_MAGIC) and b"\x00" in raw[:64]:
        raise YaraError(f"YARA rules cannot be read: {path}: compiled rules (yarac), not rule source: "
                        "give the .yar source")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YaraError(f"YARA rules cannot be read: {path}: not UTF-8 ({exc.reason} at byte {exc.start})") from exc


#: An import statement (YARA's modules: pe, elf, math...): each must be compiled into libyara.
IMPORT = re.compile(r'^[ \t]*import[ \t]+"([^"\n]*)"', re.M)


def _check_imports(yara: Any, path: Path, text: str) -> None:
    """A module that libyara was built without makes yara-python fail on the first use of it with
    'invalid field name', which names neither the module nor the import: said here instead."""
    available = set(getattr(yara, "modules", ()))
    if not available:
        return  # an older yara-python that does not list them: libyara's own message then
    for m in IMPORT.finditer(text):
        if m.group(1) not in available:
            line = text.count("\n", 0, m.start()) + 1
            raise YaraError(f"YARA rules do not compile: {path}: line {line}: module \"{m.group(1)}\" is not "
                            f"compiled into this YARA ({yara.YARA_VERSION}; it has {', '.join(sorted(available))})")


def _includer(files: dict[str, Path]) -> Callable[[str, str | None, str], str | None]:
    """yara-python's include callback: an ``include "x.yar"`` read relative to the file that says
    it, as the yara command reads it (libyara, given sources, would read it relative to the current
    folder, and a rule set split in files would not compile). None for a file that cannot be read:
    libyara then names it ("callback failed to provide include resource: x.yar")."""
    resolved: dict[str, Path] = {}

    def include(requested: str, including: str | None, namespace: str) -> str | None:
        parent = resolved.get(including) if including else files.get(namespace)
        target = Path(requested)
        if not target.is_absolute() and parent is not None:
            target = parent.parent / target
        resolved[requested] = target
        try:
            return target.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    return include


def _culprit(yara: Any, names: list[str], paths: list[Path], texts: list[str],
             include: Callable[[str, str | None, str], str | None]) -> str | None:
    """The first rule file that does not compile on its own, as "FILE: line N: why"; None when
    each does (the fault is between them)."""
    for name, path, source in zip(names, paths, texts, strict=True):
        try:
            yara.compile(sources={name: source}, include_callback=include)
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


def _level(meta: dict[str, Any]) -> Level:
    """A rule's ``level`` meta; medium without one, or with one that is no level."""
    try:
        return Level.parse(str(meta.get("level", "medium")))
    except KeyError:
        return Level.MEDIUM


def _finding(m: Any, base: int, tag: str | None, where: str, inflated: bool) -> Finding:
    meta = m.meta
    level = _level(meta)
    first = min((i.offset for s in m.strings for i in s.instances), default=None)
    offset = base + first if first is not None else (base if where != "file" else None)
    why = str(meta.get("description", m.rule))
    return Finding(f"yara.{m.rule}", level, f"{why} (in the {where})", offset, str(meta.get("reference", "")), tag,
                   inflated)


def _too_many(flooded: set[tuple[str, str]], matched: set[str], levels: dict[str, Level], base: int,
              tag: str | None, where: str, inflated: bool) -> list[Finding]:
    """A note per string of a rule YARA stopped counting at MATCH_LIMIT. The rule matched anyway:
    its finding is reported, the note is low. It did not: its condition was judged on the first
    MATCH_LIMIT occurrences only (a count, ``$eocd in (filesize-65557..filesize)``), so whether it
    matches is unknown; flooding a string is how a file hides from it, so the note has the rule's
    own level."""
    out = []
    for rule, string in sorted(flooded):
        if rule in matched:
            out.append(Finding("yara.too-many-matches", Level.LOW,
                               f"YARA stopped recording {string} of rule {rule} after {MATCH_LIMIT:,} matches in the "
                               f"{where}; the rule matched all the same", base if where != "file" else None,
                               "", tag, inflated))
        else:
            out.append(Finding("yara.too-many-matches", levels.get(rule, Level.MEDIUM),
                               f"YARA stopped recording {string} of rule {rule} after {MATCH_LIMIT:,} matches in the "
                               f"{where}, so it could not judge the rule, which may match (a count or a place past "
                               "the limit): its level is the rule's", base if where != "file" else None, "", tag,
                               inflated))
    return out
