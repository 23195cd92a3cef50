"""Detection rules: the model, the IDS settings they may refer to, and YAML loading.

A rule file is a YAML list of rules (the language is documented in docs/ids.md)::

    - id: dicom-ae-brute-force
      title: AE title brute forcing
      severity: error
      protocol: dicom
      on: association-result
      match:
        rejected: true
        reason: {in: [calling-ae-not-recognized, called-ae-not-recognized]}
      threshold: {count: 5, within: 60s, by: [client_host], distinct: ae_pair}
      action: quarantine
      quarantine_for: 15m
      reference: https://nmap.org/nsedoc/scripts/dicom-brute.html; MITRE ATT&CK T1110

Loading validates everything a rule names (kind, fields, operators, settings lists, durations)
against the observation registry, collects *every* problem of every file, and raises one
:class:`RuleError` listing them as ``FILE:LINE: rule ID: field: problem``.  A broken rule is
never skipped: a caller that gets a RuleError must not run with the rules that did load.
"""

from __future__ import annotations

import fnmatch
import re
import re._parser as _sre  # the stdlib's regex parser: backtracking_risk reads the parsed pattern
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from ipaddress import ip_network
from pathlib import Path
from typing import Any, Final, Literal

import yaml

from pacsguard.config.networks import parse_network
from pacsguard.events import Severity
from pacsguard.yaml_shape import INT_TAG, TOO_DEEP, construct_int, shape_problem

from .observation import FieldType, KindSpec
from .protocols import KINDS

Action = Literal["alert", "drop", "abort", "quarantine"]
ACTIONS: Final = ("alert", "drop", "abort", "quarantine")

RULE_KEYS: Final = (
    "id", "title", "severity", "protocol", "on", "match", "threshold", "limit",
    "action", "quarantine_for", "reference", "description",
)
THRESHOLD_KEYS: Final = ("count", "within", "by", "distinct", "sum", "baseline")
LIMIT_KEYS: Final = ("count", "within", "by")
OPERATORS: Final = (
    "equals", "in", "not_in", "regex", "wildcard", "exists", "empty",
    "cidr_in", "not_cidr_in", "gt", "lt",
)
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

#: Settings lists a rule may name as ``$name``: name -> what the list holds.
SETTINGS_REFS: Final[Mapping[str, Literal["str", "int", "cidr"]]] = {
    "known_ae_titles": "str",
    "move_destinations": "str",
    "document_sources": "str",
    "internal_networks": "cidr",
    "dicom_ports": "int",
}


def _bounded_repr() -> reprlib.Repr:
    shown = reprlib.Repr()
    shown.maxstring = shown.maxother = 80
    shown.maxlist = shown.maxtuple = shown.maxdict = shown.maxset = 8
    shown.maxlevel = 3
    return shown


_SHOWN: Final = _bounded_repr()


def _shown(value: object) -> str:
    """A YAML value as a problem message quotes it: like repr(), but cut short. YAML aliases let a
    few hundred bytes of a rule file stand for a value of gigabytes once written out."""
    return _SHOWN.repr(value)


