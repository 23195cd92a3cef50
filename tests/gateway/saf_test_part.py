"""A part the store-and-forward tests register (the scanner and de-identification are other
parts): it offers the object check ``patient-gate``, which judges an object by its Patient ID."""

from __future__ import annotations

from typing import Any

from pydicom import dcmread

from pacsguard.gateway.objects import ObjectAction, ObjectVerdict, ReceivedObject
from pacsguard.runtime.part import Part

QUARANTINE_STATUS = 0xC321  # a "cannot understand" status of the check's own choosing (PS3.4 B.2.3)


class PatientGate:
    """EVIL: quarantined; REFUSE: refused; RENAME: forwarded as a replacement whose Patient Name
    says so; anyone else: forwarded unchanged."""

    name = "patient-gate"

    def inspect(self, obj: ReceivedObject) -> ObjectVerdict:
        ds = dcmread(obj.path)
        patient = str(ds.get("PatientID", ""))
        if patient == "EVIL":
            return ObjectVerdict(ObjectAction.QUARANTINE, self.name, "test.evil", "patient EVIL is not welcome",
                                 status=QUARANTINE_STATUS)
        if patient == "REFUSE":
            return ObjectVerdict(ObjectAction.REFUSE, self.name, "test.refuse", "patient REFUSE is refused")
        if patient == "RENAME":
            ds.PatientName = "RENAMED^BY^CHECK"
            replacement = obj.path.with_name(obj.path.name + ".renamed")
            ds.save_as(replacement, enforce_file_format=True)
            return ObjectVerdict(replacement=replacement)
        return ObjectVerdict()


def make_check(ctx: Any) -> PatientGate:
    return PatientGate()


PART = Part("saf-test", "Object checks for the store-and-forward tests.",
            object_checks=(("patient-gate", "saf_test_part:make_check"),))
