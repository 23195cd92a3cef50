"""Moving infected files aside (`pacsguard scan --quarantine DIR`): each file goes into DIR under
its SHA-256 with a JSON manifest (original path, hashes, findings, when), so nothing is lost and a
reviewer can put it back.

Every file moved keeps its own pair, ``SHA256.quarantined`` and ``SHA256.json``: a second file with
the same bytes (the same payload copied into two series) gets ``SHA256-2.*``, and so on; nothing in
DIR is ever replaced. A file reached through a symbolic link is the file moved (the infected bytes
must leave their place); the link is removed, and the manifest names both."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from pacsguard.owner_only import make_private_dir, write_private_file
from pacsguard.scan.model import FileReport
from pacsguard.scan.report import display_path, json_safe

#: Same-content files in one quarantine folder before giving up (SHA256-2 ... SHA256-9999).
MAX_COPIES = 9999


class QuarantineRefused(Exception):
    """The file was not moved, for a reason that is not the file system's (it changed since it
    was scanned)."""


@dataclass(frozen=True, slots=True)
class Moved:
    """A file quarantined: where it is now, its manifest, and what could not be tidied ("": all)."""

    file: Path
    manifest: Path
    note: str = ""


def quarantine(source: Path, report: FileReport, folder: Path) -> Moved:
    """Move ``source`` (the file itself when it is a symbolic link) into ``folder`` with its
    manifest. Both hold a patient's data: a new folder is made 0700 and the manifest 0600
    (pacsguard.owner_only). Raises OSError (the file stays) or QuarantineRefused."""
    make_private_dir(folder)
    real = source.resolve(strict=True)
    data = real.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if report.sha256 and digest != report.sha256:  # a link re-pointed, a file rewritten meanwhile
        raise QuarantineRefused(f"{display_path(str(real))} changed since it was scanned; not moved")
    link = source.absolute() if source.is_symlink() else None
    doc = _manifest(source, real, link, data, digest, report)
    target, manifest = _claim(folder, digest, doc)
    try:
        shutil.move(str(real), target)
    except OSError:
        manifest.unlink(missing_ok=True)  # no manifest for a file that is not there
        raise
    return Moved(target, manifest, _unlink(link) if link is not None else "")


def _manifest(source: Path, real: Path, link: Path | None, data: bytes, digest: str,
              report: FileReport) -> dict[str, Any]:
    """The manifest's fields. Paths are shown as text (bytes that are not UTF-8 as ``\\xNN``); the
    exact bytes of a path that is not UTF-8 are kept in base64, to put the file back."""
    doc: dict[str, Any] = {
        "original": display_path(str(real)), "scanned_as": display_path(report.path), "sha256": digest,
        "md5": hashlib.md5(data, usedforsecurity=False).hexdigest(), "size": len(data),
        "quarantined": datetime.now(timezone.utc).isoformat(), "patient_id": report.patient_id or None,
        "study_uid": report.study_uid or None, "findings": [f.to_dict() for f in report.findings]}
    if display_path(str(real)) != str(real):
        doc["original_base64"] = base64.b64encode(os.fsencode(real)).decode()
    if link is not None:
        doc["link"] = display_path(str(link))  # the symbolic link scanned; removed
        doc["target"] = doc["original"]
    return doc


def _claim(folder: Path, digest: str, doc: dict[str, Any]) -> tuple[Path, Path]:
    """The first free ``SHA256[-N]`` pair in ``folder``, its manifest written. The manifest is
    created exclusively (O_EXCL): two scans quarantining the same bytes at once never share a name."""
    for n in range(1, MAX_COPIES + 1):
        stem = digest if n == 1 else f"{digest}-{n}"
        target, manifest = folder / f"{stem}.quarantined", folder / f"{stem}.json"
        if os.path.lexists(target):
            continue
        data = orjson.dumps(json_safe({**doc, "file": target.name}), option=orjson.OPT_INDENT_2)
        try:
            write_private_file(manifest, data)
        except FileExistsError:
            continue
        return target, manifest
    raise QuarantineRefused(f"{MAX_COPIES} files with SHA-256 {digest} already in {display_path(str(folder))}")


def _unlink(link: Path) -> str:
    """Remove the symbolic link that pointed at the file moved: "" or why it stays."""
    try:
        link.unlink()
    except OSError as exc:
        return f"the link {display_path(str(link))} was not removed: {exc.strerror or exc}"
    return ""