def parse_duration(value: object) -> float:
    """``"500ms"``, ``"60s"``, ``"15m"``, ``"1h"``, ``"2d"`` -> seconds.  Raises ValueError."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected a duration with a unit such as 60s, 15m, 1h or 1d, got {_shown(value)}")
    match = _DURATION.match(value)
    if match is None:
        raise ValueError(f"expected a duration with a unit such as 60s, 15m, 1h or 1d, got {_shown(value)}")
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"a duration must be positive, got {_shown(value)}")
    return seconds


def format_duration(seconds: float) -> str:
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


# ------------------------------------------------------------------------------- settings


# ----------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class SettingRef:
    """``$name`` in a rule: a list from :class:`IdsSettings`, resolved when the engine starts."""

    name: str

    def __str__(self) -> str:
        return f"${self.name}"


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    op: str
    value: Any  # literal (list, str, int, bool, compiled pattern source) or SettingRef


@dataclass(frozen=True, slots=True)
class Threshold:
    count: float
    within: float  # seconds
    by: tuple[str, ...] = ("client_host",)
    distinct: str | None = None
    sum: str | None = None
    baseline: float | None = None

    def describe(self) -> str:
        what = (f"{self.count:g} distinct {self.distinct}" if self.distinct
                else f"sum of {self.sum} >= {self.count:g}" if self.sum else f"{self.count:g} events")
        text = f"{what} within {format_duration(self.within)} per {'+'.join(self.by) or 'all'}"
        if self.baseline is not None:
            text += f", and > {self.baseline:g}x baseline"
        return text


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``count`` alert events per key (the ``by`` fields) per ``within`` seconds; the
    matches beyond are summed up in one aggregate alert when the window closes (:mod:`.limit`)."""

    count: int
    within: float  # seconds
    by: tuple[str, ...] = ("client_host",)

    def describe(self) -> str:
        return f"{self.count} alert(s) per {'+'.join(self.by) or 'all'} per {format_duration(self.within)}"


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    title: str
    severity: Severity
    protocol: str
    on: str
    conditions: tuple[Condition, ...]
    action: Action
    reference: str
    threshold: Threshold | None = None
    quarantine_for: timedelta | None = None
    limit: Limit | None = None
    description: str = ""
    file: str = ""
    line: int | None = None
    builtin: bool = False

    def settings_refs(self) -> list[str]:
        return [c.value.name for c in self.conditions if isinstance(c.value, SettingRef)]


@dataclass(frozen=True, slots=True)
class RuleProblem:
    file: str
    rule_id: str | None
    field: str
    problem: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        # The id and a field name come from the file as written: a hostile or broken file must
        # not turn one message into megabytes (the problem text is already cut by _shown).
        rule = f" rule {_clipped(self.rule_id)}:" if self.rule_id else ""
        return f"{where}:{rule} {_clipped(self.field)}: {self.problem}"


def _clipped(text: str, most: int = 80) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


