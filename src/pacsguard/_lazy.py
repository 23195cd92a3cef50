"""Lazy re-exports for package ``__init__`` files (PEP 562 module ``__getattr__``): a package names
what it offers without importing the heavy modules behind it until a name is first used."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any


def lazy_exports(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``homes[name]`` on first use of ``name``: a module path,
    absolute or relative to ``package`` (".adapter")."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(home, package), name)

    return __getattr__
