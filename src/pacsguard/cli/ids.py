"""`pacsguard ids rules list|check|test`: inspect, validate and try detection rules (docs/ids.md).

Exit codes (docs/cli.md): 0 ok / nothing fired, 1 `rules test` fired at least one rule,
2 a broken rule, settings or events file (every problem printed as FILE:LINE: rule ID: field: problem).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from pacsguard.cli.app import App
from pacsguard.cli.common import EXIT_FINDINGS, EXIT_USAGE, load_ids_section, print_rule_problems

if TYPE_CHECKING:
    from pacsguard.ids.engine import Engine
    from pacsguard.ids.observation import Observation
    from pacsguard.ids.rules import Rule
    from pacsguard.ids.settings import IdsSettings

app = App(name="ids", no_args_is_help=True, add_completion=False,
            help="Intrusion detection: rules, inline in the gateway and passive over captures.")
rules_app = App(name="rules", no_args_is_help=True, help="List, check and test detection rules.")
app.add_typer(rules_app)

RULES_DIR_OPTION = typer.Option([], "--rules-dir", "-d", help="directory or file of site rules (repeatable)")
NO_BUILTIN_OPTION = typer.Option(False, "--no-builtin", help="leave out the built-in rule set")
SETTINGS_OPTION = typer.Option(None, "--settings", "-s",
                               help="YAML with IDS settings: the `ids:` section of pacsguard.yaml, or the whole file")


def _error(text: str) -> None:
    from pacsguard.cli.common import print_error

    print_error(text)


def _read_yaml(path: Path) -> Any:
    """A YAML file read with the rule loader (duplicate keys are errors); exit 2 naming the file."""
    import yaml

    from pacsguard.ids.rules import _Loader

    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except OSError as exc:
        _error(f"{path}: cannot read ({exc.strerror})")
        raise typer.Exit(EXIT_USAGE) from None
    except yaml.YAMLError as exc:
        _error(f"{path}: not valid YAML: {exc}")
        raise typer.Exit(EXIT_USAGE) from None


def _load_settings(path: Path | None) -> IdsSettings:
    """A `--settings` file: the `ids:` section of a pacsguard.yaml, or that section alone."""
    from pacsguard.config import ConfigError
    from pacsguard.ids.settings import IdsSettings

    if path is None:
        return IdsSettings()
    data = _read_yaml(path) or {}
    if isinstance(data, dict) and isinstance(data.get("ids"), dict):
        data = data["ids"]
    try:
        return load_ids_section(data, str(path), path.resolve().parent)
    except ConfigError as exc:
        for problem in exc.problems:
            _error(f"{exc.source}: {problem}")
        raise typer.Exit(EXIT_USAGE) from None


def _engine(rules_dirs: list[Path], settings: IdsSettings, *, builtin: bool) -> Engine:
    """The rule engine as `serve` builds it (pacsguard.ids.passive.build_engine); exit 2 on a broken rule."""
    from pacsguard.ids.passive import build_engine
    from pacsguard.ids.rules import RuleError

    try:
        return build_engine(rules_dirs, settings, builtin=builtin)
    except RuleError as exc:
        raise print_rule_problems(exc) from None


def _threshold_text(engine: Engine, rule: Rule, *, short: bool = False) -> str:
    from pacsguard.ids.rules import format_duration

    t = engine.effective_threshold(rule.id) or rule.threshold
    if t is None:
        return ""
    if not short:
        return t.describe()
    what = f"{t.count:g} {t.distinct}" if t.distinct else f"sum {t.sum} {t.count:g}" if t.sum else f"{t.count:g}"
    text = f"{what}/{format_duration(t.within)}"
    if t.by != ("client_host",):
        text += f" by {'+'.join(t.by)}"
    if t.baseline is not None:
        text += f", >{t.baseline:g}x baseline"
    return text


@rules_app.command("list")
def list_rules(
    rules_dir: list[Path] = RULES_DIR_OPTION,
    no_builtin: bool = NO_BUILTIN_OPTION,
    settings: Path | None = SETTINGS_OPTION,
    format: str = typer.Option("table", "--format", "-f", help="table or json"),
) -> None:
    """Every rule with its severity, observation kind, action and whether it runs.

    With --settings, the settings' rules_dirs are loaded too and its overrides applied."""
    from pacsguard.cli.layout import Column, render, terminal_width, write_lines
    from pacsguard.ids.rules import format_duration

    engine = _engine(list(rules_dir), _load_settings(settings), builtin=not no_builtin)
    rules = engine.rules
    if format == "json":
        for rule in rules:
            row = {
                "id": rule.id, "title": rule.title, "severity": rule.severity.name.lower(),
                "protocol": rule.protocol, "on": rule.on,
                "action": engine.effective_action(rule.id) or rule.action,
                "threshold": _threshold_text(engine, rule) or None,
                "active": rule.id not in engine.inactive, "inactive_reason": engine.inactive.get(rule.id),
                "reference": rule.reference, "file": rule.file,
            }
            typer.echo(json.dumps(row, sort_keys=True))
        return
    if format != "table":
        _error(f"--format must be table or json, not {format!r}")
        raise typer.Exit(EXIT_USAGE)
    columns = (Column("id"), Column("title", fold=True), Column("severity"), Column("on"), Column("action"),
               Column("threshold", fold=True), Column("status", fold=True))
    rows: list[list[str]] = []
    for rule in rules:
        action = engine.effective_action(rule.id) or rule.action
        if action == "quarantine" and rule.quarantine_for is not None:
            action += f" {format_duration(rule.quarantine_for.total_seconds())}"
        status = "on" if rule.id not in engine.inactive else f"off ({engine.inactive[rule.id]})"
        rows.append([rule.id, rule.title, rule.severity.name.lower(), rule.on, action,
                     _threshold_text(engine, rule, short=True), status])
    summary = f"{len(rules)} rules, {len(rules) - len(engine.inactive)} on"
    write_lines([*render(columns, rows, terminal_width()), summary])


