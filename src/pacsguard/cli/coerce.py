"""Coercing a command-line value without pydantic when the value is plainly valid.

typer 0.29 coerces every option's value through a pydantic ``TypeAdapter`` it builds on first
use; building the adapters and importing pydantic is most of what a short command such as
`pacsguard ids read` spends before it reads its first frame (docs/PERFORMANCE.md, "CLI
start-up"). Most values need no such machinery: a string is a string, a path is ``Path(text)``
checked by typer's own path rules, a whole number is ``int(text)``, a choice is one of its
members. :func:`plain_runtime_param` takes those; for anything it does not accept exactly (a bad
number, a date, a tuple, a custom parser) it hands the value to typer's adapter unchanged, so
accepted values are the ones typer accepts and every error message is typer's own (without
pydantic's "Value error, " before it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from pathlib import Path
from typing import Any, get_args, get_origin

import typer
from typer._coercion import RuntimeParam, build_runtime_param
from typer._param_types import coerce_cli_choice, coerce_cli_path, routes_to_path
from typer._typing import is_literal_type, literal_values

#: What pydantic's lax mode reads as the same number; anything else goes to typer's adapter.
_WHOLE = re.compile(r"-?[0-9]{1,18}")
_DECIMAL = re.compile(r"-?[0-9]{1,15}(\.[0-9]{1,15})?")


class _Declined(Exception):
    """The value is not plainly valid: typer's adapter decides (and words any error)."""


def plain_runtime_param(param: Any) -> RuntimeParam:
    """``get_runtime_param`` for typer's parameter classes (cli/app.py): plain values coerced
    here, the rest by typer's own adapter, built only when a value needs it."""
    if param._runtime_param is None:
        descriptor = param.type_descriptor
        param._runtime_param = _PlainRuntimeParam(
            parameter_info=descriptor.parameter_info, annotation=descriptor.annotation, descriptor=descriptor
        )
    runtime: RuntimeParam = param._runtime_param
    return runtime


@dataclass(frozen=True)
class _PlainRuntimeParam(RuntimeParam):
    """typer's RuntimeParam contract, with a pydantic-free path for plain values."""

    descriptor: Any

    @cached_property
    def _typer(self) -> RuntimeParam:
        """typer's own coercion (built on first need: it imports pydantic)."""
        return build_runtime_param(self.descriptor)

    def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
        if self.descriptor.file_annotation is None and self.parameter_info.parser is None:
            try:
                origin: Any = get_origin(self.annotation)
                if origin is list:
                    (item_type,) = get_args(self.annotation)
                    items: list[Any] | tuple[Any, ...] = value if isinstance(value, (list, tuple)) else [value]
                    return [self._leaf(item_type, item, param, ctx) for item in items]
                return self._leaf(self.annotation, value, param, ctx)
            except _Declined:
                pass
        try:
            return self._typer._coerce_value(value, param=param, ctx=ctx)
        except typer.BadParameter as exc:
            # typer words a bad choice through pydantic: "Value error, 'xml' is not one of ...". The
            # prefix is pydantic's class of error, not something the administrator typed or can act on.
            exc.message = exc.message.removeprefix("Value error, ")
            raise

    def _leaf(self, annotation: Any, value: Any, param: Any, ctx: Any) -> Any:
        info = self.parameter_info
        enum = isinstance(annotation, type) and issubclass(annotation, Enum)
        if enum or is_literal_type(annotation):
            choices: list[Any] = [*annotation] if enum else list(literal_values(annotation))
            try:
                return coerce_cli_choice(value, choices=choices, case_sensitive=info.case_sensitive, ctx=ctx)
            except ValueError:
                raise _Declined from None
        if annotation is str:
            if type(value) is str:
                return value
            raise _Declined
        if annotation is bool:
            if type(value) is bool:
                return value
            raise _Declined
        if annotation is int or annotation is float:
            return self._number(annotation, value)
        if routes_to_path(annotation, info):
            return self._path(annotation, value, param, ctx)
        raise _Declined

    def _number(self, annotation: type[int] | type[float], value: Any) -> int | float:
        info = self.parameter_info
        if info.clamp:
            raise _Declined
        if type(value) is annotation:
            number: int | float = value
        elif type(value) is str and (_WHOLE if annotation is int else _DECIMAL).fullmatch(value):
            number = annotation(value)
        else:
            raise _Declined
        if (info.min is not None and number < info.min) or (info.max is not None and number > info.max):
            raise _Declined
        return number

    def _path(self, annotation: Any, value: Any, param: Any, ctx: Any) -> Any:
        path_type: Any = self.parameter_info.path_type
        if path_type is None and isinstance(annotation, type) and issubclass(annotation, Path):
            path_type = annotation
        if isinstance(path_type, type) and issubclass(path_type, Path):
            if type(value) is not str or not value or "\x00" in value:
                raise _Declined
            value = path_type(value)
        # typer's own existence/kind/permission rules and their messages (no pydantic on this path).
        return coerce_cli_path(value, self.parameter_info, path_type=path_type, param=param, ctx=ctx)

