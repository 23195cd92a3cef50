"""DICOM-aware intrusion detection and prevention: one rule engine, inline and passive.

* :mod:`.observation` - :class:`Flow` and the observation kinds and fields rules match on;
* :mod:`.rules` - the rule model, :class:`IdsSettings`, YAML loading (:func:`load_rules`);
* :mod:`.engine` - :class:`Engine`, fed by a sensor, returning :class:`Alert` s;
* :mod:`.state` - the bounded per-key windows behind thresholds;
* ``rules/*.yaml`` - the built-in rule set; :mod:`.capture` - the passive sensor's packet layer.

The rule language and the built-in rules are documented in docs/ids.md.
"""

from .engine import Alert, Engine, guess_protocol, rj_reason
from .observation import KINDS, Flow, Observation
from .rules import (
    ActionOverride,
    IdsSettings,
    Rule,
    RuleError,
    RuleProblem,
    ThresholdOverride,
    load_rules,
    parse_duration,
)

__all__ = [
    "KINDS",
    "ActionOverride",
    "Alert",
    "Engine",
    "Flow",
    "IdsSettings",
    "Observation",
    "Rule",
    "RuleError",
    "RuleProblem",
    "ThresholdOverride",
    "guess_protocol",
    "load_rules",
    "parse_duration",
    "rj_reason",
]
