"""Audit events as observations for the rule engine (the ``audit`` protocol adapter): the privacy
officer's lists (patients to watch, the staff directory) are joined here, so rules match plain
fields: ``watched``, ``same_surname``, ``same_address``, ``hour`` and ``weekday`` (in the site's
time zone, atna/zone.py) and the access itself; and, when a rule names them, the user's patients
this hour against their own baseline (baseline.py) and whether the store explains the access
(``explained``, ``explanation``: the caller's explainer, which the audit record repository gives
from pacsguard.atna.explain).

One flow per user (client_host = the user's host, server_host = the audit source), so thresholds
``by: [user]`` count a user's accesses across every sender."""

from __future__ import annotations

import base64
import binascii
import csv
import io
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from pacsguard.atna.explain import compared as _norm
from pacsguard.atna.message import mapping
from pacsguard.atna.zone import LOCAL, SiteZone
from pacsguard.events.model import Event
from pacsguard.ids.audit.baseline import BaselineSettings, PatientsPerHour
from pacsguard.ids.audit.kinds import BASELINE_FIELDS, EXPLAIN_FIELDS, PROTOCOL
from pacsguard.ids.engine import Alert, CompiledRule, Engine
from pacsguard.ids.observation import Flow


class ListFileError(ValueError):
    """A watch list or staff directory that cannot be read: the file, and what is wrong where."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


#: The largest list file read (a staff directory of 100,000 people is some 10 MB): a path naming a
#: database dump, a disk image or /dev/zero by mistake is refused instead of filling the memory.
MAX_LIST_BYTES = 64 * 1024 * 1024


def _text_of(path: Path) -> str:
    """A list file's text: UTF-8, with or without a byte order mark. A file that cannot be read (not
    there, a folder, no permission) or is larger than MAX_LIST_BYTES is a ListFileError too, so the
    error names the setting."""
    try:
        with path.open("rb") as f:
            data = f.read(MAX_LIST_BYTES + 1)  # never more, whatever the path names (a device, a pipe)
    except OSError as exc:
        raise ListFileError(path, f"cannot be read ({exc.strerror or exc})") from None
    if len(data) > MAX_LIST_BYTES:
        raise ListFileError(path, f"larger than {MAX_LIST_BYTES // (1024 * 1024)} MiB: not a list of patients "
                                  "or staff (is it the right file?)")
    wide = _wide(data)
    if wide:
        # A spreadsheet's "Unicode text" is UTF-16; read as UTF-8 its NUL bytes are valid, and the
        # header would be named back as 'u\x00s\x00e\x00r\x00'.
        raise ListFileError(path, f"{wide}; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ListFileError(path, f"line {line}: not UTF-8 text (byte 0x{data[exc.start]:02X} at offset "
                                  f"{exc.start}); save it as UTF-8") from None


def _wide(data: bytes) -> str:
    """What a list file in UTF-16 or UTF-32 is, by its byte order mark (The Unicode Standard, 23.8)
    or, without one, by a NUL byte in its first line (no text of a list holds one); "" for neither."""
    for marks, name in (((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff"), "UTF-32"), ((b"\xff\xfe", b"\xfe\xff"), "UTF-16")):
        mark = next((m for m in marks if data.startswith(m)), None)
        if mark is not None:
            return f"{name} text (byte order mark {mark.hex(' ').upper()}), not UTF-8 (iconv -f {name} -t UTF-8)"
    first = data.split(b"\n", 1)[0]
    if b"\x00" in first:
        return f"a NUL byte at offset {first.index(0)} of line 1: UTF-16 or UTF-32 text without a byte order mark"
    return ""


@dataclass(frozen=True, slots=True)
class StaffMember:
    surname: str
    address: str = ""
    department: str = ""


@dataclass(slots=True)
class PrivacyLists:
    """Patient IDs to watch (VIPs, employees as patients) and the staff directory (user -> name, address)."""

    watched: frozenset[str] = frozenset()
    staff: Mapping[str, StaffMember] = field(default_factory=dict)

    @classmethod
    def load(cls, watch_file: Path | None = None, staff_csv: Path | None = None) -> PrivacyLists:
        """``watch_file``: one patient ID per line (# comments); ``staff_csv``: columns user (the
        login: the UserID senders give) and any of surname, address, department (a header row
        naming them, `_staff`). Both UTF-8 (a byte order mark is allowed, as spreadsheets write
        one); ListFileError names what is wrong and where."""
        watched: set[str] = set()
        if watch_file is not None:
            for line in _text_of(watch_file).splitlines():
                # The ID ends at "^", where a CX's authority begins, and at a tab, where a
                # spreadsheet's "tab delimited" export puts the next column (a name, a note): no
                # patient ID holds one (DICOM LO and HL7 ST hold no control characters). Spaces
                # around it are a spreadsheet's padding ("PID-0042 ^^^STMARY").
                text = line.split("#", 1)[0].strip().split("\t", 1)[0].split("^", 1)[0].strip()
                if text:
                    watched.add(text)
        return cls(frozenset(watched), _staff(staff_csv) if staff_csv is not None else {})

    def departments(self) -> dict[str, str]:
        """user (lower case) -> department, for the users the directory gives one."""
        return {user: m.department for user, m in self.staff.items() if m.department}


#: The staff directory's columns: the one it needs (the login), and those it may have: a site that
#: keeps departments only, for the explanations, needs no surname or address.
STAFF_COLUMNS = ("user",)
STAFF_OPTIONAL = ("surname", "address", "department")


def _staff(path: Path) -> dict[str, StaffMember]:
    """The staff directory: user (lower case) -> entry. Column names are read as a spreadsheet user
    means them, whatever their case and surrounding spaces (``User, Surname``); a column that is
    missing or unknown (a misspelt ``adress``), a row with more values than columns (an address with
    an unquoted comma) and a user listed twice (case does not tell logins apart) are refused with
    the line: each would otherwise leave a rule comparing against nothing, without a word.

    The values are separated by commas, or by semicolons or tabs when the header row holds no comma
    but those: a spreadsheet in a locale whose decimal mark is the comma (German, French) saves
    "CSV" with semicolons, and "Text (tab delimited)" with tabs."""
    text = _text_of(path)
    header_line = text.split("\n", 1)[0]
    delimiter = next((d for d in (",", ";", "\t") if d in header_line), ",")
    # strict: a quote opened and never closed is an error, not a value holding the rest of the file
    # (every user after it would be left out without a word), nor is text after a closing quote.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    end = 0  # the last line read whole: a row starts on the next
    try:
        header = next(reader, None)
        names = [n.strip().casefold() for n in header or ()]
        missing = [n for n in STAFF_COLUMNS if n not in names]
        # An empty name (a spreadsheet's stray cell after the last column) names no column.
        unknown = [n for n in names if n and n not in (*STAFF_COLUMNS, *STAFF_OPTIONAL)]
        twice = sorted({n for n in names if n and names.count(n) > 1})
        if missing or unknown or twice:
            problems = [f"missing {', '.join(missing)}" if missing else "",
                        f"unknown {', '.join(repr(n) for n in unknown)}" if unknown else "",
                        f"{', '.join(twice)} named twice" if twice else ""]
            raise ListFileError(path, "line 1: a header row naming the column user (and any of surname, "
                                      f"address, department) is needed; it names {header or []}: "
                                      + "; ".join(p for p in problems if p))
        staff: dict[str, StaffMember] = {}
        lines: dict[str, tuple[int, str]] = {}  # user -> the line it is on, and as written there
        end = reader.line_num
        for row in reader:
            line, end = end + 1, reader.line_num  # where the row starts: a quoted value may span lines
            if any(v.strip() for i, v in enumerate(row) if i >= len(names) or not names[i]):
                raise ListFileError(path, f"line {line}: {len(row)} values, but the header names "
                                          f"{sum(1 for n in names if n)} columns (quote a value that holds a "
                                          f"{_DELIMITER_NAMES[delimiter]})")
            values = dict(zip(names, row, strict=False))  # a short row: the rest empty
            written = values.get("user", "").strip()
            user = written.lower()
            if not user:
                continue
            if user in lines:
                first, as_first = lines[user]
                raise ListFileError(path, f"line {line}: user {written!r} is already on line {first} "
                                          f"({as_first!r}); a user may have one entry")
            lines[user] = (line, written)
            staff[user] = StaffMember(_norm(values.get("surname")), _norm(values.get("address")),
                                      _norm(values.get("department")))
    except csv.Error as exc:
        unclosed = " (a quoted value on this line never closes: close its quote, or double a quote within it)" \
            if "end of data" in str(exc) else ""
        raise ListFileError(path, f"line {end + 1}: {exc}{unclosed}") from None
    return staff


_DELIMITER_NAMES = {",": "comma", ";": "semicolon", "\t": "tab"}


def rule_files(*, baseline: bool = True, unexplained: bool = False) -> list[Path]:
    """The adapter's own rule files (rules/), for the engine's rules_dirs: the per-user baseline, and
    the unexplained access (which makes every received access query the store)."""
    folder = Path(__file__).with_name("rules")
    return [folder / name for name, wanted in (("baseline.yaml", baseline), ("unexplained.yaml", unexplained))
            if wanted]


#: Apostrophes and hyphens as a word processor or an HR system types them (O’Brien, U+2019; a
#: non-breaking hyphen, U+2011), as the ASCII ones a PACS writes.
_PUNCTUATION = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "\u00b4": "'", "`": "'",
                              "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u00ad": None})
#: The German spelling of umlauts where a system has only ASCII (PS3.5's default repertoire): MUELLER.
_UMLAUTS = str.maketrans({"Ä": "AE", "Ö": "OE", "Ü": "UE"})


def surname_forms(name: str) -> frozenset[str]:
    """The forms a surname (as `_norm` gives it) is compared in: as written, with its umlauts spelt
    out (Müller as MUELLER) and without its diacritics (MULLER), each with ASCII apostrophes and
    hyphens: a PACS whose character set is ASCII writes MUELLER or MULLER for the directory's Müller."""
    text = name.translate(_PUNCTUATION)
    bare = "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))
    return frozenset({text, unicodedata.normalize("NFC", text).translate(_UMLAUTS), bare}) - {""}


