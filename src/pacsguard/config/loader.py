"""Reading pacsguard.yaml: YAML errors and schema errors become one `ConfigError` listing every
problem with its key path (e.g. `store.checkpoint_interval`) and what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from pacsguard.config.schema import PacsguardConfig
from pacsguard.yaml_shape import TOO_DEEP, shape_problem

M = TypeVar("M", bound=BaseModel)

MAX_CONFIG_BYTES = 1 << 20  # a configuration is a few KiB; a larger file is a mistake or an attack


MERGE_TAG = "tag:yaml.org,2002:merge"


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML whose mappings refuse a key given twice (YAML 1.2 requires unique keys; PyYAML
    would keep the last one silently), naming the lines of both."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                # `<<: *base` (YAML 1.1 merge): the base's keys come in, and the mapping's own keys
                # may override them; the base class merges them. Only the mapping's own keys are
                # checked for repeats.
                continue
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class reports it
                break
            if first is not None:  # on another line, or the same one (`{hosts: [a], hosts: [b]}`)
                where = f"twice on line {line}" if first == line else f"twice, on line {first} and on line {line}"
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given {where}",
                                                        key_node.start_mark)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


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

    def section(self, name: str) -> Any:
        """A part's section of the configuration, as its own model validated it."""
        return getattr(self.config, name)


def default_model() -> type[PacsguardConfig]:
    """The model of the whole file: the spine's sections and every registered part's."""
    from pacsguard.runtime.registry import Registry

    return Registry.default().config_model()


def load_config(path: Path, model: type[PacsguardConfig] | None = None) -> LoadedConfig:
    try:
        if path.exists() and not path.is_file():
            raise ConfigError(str(path), [ConfigProblem("(file)", "is not a regular file")])
        if path.exists() and path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(str(path), [ConfigProblem(
                "(file)", f"is {path.stat().st_size:,} bytes; a configuration is at most {MAX_CONFIG_BYTES:,}")])
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        problem = ConfigProblem("(file)", "not found (run `pacsguard init` to write one)")
        raise ConfigError(str(path), [problem]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), [ConfigProblem("(file)", f"cannot read it: {exc}")]) from None
    return LoadedConfig(parse_config(text, str(path), model), path.resolve())


def parse_config(text: str, source: str = "<config>", model: type[PacsguardConfig] | None = None) -> PacsguardConfig:
    """Validate a pacsguard.yaml text with ``model`` (default: every registered part's section)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [ConfigProblem(
            "(file)", f"is {len(text):,} characters; a configuration is at most {MAX_CONFIG_BYTES:,} bytes")])
    try:
        data: Any = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(source, [ConfigProblem(where, f"not valid YAML: {problem}")]) from None
    except RecursionError:
        raise ConfigError(source, [ConfigProblem("(file)", TOO_DEEP)]) from None
    shape = shape_problem(data)
    if shape is not None:
        raise ConfigError(source, [ConfigProblem("(file)", shape)])
    if data is None:
        data = {}
    if not isinstance(data, dict):
        problem = ConfigProblem("(top level)", f"expected a mapping of sections, got {type(data).__name__}")
        raise ConfigError(source, [problem])
    # Top-level keys starting with "x-" are the file's own (as in Compose files): a place for YAML
    # anchors that routes share (`x-pacs: &pacs {...}`, then `upstream: *pacs` or `<<: *pacs`).
    data = {key: value for key, value in data.items() if not (isinstance(key, str) and key.startswith("x-"))}
    return validate_model(model or default_model(), data, source)


def validate_model(model: type[M], data: object, source: str, prefix: str = "") -> M:
    """``model`` validated from ``data``; every problem, with its key path under ``prefix``, in one ConfigError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [problem_from_pydantic(err, prefix) for err in exc.errors()]) from None


def problem_from_pydantic(err: Any, prefix: str = "") -> ConfigProblem:
    """One pydantic error as a ConfigProblem naming its key path (``prefix.`` before it) in the file's words."""
    key = ".".join([prefix] * bool(prefix) + [str(p) for p in err["loc"]]) or "(top level)"
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        return ConfigProblem(key, "unknown key (check its spelling and section)")
    if kind == "missing":
        return ConfigProblem(key, "required key is missing")
    msg = msg.removeprefix("Value error, ")
    if "input" in err and kind not in ("value_error",) and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return ConfigProblem(key, msg)
