"""Command groups loaded on use: the root command knows every part's name and one-line help from the
registry, and imports a part's typer app only when that part is invoked or its --help is asked."""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperCommand

from pacsguard.cli.app import App, Group
from pacsguard.runtime.part import MissingDependency, Part, load_ref
from pacsguard.runtime.registry import Registry

EXIT_USAGE = 2


def load_command(part: Part) -> Any:
    """The click command of a part: its typer app as a group, or its one command function."""
    part.check_dependencies()
    if part.commands is None:
        raise LookupError(f"part {part.name} has no commands")
    target = load_ref(part.commands)
    if isinstance(target, typer.Typer):
        return typer.main.get_group(target)
    single = App(add_completion=False)
    single.command(part.name)(target)
    return typer.main.get_command(single)


class DeferredCommand(TyperCommand):
    """Stands in for a part's commands in the root's listing; parsing its arguments loads the real ones."""

    def __init__(self, part: Part) -> None:
        super().__init__(name=part.name, help=part.help, short_help=part.help, add_help_option=False)
        self.part = part

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            real = load_command(self.part)
        except MissingDependency as exc:
            # The part stays listed, and asking for it says what to install (no traceback, exit 2).
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USAGE) from None
        return real.make_context(info_name, args, parent=parent, **extra)


class PartsGroup(Group):
    """The root command: its own commands (none but the --version callback) plus every registered part."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.registry: Registry | None = None

    def use(self, registry: Registry) -> PartsGroup:
        self.registry = registry
        return self

    def _parts(self) -> dict[str, Part]:
        if self.registry is None:
            self.registry = Registry.default()
        return {p.name: p for p in self.registry if p.commands is not None}

    def list_commands(self, ctx: Any) -> list[str]:
        return [*super().list_commands(ctx), *(n for n in self._parts() if n not in self.commands)]

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        found = super().get_command(ctx, cmd_name)
        if found is not None:
            return found
        part = self._parts().get(cmd_name)
        return DeferredCommand(part) if part is not None else None

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """As typer's, whose "Did you mean" looks only among the commands registered up front: the
        parts are deferred, so a typo of one (`pacsguard serv`) is matched against every command
        listed, as the groups below the root already do (`pacsguard audit verfy`)."""
        try:
            return super().resolve_command(ctx, args)
        except Exception as exc:  # click's UsageError, re-raised with the suggestion added
            message = getattr(exc, "message", None)
            if isinstance(message, str) and args and "Did you mean" not in message:
                from difflib import get_close_matches

                matches = get_close_matches(args[0], self.list_commands(ctx))
                if matches:
                    suggestion = ", ".join(repr(m) for m in matches)
                    exc.message = f"{message.rstrip('.')}. Did you mean {suggestion}?"  # type: ignore[attr-defined]
            raise