def _detail_texts(value: str) -> list[str]:
    """A ParticipantObjectDetail value as the texts it may say: as sent, and decoded from base64
    (PS3.15 A.5.1 and RFC 3881 type it xs:base64Binary, FHIR valueBase64Binary) when it is valid
    base64 of UTF-8 text; a plain-text value (FHIR valueString, a lax sender) is itself."""
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return [value]
    return [value, decoded] if decoded else [value]


def _patients(event: Event) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = list(event.details.get("patients") or ())
    return found or [{"id": p} for p in event.patient_ids if "^" not in p]


def _patient_names(event: Event) -> Iterable[tuple[frozenset[str], frozenset[str]]]:
    """(surnames, addresses) of each patient object: ParticipantObjectName as a DICOM PN, whose
    family name is the first component of each of its component groups (PS3.5 6.2.1.2:
    alphabetic=ideographic=phonetic, each FAMILY^GIVEN^...: "Yamada^Tarou=山田^太郎" is Yamada and
    山田), each in its `surname_forms`; the address from a ParticipantObjectDetail of type
    "address", when the sender gives one, as sent and base64-decoded (_detail_texts)."""
    for obj in event.details.get("objects", ()):
        if obj.get("type_code") == "1" and obj.get("role") == "1":
            name = str(obj.get("name") or "")
            surnames = frozenset(f for group in name.split("=") for f in surname_forms(_norm(group.split("^", 1)[0])))
            addresses = frozenset(_norm(t) for d in obj.get("details", ()) if d.get("type") == "address"
                                  for t in _detail_texts(str(d.get("value", ""))))
            yield surnames - {""}, addresses - {""}


