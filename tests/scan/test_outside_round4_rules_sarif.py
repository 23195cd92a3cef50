"""Round 4 of the outside tester's findings in the SARIF report: archive members' URIs that resolved
outside their archive (RFC 3986 5.2.4 dot segments), and files not scanned left out of the log
(SARIF 2.1.0 3.20.21 toolExecutionNotifications). Each test failed before its fix."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import unquote, urljoin

import pytest
from scan_samples import ct, pe_in_preamble, quiet, zip_bytes
from typer.testing import CliRunner

from pacsguard.cli import main
from pacsguard.scan.report import path_uri


def sarif(*args: str | Path, cwd: Path) -> tuple[int, dict]:
    """Exit code and SARIF log of `pacsguard scan --format sarif ARGS`, run in ``cwd``."""
    here = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(main.app, ["scan", "--format", "sarif", *map(str, args)])
    finally:
        os.chdir(here)
    return result.exit_code, json.loads(result.stdout)


def test_member_uris_never_resolve_outside_their_archive(tmp_path: Path) -> None:
    payload = pe_in_preamble()
    (tmp_path / "hostile.zip").write_bytes(zip_bytes({"../../../../../../etc/passwd": payload,
                                                      "IM1/../../IM2.dcm": payload, "S1/IM1": payload}))
    code, log = sarif("hostile.zip", cwd=tmp_path)
    assert code == 1
    run = log["runs"][0]
    base = run["originalUriBaseIds"]["SCANROOT"]["uri"]
    archive = urljoin(base, "hostile.zip")
    members = set()
    for result in run["results"]:
        location = result["locations"][0]["physicalLocation"]["artifactLocation"]
        resolved = urljoin(base, location["uri"])
        assert resolved.startswith(archive), resolved
        if resolved != archive:
            members.add(unquote(resolved[len(archive) + 1:]))
    # the member's name is still there, decoded, for a reader of the log
    assert members == {"../../../../../../etc/passwd", "IM1/../../IM2.dcm", "S1/IM1"}


def test_path_uri_of_files_and_members(tmp_path: Path) -> None:
    bang = tmp_path / "a!b"
    bang.mkdir()
    (bang / "x.dcm").write_bytes(b"")
    # A "!" in a real path is no member: its "/" stay.
    assert path_uri(str(bang / "x.dcm")) == f"file://{tmp_path}/a!b/x.dcm"
    # A member (the archive on disk, or gone since: quarantined) is one segment with its archive.
    (bang / "m.zip").write_bytes(b"")
    assert path_uri(f"{bang}/m.zip!../../etc/passwd") == f"file://{tmp_path}/a!b/m.zip!..%2F..%2Fetc%2Fpasswd"
    assert path_uri("gone.zip!inner.zip!../x") == "gone.zip!inner.zip!..%2Fx"


@pytest.mark.parametrize("kind", ["fifo", "empty"])
def test_files_not_scanned_are_tool_execution_notifications(kind: str, tmp_path: Path) -> None:
    media = tmp_path / "usb"
    media.mkdir()
    (media / "IM_OK").write_bytes(quiet(ct))
    if kind == "fifo":
        os.mkfifo(media / "IM_SKIP")
    else:
        (media / "IM_SKIP").write_bytes(b"")
    _, log = sarif("usb", cwd=tmp_path)
    run = log["runs"][0]
    notes = run["invocations"][0]["toolExecutionNotifications"]
    assert run["invocations"][0]["executionSuccessful"] is True
    assert len(notes) == 1
    note = notes[0]
    assert note["descriptor"]["id"] == "scan.skipped"
    assert note["level"] == ("warning" if kind == "fifo" else "note")
    assert note["locations"][0]["physicalLocation"]["artifactLocation"] == {"uri": "usb/IM_SKIP",
                                                                            "uriBaseId": "SCANROOT"}
    assert ("FIFO" if kind == "fifo" else "empty") in note["message"]["text"]


def test_a_file_over_the_size_limit_is_a_warning(tmp_path: Path) -> None:
    big = tmp_path / "IM_HUGE"
    with open(big, "wb") as f:
        f.truncate(3 * 1024**3)  # sparse: no disk used
    _, log = sarif(big, cwd=tmp_path)
    notes = log["runs"][0]["invocations"][0]["toolExecutionNotifications"]
    assert [(n["level"], n["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]) for n in notes] == [
        ("warning", f"file://{big}")]
    assert "larger than the limit" in notes[0]["message"]["text"]
