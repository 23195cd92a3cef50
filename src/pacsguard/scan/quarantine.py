"""Moving infected files aside (`pacsguard scan --quarantine DIR`): each file goes into DIR under
its SHA-256 with a JSON manifest (original path, hashes, findings, when), so nothing is lost and a
reviewer can put it back."""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

import orjson

from pacsguard.owner_only import make_private_dir, write_private_file
from pacsguard.scan.model import FileReport


def quarantine(source: Path, report: FileReport, folder: Path) -> tuple[Path, Path]:
    """Move ``source`` into ``folder``; returns the quarantined file and its manifest. Both hold a
    patient's data: a new folder is made 0700 and the manifest 0600 (pacsguard.owner_only)."""
    make_private_dir(folder)
    digest = report.sha256 or hashlib.sha256(source.read_bytes()).hexdigest()
    target = folder / f"{digest}.quarantined"
    manifest = folder / f"{digest}.json"
    md5 = hashlib.md5(source.read_bytes(), usedforsecurity=False).hexdigest()
    doc = {"original": str(source.resolve()), "sha256": digest, "md5": md5, "size": report.size,
           "quarantined": datetime.now(timezone.utc).isoformat(), "patient_id": report.patient_id or None,
           "study_uid": report.study_uid or None, "findings": [f.to_dict() for f in report.findings]}
    tmp = manifest.with_suffix(".json.tmp")
    tmp.unlink(missing_ok=True)  # left by an interrupted run
    write_private_file(tmp, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    os.replace(tmp, manifest)
    shutil.move(str(source), target)
    return target, manifest
