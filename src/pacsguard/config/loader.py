"""Reading pacsguard.yaml: YAML errors and schema errors become one `ConfigError` listing every
problem with its key path (e.g. `store.checkpoint_interval`) and what was expected."""

from __future__ import annotations

import difflib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from pacsguard.config.schema import PacsguardConfig
from pacsguard.yaml_shape import INT_TAG, TOO_DEEP, construct_int, shape_problem

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


_UniqueKeyLoader.add_constructor(INT_TAG, construct_int)


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
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        problem = ConfigProblem("(file)", "not found (run `pacsguard init` to write one)")
        raise ConfigError(str(path), [problem]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [not_utf8(raw, exc)]) from None
    except OSError as exc:
        raise ConfigError(str(path), [ConfigProblem("(file)", f"cannot read it: {exc}")]) from None
    resolved = path.resolve()
    return LoadedConfig(parse_config(text, str(path), model, base=resolved.parent), resolved)


def not_utf8(raw: bytes, exc: UnicodeDecodeError) -> ConfigProblem:
    """Where a file that is not UTF-8 (YAML 1.2, 5.2) first fails, as a line and column an editor
    shows, not the byte offset Python's codec gives; a UTF-16 file (an editor's "Unicode") is named."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return ConfigProblem("(file)", "is UTF-16 text; save it as UTF-8")
    before = raw[:exc.start]
    line = before.count(b"\n") + 1
    column = len(before[before.rfind(b"\n") + 1:].decode("utf-8", "replace")) + 1  # characters, as editors count
    return ConfigProblem(f"line {line}, column {column}",
                         f"not UTF-8 text: byte 0x{raw[exc.start]:02x} (save the file as UTF-8)")


def parse_config(text: str, source: str = "<config>", model: type[PacsguardConfig] | None = None,
                 base: Path | None = None) -> PacsguardConfig:
    """Validate a pacsguard.yaml text with ``model`` (default: every registered part's section).
    ``base`` is the file's folder: a secret's relative ``{file: PATH}`` is read from there."""
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
    # A section whose keys are all commented out (`store:` alone) is YAML's null: its defaults, as
    # when the section is left out, not "expected a mapping".
    data = {key: {} if value is None else value for key, value in data.items()}
    context = {"base": base} if base is not None else None
    return validate_model(model or default_model(), data, source, context=context)


def validate_model(model: type[M], data: object, source: str, prefix: str = "",
                   context: dict[str, Any] | None = None) -> M:
    """``model`` validated from ``data``; every problem, with its key path under ``prefix``, in one ConfigError."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ConfigError(source, [problem_from_pydantic(err, prefix, model) for err in exc.errors()]) from None


#: A key whose value is a secret: what was written there is never quoted back (an error goes to the
#: terminal, and from `serve` under systemd to the journal, which many people read).
_SECRET_KEY = re.compile(r"password|passphrase|secret|token", re.IGNORECASE)

_SECRET_INLINE = ("a secret is never written in the file: give {env: NAME} (an environment variable) or "
                  "{file: PATH} (a file holding only it); docs/configuration.md, \"Secrets\"")


def problem_from_pydantic(err: Any, prefix: str = "", model: type[BaseModel] | None = None) -> ConfigProblem:
    """One pydantic error as a ConfigProblem naming its key path (``prefix.`` before it) in the file's
    words. Under ``model``, an unknown key names the nearest key that section does take."""
    loc = tuple(err["loc"])
    key = ".".join([prefix] * bool(prefix) + [str(p) for p in loc]) or "(top level)"
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        hint = _nearest_key(model, loc) if model is not None else None
        return ConfigProblem(key, "unknown key (" + (f"did you mean {hint}?" if hint else
                                                    "check its spelling and section") + ")")
    if kind == "missing":
        return ConfigProblem(key, "required key is missing")
    secret = any(isinstance(p, str) and _SECRET_KEY.search(p) for p in loc)
    if kind == "model_type":
        # pydantic says "a valid dictionary or instance of StoreConfig": the class is pydantic's, not the file's.
        if (err.get("ctx") or {}).get("class_name") == "SecretRef":
            return ConfigProblem(key, _SECRET_INLINE)
        msg = "expected a mapping of keys (`key: value` lines under it)"
    msg = msg.removeprefix("Value error, ")
    if "input" in err and kind not in ("value_error",) and not isinstance(err["input"], (dict, list)) and not secret:
        msg += f" (got {err['input']!r})"
    return ConfigProblem(key, msg)


def _nearest_key(model: type[BaseModel], loc: tuple[Any, ...]) -> str | None:
    """The key of the section at ``loc[:-1]`` spelled most like the unknown ``loc[-1]`` (a typo:
    `checkpoint_intervl`), if one is close; None when none is or the section cannot be told."""
    if not loc or not isinstance(loc[-1], str):
        return None
    models = _models_at(model, loc[:-1])
    names = sorted({name for m in models for name in m.model_fields})
    close = difflib.get_close_matches(loc[-1], names, n=1)  # cutoff 0.6: `ur1` is `url`
    return close[0] if close else None


def _models_at(model: type[BaseModel], path: tuple[Any, ...]) -> list[type[BaseModel]]:
    """The models that validate the mapping at ``path`` under ``model``. A step that names no field
    (a list index, a dict's key, the class name pydantic gives a union member) leaves them as they are."""
    found: list[type[BaseModel]] = [model]
    for step in path:
        inner = [sub for m in found if isinstance(step, str) and step in m.model_fields
                 for sub in _models_in(m.model_fields[step].annotation)]
        found = inner or found
    return found


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds: itself, a union's members, a list's or a dict's values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _models_in(args[0])
    if origin in (typing.Union, types.UnionType, list, tuple, set, frozenset):
        return [m for a in args for m in _models_in(a)]
    if origin is dict and len(args) == 2:
        return _models_in(args[1])
    return []