def _received(event: Event) -> float | None:
    """When a received message arrived (``details.received``), None when not recorded."""
    text = event.details.get("received")
    try:
        return datetime.fromisoformat(text).timestamp() if isinstance(text, str) else None
    except ValueError:
        return None


#: Tells whether the store explains an access: (explained, the template's name), or None for an
#: event that is no access.
Explainer = Callable[[Event], "tuple[bool, str] | None"]


class AuditAdapter:
    def __init__(self, engine: Engine, lists: PrivacyLists | None = None, *, explain: Explainer | None = None,
                 baseline: BaselineSettings | None = None, zone: SiteZone | None = None) -> None:
        self.engine = engine
        self.zone = zone or SiteZone.named(LOCAL)  # the hour and weekday of an access are the site's
        self.lists = lists or PrivacyLists()
        self.explain = explain
        self.hours = PatientsPerHour(baseline)
        self._uses: tuple[int, frozenset[str]] = (0, frozenset())

    def _used(self, rules: list[CompiledRule]) -> frozenset[str]:
        """The fields the rules name (conditions, threshold keys and values): costly ones are made
        only for them."""
        if self._uses[0] != id(rules):
            names: set[str] = set()
            for compiled in rules:
                names.update(c.field for c in compiled.rule.conditions)
                t = compiled.threshold
                if t is not None:
                    names.update([*t.by, *(n for n in (t.distinct, t.sum) if n)])
            self._uses = (id(rules), frozenset(names))
        return self._uses[1]

    def wants_explanations(self) -> bool:
        """Whether an access is judged by the explainer: a loaded rule names its fields."""
        rules = self.engine.rules_for(PROTOCOL).get("access")
        return rules is not None and self.explain is not None and bool(self._used(rules) & EXPLAIN_FIELDS)

    def observe(self, event: Event, now: float) -> list[Alert]:
        """The alerts of one received audit message (other Events are not accesses: none)."""
        if not event.kind.startswith("atna.audit."):
            return []
        rules = self.engine.rules_for(PROTOCOL).get("access")
        self.engine.observations += 1
        if not rules:
            return []
        d = event.details
        patients = [str(p.get("id", "")) for p in _patients(event) if p.get("id")]
        # The user's identity (UserID), never the display name: the directory is keyed by login,
        # and the baseline and thresholds count per user (PS3.15 A.5.2.1); in lower case, as logins
        # are compared (JSMITH from the EMR and jsmith from the viewer are one user).
        user = (mapping.user_of(event) or "").strip().lower()
        me = self.lists.staff.get(user)
        names = list(_patient_names(event))
        fields = {
            "user": user, "user_name": mapping.user_name_of(event) or "", "user_host": event.actor.host or "",
            "event": event.kind.rsplit(".", 1)[-1],
            "event_id": str((d.get("event_id") or {}).get("code", "")), "action": str(d.get("action") or ""),
            "outcome": str(d.get("outcome_indicator") or ""), "patient": patients[0] if patients else "",
            "patients": patients, "patient_count": len(patients),
            "purposes": [str(p.get("code", "")) for p in d.get("purposes", ())],
            "hour": (local := self.zone.of(event.time)).hour, "weekday": local.isoweekday(),
            "watched": any(p in self.lists.watched for p in patients),
            "same_surname": bool(me and me.surname and any(surname_forms(me.surname) & s for s, _ in names)),
            "same_address": bool(me and me.address and any(me.address in a for _, a in names)),
        }
        used = self._used(rules)
        if used & BASELINE_FIELDS and user:
            figures = self.hours.add(user, patients, event.time.timestamp(), _received(event))
            fields.update(hour_patients=figures.hour_patients, baseline_patients=figures.baseline_patients,
                          baseline_hours=figures.baseline_hours, above_baseline=figures.above_baseline)
        if used & EXPLAIN_FIELDS and self.explain is not None:
            verdict = self.explain(event)
            if verdict is not None:
                fields.update(explained=verdict[0], explanation=verdict[1])
        source = str((d.get("source") or {}).get("id") or "unknown")
        flow = Flow(event.actor.host or user or "unknown", 0, source, 0, sensor="audit", id=f"audit:{user}")
        return self.engine.run(rules, "access", PROTOCOL, fields, flow, now, None)
