"""DICOM-aware intrusion detection and prevention: one rule engine, inline and passive.

* :mod:`.observation` - :class:`Flow` and the observation kinds and fields rules match on;
* :mod:`.rules` - the rule model and YAML loading (:func:`load_rules`); :mod:`.settings` the
  ``ids:`` section (:class:`IdsSettings`), :mod:`.defaults` its defaults as plain data;
* :mod:`.engine` - the protocol-neutral :class:`Engine`, returning :class:`Alert` s;
* :mod:`.dicom` - the DICOM adapter (:class:`~pacsguard.ids.dicom.DicomAdapter`) that feeds it;
* :mod:`.sniff` - what non-protocol bytes look like (:func:`guess_protocol`);
* :mod:`.state` - the bounded per-key windows behind thresholds;
* ``rules/*.yaml`` - the built-in rule set; :mod:`.capture` - the passive sensor's packet layer.

Names are imported on first use (PEP 562): ``import pacsguard.ids`` alone loads nothing else.
The rule language and the built-in rules are documented in docs/ids.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacsguard._lazy import lazy_exports

if TYPE_CHECKING:
    from pacsguard.dicom.reasons import rj_reason

    from .dicom.adapter import DicomAdapter
    from .engine import Alert, Engine
    from .observation import Flow, Observation
    from .protocols import KINDS
    from .rules import Rule, RuleError, RuleProblem, load_rules, parse_duration
    from .settings import ActionOverride, IdsSettings, ThresholdOverride
    from .sniff import guess_protocol

__all__ = [
    "KINDS",
    "ActionOverride",
    "Alert",
    "DicomAdapter",
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

#: public name -> the module that defines it
_HOMES = {
    "KINDS": "pacsguard.ids.protocols",
    "ActionOverride": "pacsguard.ids.settings",
    "Alert": "pacsguard.ids.engine",
    "DicomAdapter": "pacsguard.ids.dicom.adapter",
    "Engine": "pacsguard.ids.engine",
    "Flow": "pacsguard.ids.observation",
    "IdsSettings": "pacsguard.ids.settings",
    "Observation": "pacsguard.ids.observation",
    "Rule": "pacsguard.ids.rules",
    "RuleError": "pacsguard.ids.rules",
    "RuleProblem": "pacsguard.ids.rules",
    "ThresholdOverride": "pacsguard.ids.settings",
    "guess_protocol": "pacsguard.ids.sniff",
    "load_rules": "pacsguard.ids.rules",
    "parse_duration": "pacsguard.ids.rules",
    "rj_reason": "pacsguard.dicom.reasons",
}


__getattr__ = lazy_exports(__name__, _HOMES)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
