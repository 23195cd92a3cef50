"""pacsguard.yaml: schema, loading and the error that names every wrong key."""

from pacsguard.config.loader import ConfigError, ConfigProblem, LoadedConfig, load_config, parse_config
from pacsguard.config.schema import PacsguardConfig

__all__ = ["ConfigError", "ConfigProblem", "LoadedConfig", "PacsguardConfig", "load_config", "parse_config"]
