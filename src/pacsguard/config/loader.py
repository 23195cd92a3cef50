"""Reading pacsguard.yaml: YAML errors and schema errors become one `ConfigError` listing every
problem with its key path (e.g. `store.checkpoint_interval`) and what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pacsguard.config.schema import PacsguardConfig


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[ConfigProblem]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class LoadedConfig:
    config: PacsguardConfig
    path: Path | None

    def resolve(self, value: Path) -> Path:
        """Relative paths in the file are relative to the file's own folder, as in Orthanc's config."""
        if value.is_absolute() or self.path is None:
            return value
        return self.path.parent / value


def load_config(path: Path) -> LoadedConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), [ConfigProblem("(file)", "not found (run `pacsguard init` to write one)")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [ConfigProblem("(file)", f"cannot read it: {exc}")]) from None
    return LoadedConfig(parse_config(text, str(path)), path.resolve())


def parse_config(text: str, source: str = "<config>") -> PacsguardConfig:
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [ConfigProblem(where, f"not valid YAML: {problem}")]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [ConfigProblem("(top level)", f"expected a mapping of sections, got {type(data).__name__}")])
    try:
        return PacsguardConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_problem(err) for err in exc.errors()]) from None


def _problem(err: dict[str, Any]) -> ConfigProblem:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return ConfigProblem(key, "unknown key (check its spelling and section)")
    if kind == "missing":
        return ConfigProblem(key, "required key is missing")
    msg = msg.removeprefix("Value error, ")
    if "input" in err and kind not in ("value_error",) and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return ConfigProblem(key, msg)
