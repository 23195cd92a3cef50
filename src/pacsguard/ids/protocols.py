"""The protocol adapters whose observation kinds rules may name.

Importing this module registers every listed adapter's kinds in
:data:`pacsguard.ids.observation.KINDS`; the rule loader imports it before validating a rule.
A new adapter (HL7, audit) adds its kinds module here and a package under ``ids/``; the engine
does not change.
"""

from __future__ import annotations

from importlib import import_module
from typing import Final

from .observation import KINDS

__all__ = ["ADAPTER_KINDS", "KINDS"]

#: Modules that register an adapter's kinds when imported.
ADAPTER_KINDS: Final = ("pacsguard.ids.dicom.kinds", "pacsguard.ids.audit.kinds")

for _module in ADAPTER_KINDS:
    import_module(_module)