@rules_app.command("check")
def check(
    paths: list[Path] = typer.Argument(None, help="rule files or directories (default: the built-in set only)"),
    no_builtin: bool = NO_BUILTIN_OPTION,
    settings: Path | None = SETTINGS_OPTION,
) -> None:
    """Print OK, or every problem as FILE:LINE: rule ID: field: problem (exit 2).

    With --settings, also the settings' rules_dirs and overrides: exactly what `serve` would load."""
    from pacsguard.cli.common import console
    from pacsguard.ids.rules import RuleError, load_rules

    ids_settings = _load_settings(settings)
    if settings is not None:
        rules = _engine(list(paths or []), ids_settings, builtin=not no_builtin).rules
    else:
        try:
            rules = load_rules(list(paths or []), builtin=not no_builtin)
        except RuleError as exc:
            raise print_rule_problems(exc) from None
    what = ", ".join(str(p) for p in paths) if paths else "built-in rules" if not no_builtin else "no rules"
    if settings is not None:
        what += f" with {settings}"
    console.print(f"{what}: [bold green]OK[/] ({len(rules)} rules)", highlight=False)


_BAD = object()
_TYPE_WORDS = {"str": "text", "ip": "an address", "int": "a whole number", "float": "a number",
               "bool": "true or false", "str-list": "a list of text"}


def _typed(ftype: str, value: Any) -> Any:
    """An events-file value checked (and numbers in text fields read as text) for a field type."""
    if value is None:
        return None
    if ftype == "bool":
        return value if isinstance(value, bool) else _BAD
    if isinstance(value, bool):
        return _BAD
    if ftype == "int":
        return value if isinstance(value, int) else _BAD
    if ftype == "float":
        return value if isinstance(value, (int, float)) else _BAD
    if ftype == "str-list":
        if not isinstance(value, list) or any(isinstance(v, (bool, list, dict)) for v in value):
            return _BAD
        return [str(v) for v in value]
    return str(value) if isinstance(value, (str, int, float)) else _BAD


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int too large for a float
        return False


