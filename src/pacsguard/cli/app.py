"""The typer app every `pacsguard` command group is built from, tuned so that `--help` starts fast.

Two choices, both measured (docs/PERFORMANCE.md, "CLI start-up"):

* help and usage errors are rendered as plain text (``rich_markup_mode=None``): typer's rich
  renderer imports ~130 ms of rich (panels, markdown, tracebacks) before printing a line, which
  alone puts ``--help`` past twice the cost of ``import typer``. The text is the same: every
  command, option, default and help sentence; only the boxes and colours go.
* the ``--help`` flag of a command that is not asked for its help keeps the value False: typer
  leaves such a flag unset (None) and then builds a pydantic adapter to coerce it, which loads
  pydantic (~40 ms) for every group a command line passes through.
* a value that is plainly valid (a string, a path, a whole number, one of the choices) is coerced
  here (pacsguard.cli.coerce) instead of through the pydantic TypeAdapter typer builds per option
  (~100 ms for `ids read`); anything else still goes through typer's adapter, so every error
  message is typer's own.

A group lists each command with the whole first paragraph of its help, as the rich renderer did
(the plain one would cut it at the terminal width with "...").

An option's value is named as dcmtk and click name it (``TEXT``, ``PATH``, ``INTEGER``, ``[table|json]``),
not by its Python annotation (``<str>``, ``<list[Path]>``, ``<int range>``); a range stays in the
option's help (``[x>=1]``). An argument is named as click names it: its name in upper case, with an
ellipsis when it takes many values (``FILE``, ``PATHS...``; ``[PATHS]...`` in the usage line when optional).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption
from typer.models import CommandFunctionType

from pacsguard.cli.coerce import plain_runtime_param

#: How help is rendered: plain text (see the module docstring).
HELP_MARKUP = None


class _FastHelp:
    """A command whose unset --help flag defaults to False (a bool typer passes through as it is),
    listed in its group with the first paragraph of its help, uncut."""

    short_help: str | None
    help: str | None

    def get_short_help_str(self, limit: int = 45) -> str:
        first = inspect.cleandoc(self.short_help or self.help or "").split("\n\n")[0]
        return " ".join(first.split())

    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            # typer builds its own parameter classes with no hook for others; Option and Argument add
            # no state, so the object (which typer's callback also holds) only changes how it is
            # shown and how a plain value is coerced.
            if type(param) is TyperOption:
                if param.metavar is None and not param.is_flag:
                    param.metavar = value_name(param.display_type(ctx))
                param.__class__ = Option
            elif type(param) is TyperArgument:
                param.__class__ = Argument
        return params

    def get_help_option(self, ctx: Any) -> TyperOption | None:
        option: TyperOption | None = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None and option.default is None:
            option.default = False
        return option


#: Typer's annotation labels and the conventional names help shows instead.
_VALUE_NAMES = {"str": "TEXT", "path": "PATH", "int": "INTEGER", "float": "NUMBER", "int range": "INTEGER",
                "float range": "NUMBER", "list[Path]": "PATH", "list[str]": "TEXT", "bool": "BOOLEAN"}


def value_name(label: str) -> str:
    """``<list[Path]>`` -> ``PATH``, ``<table|json>`` -> ``[table|json]``: what an option takes."""
    bare = label.strip("<>")
    if bare in _VALUE_NAMES:
        return _VALUE_NAMES[bare]
    return f"[{bare}]" if "|" in bare else bare.upper()


class Option(TyperOption):
    """An option whose plain values are coerced without pydantic (pacsguard.cli.coerce)."""

    get_runtime_param = plain_runtime_param


class Argument(TyperArgument):
    """A positional argument named as click's ``Argument.make_metavar`` names it, not ``name <annotation>``;
    its plain values are coerced without pydantic (pacsguard.cli.coerce)."""

    get_runtime_param = plain_runtime_param

    def shown_name(self, *, in_usage: bool = False) -> str:
        """``FILE``, ``PATHS...``; in the usage line an optional one is bracketed (``[PATHS]...``).
        An explicit metavar is shown as it is written."""
        if self.metavar is not None:
            return self.metavar
        name = (self.name or "").upper()
        if in_usage and not self.required:
            name = f"[{name}]"
        return f"{name}..." if self.nargs != 1 else name

    def _rich_display_name(self) -> str:
        return self.shown_name()

    def display_type_rich(self, ctx: Any) -> str | None:
        # The name already says what the argument is: no Python type label after it.
        return None

    def _usage_display_name(self) -> str:
        return self.shown_name(in_usage=True)


class Command(_FastHelp, TyperCommand):
    """One command (a leaf of the command line)."""


class Group(_FastHelp, TyperGroup):
    """A command group (`pacsguard`, `pacsguard ids`, `pacsguard ids rules`, ...)."""


class App(typer.Typer):
    """``typer.Typer`` whose groups and commands are :class:`Group` and :class:`Command`, with plain help."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", Group)
        kwargs.setdefault("rich_markup_mode", HELP_MARKUP)
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[CommandFunctionType], CommandFunctionType]:
        kwargs.setdefault("cls", Command)
        register = super().command(*args, **kwargs)

        def decorator(func: CommandFunctionType) -> CommandFunctionType:
            return register(_guarded(func))

        return decorator


def _guarded(func: CommandFunctionType) -> CommandFunctionType:
    """Every command as `pacsguard.cli.common.guarded` runs it: a reader that went away is exit 141,
    a full disk under stdout one line and exit 2, never a traceback or click's silent exit 1 (an
    outside tester found `ids rules list | head` and `config check > /dev/full` without it).
    common is imported when the command runs, not when it is registered (start-up time)."""

    @functools.wraps(func)
    def run(*args: Any, **kwargs: Any) -> Any:
        from pacsguard.cli.common import guarded

        return guarded(func)(*args, **kwargs)

    return run  # type: ignore[return-value]
