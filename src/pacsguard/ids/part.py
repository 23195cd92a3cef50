"""The IDS as a part: the `ids:` section (IdsSettings) and `pacsguard ids ...`; its rules run inline in
the gateway's service and passively in `ids read|live`. The rule engine is built by
pacsguard.ids.passive.build_engine, from the settings as `settings_for()` makes them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pacsguard.runtime.part import Dependency, Part

if TYPE_CHECKING:
    from pacsguard.config import LoadedConfig
    from pacsguard.ids import Engine, IdsSettings
    from pacsguard.ids.sensor import CaptureClock

PART = Part("ids", "Intrusion detection: rules, inline in the gateway and passive over captures.", section="ids",
            config="pacsguard.ids:IdsSettings", commands="pacsguard.cli.ids:app",
            kinds="pacsguard.ids.kinds:KINDS",
            requires=(Dependency("dpkt", "pip install dpkt"),))


def settings_for(settings: IdsSettings, base: Path) -> IdsSettings:
    """The settings with relative rules_dirs taken from ``base`` (the folder of the file that named them)."""
    dirs = [d if d.is_absolute() else base / d for d in settings.rules_dirs]
    return settings.model_copy(update={"rules_dirs": dirs})


def rule_engine(loaded: LoadedConfig, rules_dirs: list[Path] | None = None, *,
                clock: CaptureClock | None = None) -> Engine:
    """The engine of the configuration's `ids:` section plus ``rules_dirs``; raises RuleError for a bad rule."""
    from pacsguard.ids.passive import build_engine

    base = loaded.path.parent if loaded.path else Path.cwd()
    return build_engine(rules_dirs or [], settings_for(loaded.section("ids"), base), clock=clock)
