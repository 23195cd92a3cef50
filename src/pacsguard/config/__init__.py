"""pacsguard.yaml: schema, loading and the error that names every wrong key.

Names are re-exported lazily (PEP 562) so that importing the package does not load pydantic."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacsguard._lazy import lazy_exports

if TYPE_CHECKING:
    from pacsguard.config.loader import (
        ConfigError,
        ConfigProblem,
        LoadedConfig,
        load_config,
        parse_config,
        problem_from_pydantic,
    )
    from pacsguard.config.schema import PacsguardConfig

__all__ = ["ConfigError", "ConfigProblem", "LoadedConfig", "PacsguardConfig", "load_config", "parse_config",
           "problem_from_pydantic"]

__getattr__ = lazy_exports(__name__, {"PacsguardConfig": "pacsguard.config.schema", **dict.fromkeys(
    ("ConfigError", "ConfigProblem", "LoadedConfig", "load_config", "parse_config", "problem_from_pydantic"),
    "pacsguard.config.loader")})
