"""The deid part: PS3.15 Annex E de-identification for files (`pacsguard deid`) and for
store-and-forward routes (the ``deidentify`` object check)."""

from __future__ import annotations

from pacsguard.runtime.part import Dependency, Part

PART = Part(
    "deid",
    "De-identify DICOM files (PS3.15 Annex E) with keyed pseudonyms.",
    section="deid",
    config="pacsguard.deid.config:DeidConfig",
    commands="pacsguard.cli.deid:app",
    requires=(Dependency("pydicom", "pip install pydicom"),),
    kinds="pacsguard.deid.kinds:KINDS",
    object_checks=(("deidentify", "pacsguard.deid.object_check:make_check"),),
)