def _observations(path: Path) -> list[tuple[float, Observation]]:
    """Read a YAML list of observations; exit 2 with every problem."""
    from pacsguard.ids.observation import FLOW_FIELDS, Flow, Observation
    from pacsguard.ids.protocols import KINDS

    data = _read_yaml(path)
    if not isinstance(data, list):
        _error(f"{path}: expected a YAML list of observations (each with kind: and its fields)")
        raise typer.Exit(EXIT_USAGE)
    problems: list[str] = []
    out: list[tuple[float, Observation]] = []
    for index, item in enumerate(data, 1):
        where = f"{path}: observation #{index}"
        if not isinstance(item, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        item = dict(item)
        protocol = str(item.pop("protocol", "dicom"))
        kind = item.pop("kind", None)
        at = item.pop("at", float(index - 1))
        spec = KINDS.get(protocol, {}).get(kind) if isinstance(kind, str) else None
        if spec is None:
            known = ", ".join(KINDS.get(protocol, {})) or f"(no such protocol {protocol!r})"
            problems.append(f"{where}: kind: expected one of {known}, got {kind!r}")
            continue
        if isinstance(at, bool) or not isinstance(at, (int, float)) or not _finite(at):
            # .nan, .inf or an integer beyond a float: no place on a clock (the windows' arithmetic)
            problems.append(f"{where}: at: expected seconds as a number, got {at!r}")
            continue
        flow_args: dict[str, Any] = {"client_host": "192.0.2.1", "client_port": 50000,
                                     "server_host": "192.0.2.2", "server_port": 104}
        fields: dict[str, Any] = {}
        for name, value in item.items():
            name = str(name)
            ftype = spec.field_type(name)
            if ftype is None:
                problems.append(f"{where}: {name}: unknown field for kind {kind} "
                                f"(known: {', '.join(spec.all_fields())})")
                continue
            checked = _typed(ftype, value)
            if checked is _BAD:
                problems.append(f"{where}: {name}: expected {_TYPE_WORDS[ftype]}, got {value!r}")
            elif name in FLOW_FIELDS:
                flow_args[FLOW_FIELDS[name][0]] = checked
            else:
                fields[name] = checked
        try:
            flow = Flow(**flow_args)
        except TypeError as exc:  # pragma: no cover - names come from FLOW_FIELDS
            problems.append(f"{where}: {exc}")
            continue
        out.append((float(at), Observation(protocol, kind, fields, flow)))
    if problems:
        for problem in problems:
            _error(problem)
        raise typer.Exit(EXIT_USAGE)
    return out


@rules_app.command("test")
def test(
    rule_file: Path = typer.Argument(..., help="the rule file (or directory) to try"),
    events: Path = typer.Option(..., "--events", "-e", help="YAML list of observations to feed"),
    builtin: bool = typer.Option(False, "--builtin", help="also run the built-in rule set"),
    settings: Path | None = SETTINGS_OPTION,
) -> None:
    """Feed observations to the rules and print each alert.  Exit 1 if any rule fired, 0 if none."""
    from pacsguard.cli.common import console, err_console, shown

    # Only the rule file (and the built-in set if asked): the settings' own rules_dirs stay out.
    only = _load_settings(settings).model_copy(update={"rules_dirs": [], "builtin_rules": True})
    engine = _engine([rule_file], only, builtin=builtin)
    observations = _observations(events)
    for rule_id, reason in engine.inactive.items():
        err_console.print(f"[yellow]note:[/] rule {rule_id} is off: {reason}", highlight=False)
    fired = 0
    for at, obs in observations:
        for alert in engine.observe(obs, now=at):
            fired += 1
            console.print(f"{at:>9g}  [bold]{alert.rule_id}[/] ({alert.severity.name.lower()}, "
                          f"{alert.action})  {shown(alert.message)}", highlight=False, soft_wrap=True)
    console.print(f"{len(observations)} observations, {fired} alerts", highlight=False)
    if fired:
        raise typer.Exit(EXIT_FINDINGS)


# The passive sensor's commands live in their own module (capture, progress, summary).
from pacsguard.cli.ids_read import live_command, read_command  # noqa: E402

app.command("read")(read_command)
app.command("live")(live_command)
