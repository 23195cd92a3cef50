"""The scanner as a part: the `scan:` section (ScanSettings), `pacsguard scan PATH...`, and the
``scan`` object check store-and-forward routes name (pacsguard.scan.object_check)."""

from __future__ import annotations

from pacsguard.runtime.part import Dependency, Part

PART = Part("scan", "PACS-specific malware scanner for DICOM files, folders, media and archives.", section="scan",
            config="pacsguard.scan.config:ScanSettings", commands="pacsguard.cli.scan:scan_command",
            requires=(Dependency("yara", "pip install 'pacsguard[scan]'"),),
            kinds="pacsguard.scan.kinds:KINDS",
            object_checks=(("scan", "pacsguard.scan.object_check:make_check"),))