class RuleError(Exception):
    """Rules that cannot be used; ``problems`` lists every one (file, rule id, field, problem)."""

    def __init__(self, problems: list[RuleProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    @property
    def file(self) -> str:
        return self.problems[0].file

    @property
    def rule_id(self) -> str | None:
        return self.problems[0].rule_id

    @property
    def field(self) -> str:
        return self.problems[0].field

    @property
    def problem(self) -> str:
        return self.problems[0].problem


# ----------------------------------------------------------------------------- YAML


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """Safe YAML that refuses duplicate keys (a second `match:` would silently replace the first)
    and reads only true/false as booleans (YAML 1.2): in YAML 1.1 the key `on:` and values such
    as `no` or `off` are booleans, which would turn `on: dimse-request` into nonsense.

    Parsed by libyaml when PyYAML has it (a tenth of the pure-Python parser's time: every command
    that runs rules parses the built-in set first); resolving and constructing stay in Python."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _construct_mapping(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark) from None
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {_shown(key)}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_Loader.add_constructor(INT_TAG, construct_int)


def _yaml_problem(file: str, exc: yaml.YAMLError) -> RuleProblem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    text = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        text = f"{text} (column {mark.column + 1})"
    return RuleProblem(file, None, "yaml", text, line)


def parse_rules_text(text: str, file: str, *, builtin: bool = False) -> tuple[list[Rule], list[RuleProblem]]:
    """Parse one rule file's text; returns the good rules and every problem found."""
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
            if root is None:
                return [], []
            if not isinstance(root, yaml.SequenceNode):
                expected = "expected a YAML list of rules (each starting with '- id:')"
                return [], [RuleProblem(file, None, "file", expected, root.start_mark.line + 1)]
            items = [(node.start_mark.line + 1, loader.construct_object(node, deep=True)) for node in root.value]
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        return [], [_yaml_problem(file, exc)]
    except RecursionError:  # the pure-Python constructor recurses per nesting level
        return [], [RuleProblem(file, None, "file", TOO_DEEP)]
    shape = shape_problem([data for _, data in items])  # the limits pacsguard.yaml has, aliases expanded
    if shape is not None:
        return [], [RuleProblem(file, None, "file", shape)]
    rules: list[Rule] = []
    problems: list[RuleProblem] = []
    for index, (line, data) in enumerate(items, 1):
        rule, found = parse_rule(data, file, line=line, index=index, builtin=builtin)
        problems.extend(found)
        if rule is not None and not found:
            rules.append(rule)
    return rules, problems


def parse_rule(data: object, file: str, *, line: int | None = None, index: int = 1,
               builtin: bool = False) -> tuple[Rule | None, list[RuleProblem]]:
    """Validate one rule mapping; returns (rule or None, problems)."""
    problems: list[RuleProblem] = []
    if not isinstance(data, dict):
        return None, [RuleProblem(file, f"#{index}", "rule", "expected a mapping with id, title, severity, ...", line)]
    raw_id = data.get("id")
    rule_id = raw_id if isinstance(raw_id, str) and raw_id else f"#{index}"

    def bad(field: str, problem: str) -> None:
        problems.append(RuleProblem(file, rule_id, field, problem, line))

    for key in data:
        if key not in RULE_KEYS:
            bad(str(key), f"unknown field (known: {', '.join(RULE_KEYS)})")

    if raw_id is None:
        bad("id", "missing")
    elif not isinstance(raw_id, str) or not _ID.match(raw_id):
        bad("id", f"expected lower-case letters, digits, '.', '_' or '-' (1-64), got {_shown(raw_id)}")

    title = data.get("title")
    if not isinstance(title, str) or not title.strip():
        bad("title", "missing" if title is None else f"expected text, got {_shown(title)}")

    severity: Severity | None = None
    raw_sev = data.get("severity")
    names = ", ".join(s.name.lower() for s in Severity)
    if raw_sev is None:
        bad("severity", f"missing (one of {names})")
    else:
        try:
            if not isinstance(raw_sev, str):
                raise KeyError
            severity = Severity.parse(raw_sev)
        except KeyError:
            bad("severity", f"expected one of {names}, got {_shown(raw_sev)}")

    protocol = data.get("protocol")
    kinds = KINDS.get(protocol) if isinstance(protocol, str) else None
    if protocol is None:
        bad("protocol", f"missing (one of {', '.join(KINDS)})")
    elif kinds is None:
        bad("protocol", f"unknown protocol {_shown(protocol)} (known: {', '.join(KINDS)})")

    on = data.get("on")
    spec: KindSpec | None = None
    if on is None:
        bad("on", "missing (the observation kind the rule matches)")
    elif kinds is not None:
        spec = kinds.get(on) if isinstance(on, str) else None
        if spec is None:
            bad("on", f"unknown observation kind {_shown(on)} for {protocol} (known: {', '.join(kinds)})")

    conditions: list[Condition] = []
    match = data.get("match", {})
    if match is None:
        match = {}
    if not isinstance(match, dict):
        bad("match", "expected a mapping of field: condition")
    elif spec is not None:
        for field, cond in match.items():
            conditions.extend(_parse_condition(spec, str(field), cond, bad))

    threshold = None
    if data.get("threshold") is not None:
        threshold = _parse_threshold(spec, data["threshold"], bad)
    limit = _parse_limit(spec, data["limit"], bad) if data.get("limit") is not None else None

    action = data.get("action", "alert")
    if action not in ACTIONS:
        bad("action", f"expected one of {', '.join(ACTIONS)}, got {_shown(action)}")
    quarantine_for = None
    if "quarantine_for" in data:
        if action != "quarantine":
            bad("quarantine_for", "only meaningful with action: quarantine")
        else:
            try:
                quarantine_for = timedelta(seconds=parse_duration(data["quarantine_for"]))
            except ValueError as exc:
                bad("quarantine_for", str(exc))
    elif action == "quarantine":
        bad("quarantine_for", "missing (how long to quarantine the source, e.g. 15m)")

    reference = data.get("reference")
    if not isinstance(reference, str) or not reference.strip():
        bad("reference", "missing (a URL, a standard's section, a CVE or an ATT&CK id)"
            if reference is None else f"expected text, got {_shown(reference)}")
    description = data.get("description", "")
    if not isinstance(description, str):
        bad("description", "expected text")

    if problems or severity is None or spec is None:
        return None, problems
    return Rule(
        id=str(raw_id), title=str(title).strip(), severity=severity, protocol=str(protocol), on=str(on),
        conditions=tuple(conditions), action=action, reference=str(reference).strip(),
        threshold=threshold, quarantine_for=quarantine_for, limit=limit, description=str(description).strip(),
        file=file, line=line, builtin=builtin,
    ), []


_NUMERIC: Final = ("int", "float")
#: How a parser reports a problem: (field, problem), collected into the RuleError.
_Report = Callable[[str, str], None]


#: A repeat that may run more times than this is "unbounded" for :func:`backtracking_risk`.
_FEW_REPEATS: Final = 16
_REPEATS: Final = (_sre.MAX_REPEAT, _sre.MIN_REPEAT)


def backtracking_risk(pattern: str) -> str | None:
    """Why a regular expression can backtrack exponentially, or None.

    Python's ``re`` backtracks: a repeat whose body can match the same text in more than one way
    tries every way before it fails, 2**n of them for n characters (the classic ReDoS patterns
    ``(a+)+``, ``(\\w+\\s?)*``, ``(A|AA)+``).  This is a conservative test on the parsed pattern
    (the stdlib's own parser, ``re._parser``): an unbounded repeat (more than 16 times) whose
    body holds another repeat or an alternation is refused, unless the body is an atomic group or
    the repeat possessive (Python 3.11), which never backtrack into what they matched.  Some
    harmless patterns are refused (``(CT|MR)+``); each has an atomic spelling (``(?>CT|MR)+``).
    """
    try:
        tree = _sre.parse(pattern)
    except re.error:
        return None  # reported as invalid by the caller
    return _risk_in(list(tree))


def _risk_in(items: list[tuple[Any, Any]]) -> str | None:
    for op, av in items:
        if op in _REPEATS:
            _, high, body = av
            if high > _FEW_REPEATS and _ambiguous(list(body)):
                return "repeats a part that itself repeats or has alternatives"
            found = _risk_in(list(body))
        elif op in (_sre.POSSESSIVE_REPEAT, _sre.ATOMIC_GROUP):
            continue  # nothing inside is retried once matched
        else:
            found = None
            for sub in _children(op, av):
                found = found or _risk_in(list(sub))
        if found:
            return found
    return None


def _ambiguous(items: list[tuple[Any, Any]]) -> bool:
    """Does a repeated body hold a repeat (more than once) or an alternation, outside atomic parts?"""
    for op, av in items:
        if op in _REPEATS and av[1] > 1:
            return True
        if op is _sre.BRANCH:
            return True
        if op in (_sre.POSSESSIVE_REPEAT, _sre.ATOMIC_GROUP):
            continue
        if any(_ambiguous(list(sub)) for sub in _children(op, av)):
            return True
    return False


def _children(op: Any, av: Any) -> list[Any]:
    """The sub-patterns of one parsed node (groups, alternatives, look-arounds, conditionals)."""
    if op is _sre.SUBPATTERN:
        return [av[3]]
    if op is _sre.BRANCH:
        return list(av[1])
    if op in (_sre.ASSERT, _sre.ASSERT_NOT):
        return [av[1]]
    if op is _sre.GROUPREF_EXISTS:
        return [p for p in av[1:] if p is not None]
    return []


def _scalar_for(ftype: FieldType, value: object, where: str, bad: _Report) -> tuple[bool, object]:
    """Check/convert one literal for a field of type *ftype*."""
    if ftype == "bool":
        if isinstance(value, bool):
            return True, value
        bad(where, f"expected true or false, got {_shown(value)}")
        return False, None
    if ftype in _NUMERIC:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, value
        bad(where, f"expected a number, got {_shown(value)}")
        return False, None
    # str, ip, str-list elements: YAML may read an AE title such as 1234 as a number.
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return True, str(value)
    bad(where, f"expected text, got {_shown(value)}")
    return False, None


def _ref(value: object, where: str, bad: _Report, kinds: tuple[str, ...]) -> SettingRef | None:
    if isinstance(value, str) and value.startswith("$"):
        name = value[1:]
        if name not in SETTINGS_REFS:
            bad(where, f"unknown settings list {value} (known: {', '.join('$' + n for n in SETTINGS_REFS)})")
            return None
        if SETTINGS_REFS[name] not in kinds:
            bad(where, f"{value} holds {SETTINGS_REFS[name]} values, which this operator cannot use")
            return None
        return SettingRef(name)
    return None


def _parse_condition(spec: KindSpec, field: str, cond: object, bad: _Report) -> list[Condition]:
    where = f"match.{field}"
    ftype = spec.field_type(field)
    if ftype is None:
        bad(where, f"unknown field for on: {spec.kind} (known: {', '.join(spec.all_fields())})")
        return []
    if isinstance(cond, list):
        bad(where, "a list needs an operator, e.g. {in: [A, B]}")
        return []
    shorthand = not isinstance(cond, dict)
    ops: dict[Any, Any] = {"equals": cond} if shorthand else cond  # type: ignore[assignment]
    if not ops:
        bad(where, f"no operator (use one of {', '.join(OPERATORS)})")
        return []
    elem: FieldType = "str" if ftype == "str-list" else ftype
    out: list[Condition] = []
    for op, arg in ops.items():
        at = where if shorthand else f"{where}.{op}"
        if op not in OPERATORS:
            bad(at, f"unknown operator (known: {', '.join(OPERATORS)})")
            continue
        if op in ("exists", "empty"):
            if not isinstance(arg, bool):
                bad(at, f"expected true or false, got {_shown(arg)}")
                continue
            out.append(Condition(field, op, arg))
        elif op == "equals":
            ok, value = _scalar_for(elem, arg, at, bad)
            if ok:
                out.append(Condition(field, op, value))
        elif op in ("in", "not_in"):
            ref = _ref(arg, at, bad, ("int",) if elem in _NUMERIC else ("str",))
            if ref is not None:
                out.append(Condition(field, op, ref))
            elif isinstance(arg, str) and arg.startswith("$"):
                continue
            elif not isinstance(arg, list) or not arg:
                bad(at, f"expected a non-empty list or a $settings list, got {_shown(arg)}")
            else:
                values = []
                for item in arg:
                    ok, value = _scalar_for(elem, item, at, bad)
                    if ok:
                        values.append(value)
                if len(values) == len(arg):
                    out.append(Condition(field, op, tuple(values)))
        elif op in ("regex", "wildcard"):
            if elem not in ("str", "ip"):
                bad(at, f"{op} applies to text fields; {field} is {ftype}")
                continue
            if not isinstance(arg, str):
                bad(at, f"expected a pattern string, got {_shown(arg)}")
                continue
            try:
                re.compile(arg if op == "regex" else fnmatch.translate(arg))
            except re.error as exc:
                bad(at, f"invalid regular expression: {exc}")
                continue
            except OverflowError as exc:  # a repeat count beyond sre's MAXREPEAT: a{99999999999}
                bad(at, f"invalid regular expression: {exc}")
                continue
            except RecursionError:  # sre's parser recurses per nested group
                bad(at, "invalid regular expression: groups nested too deeply")
                continue
            risk = backtracking_risk(arg) if op == "regex" else None
            if risk is not None:
                bad(at, f"{_shown(arg)} {risk}, which can take exponential time on a value a peer "
                        "chooses (ReDoS) and stall the sensor or the gateway: make the repeated part "
                        "atomic, (?>...), or the quantifier possessive (*+, ++)")
                continue
            out.append(Condition(field, op, arg))
        elif op in ("cidr_in", "not_cidr_in"):
            if ftype != "ip":
                bad(at, f"{op} applies to address fields (client_host, server_host); {field} is {ftype}")
                continue
            ref = _ref(arg, at, bad, ("cidr",))
            if ref is not None:
                out.append(Condition(field, op, ref))
                continue
            if isinstance(arg, str) and arg.startswith("$"):
                continue
            items = arg if isinstance(arg, list) else [arg]
            nets = []
            for item in items:
                try:
                    ip_network(str(item), strict=False)
                except ValueError:
                    bad(at, f"expected CIDRs such as 10.0.0.0/8 or a $settings list, got {_shown(item)}")
                    continue
                try:  # as the configuration's networks: host bits set are refused, never widened
                    nets.append(str(parse_network(item)))
                except ValueError as exc:
                    bad(at, str(exc))
            if len(nets) == len(items) and nets:
                out.append(Condition(field, op, tuple(nets)))
        else:  # gt, lt
            if elem not in _NUMERIC:
                bad(at, f"{op} applies to numeric fields; {field} is {ftype}")
                continue
            ok, value = _scalar_for(elem, arg, at, bad)
            if ok:
                out.append(Condition(field, op, value))
    return out


def _parse_by(spec: KindSpec | None, by: object, fail: _Report) -> list[str]:
    """The ``by`` fields of a threshold or limit (the key): names of the kind's fields."""
    if isinstance(by, str):
        by = [by]
    if not isinstance(by, list) or not all(isinstance(b, str) for b in by):
        fail("by", f"expected a list of field names, got {_shown(by)}")
        return []
    if spec is not None:
        for name in by:
            if spec.field_type(name) is None:
                fail("by", f"unknown field {_shown(name)} for on: {spec.kind}")
    return by


def _parse_threshold(spec: KindSpec | None, data: object, bad: _Report) -> Threshold | None:
    if not isinstance(data, dict):
        bad("threshold", "expected a mapping with count and within")
        return None
    ok = True

    def fail(field: str, problem: str) -> None:
        nonlocal ok
        ok = False
        bad(f"threshold.{field}", problem)

    for key in data:
        if key not in THRESHOLD_KEYS:
            fail(str(key), f"unknown field (known: {', '.join(THRESHOLD_KEYS)})")
    count = data.get("count")
    if count is None:
        fail("count", "missing")
    elif isinstance(count, bool) or not isinstance(count, (int, float)) or count < 1:
        fail("count", f"expected a number of at least 1, got {_shown(count)}")
    within = 0.0
    if "within" not in data:
        fail("within", "missing (e.g. 60s, 10m, 1h)")
    else:
        try:
            within = parse_duration(data["within"])
        except ValueError as exc:
            fail("within", str(exc))
    by = _parse_by(spec, data.get("by", ["client_host"]), fail)
    distinct = data.get("distinct")
    total = data.get("sum")
    for key, name in (("distinct", distinct), ("sum", total)):
        if name is None:
            continue
        if not isinstance(name, str):
            fail(key, f"expected a field name, got {_shown(name)}")
        elif spec is not None and spec.field_type(name) is None:
            fail(key, f"unknown field {_shown(name)} for on: {spec.kind}")
        elif key == "sum" and spec is not None and spec.field_type(name) not in _NUMERIC:
            fail(key, f"{name} is not numeric")
    if distinct is not None and total is not None:
        fail("sum", "give either distinct or sum, not both")
    baseline = data.get("baseline")
    if baseline is not None:
        if isinstance(baseline, bool) or not isinstance(baseline, (int, float)) or baseline <= 0:
            fail("baseline", f"expected a positive factor such as 5, got {_shown(baseline)}")
        elif distinct is not None:
            fail("baseline", "a baseline applies to count or sum thresholds, not distinct")
    if not ok or count is None:
        return None
    return Threshold(count=float(count), within=within, by=tuple(by), distinct=distinct, sum=total,
                     baseline=float(baseline) if baseline is not None else None)


def _parse_limit(spec: KindSpec | None, data: object, bad: _Report) -> Limit | None:
    if not isinstance(data, dict):
        bad("limit", "expected a mapping with count and within, e.g. {count: 1, within: 10m, by: [client_host]}")
        return None
    problems: list[str] = []

    def fail(field: str, problem: str) -> None:
        problems.append(field)
        bad(f"limit.{field}", problem)

    for key in data:
        if key not in LIMIT_KEYS:
            fail(str(key), f"unknown field (known: {', '.join(LIMIT_KEYS)})")
    count = data.get("count")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        fail("count", "missing" if count is None else f"expected a whole number of at least 1, got {_shown(count)}")
    within = 0.0
    try:
        within = parse_duration(data.get("within"))
    except ValueError as exc:
        fail("within", "missing (e.g. 10m)" if "within" not in data else str(exc))
    by = _parse_by(spec, data.get("by", ["client_host"]), fail)
    if problems:
        return None
    return Limit(count=int(count), within=within, by=tuple(by))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- loading

BUILTIN_PACKAGE: Final = "pacsguard.ids.rules"


def builtin_rule_files() -> list[tuple[str, str]]:
    """(display name, text) of every built-in rule file, in name order."""
    root = resources.files("pacsguard.ids").joinpath("rules")
    out = []
    for entry in sorted(root.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            out.append((f"builtin:{entry.name}", entry.read_text(encoding="utf-8")))
    return out


def rule_files(paths: list[Path]) -> tuple[list[Path], list[RuleProblem]]:
    """Expand directories (their *.yaml / *.yml, recursively, in name order) and check files exist."""
    files: list[Path] = []
    problems: list[RuleProblem] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append(RuleProblem(str(path), None, "path", "no such file or directory"))
    return files, problems


def load_rules(dirs: list[Path], *, builtin: bool = True) -> list[Rule]:
    """Load the built-in rules (unless ``builtin=False``) and every rule file under *dirs*.

    Raises :class:`RuleError` listing every problem (bad YAML, unknown field or operator,
    unknown observation kind, bad duration, duplicate id, missing path ...).
    """
    sources: list[tuple[str, str, bool]] = []
    problems: list[RuleProblem] = []
    if builtin:
        sources.extend((name, text, True) for name, text in builtin_rule_files())
    files, missing = rule_files(list(dirs))
    problems.extend(missing)
    for path in files:
        try:
            sources.append((str(path), path.read_text(encoding="utf-8"), False))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(RuleProblem(str(path), None, "file", f"cannot read: {exc}"))
    rules: list[Rule] = []
    seen: dict[str, Rule] = {}
    for name, text, is_builtin in sources:
        found, bad = parse_rules_text(text, name, builtin=is_builtin)
        problems.extend(bad)
        for rule in found:
            if rule.id in seen:
                first = seen[rule.id]
                where = f"{first.file}:{first.line}" if first.line else first.file
                problems.append(RuleProblem(name, rule.id, "id", f"duplicate rule id (first defined in {where})",
                                            rule.line))
                continue
            seen[rule.id] = rule
            rules.append(rule)
    if problems:
        raise RuleError(problems)
    return rules
