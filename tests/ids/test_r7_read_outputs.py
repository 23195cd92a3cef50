"""Round 7: `ids read --jsonl F` / `--store S` where F or S cannot be opened said only
`error: [Errno 2] No such file or directory: '...'`; the error now names the option and the file
(docs/ids.md: errors name what was wrong and where), and the exit code stays 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from capture_craft import Flow, eth_frames, pcap_bytes
from typer.testing import CliRunner

from pacsguard.cli import ids as ids_cli


@pytest.fixture()
def capture(tmp_path: Path) -> Path:
    flow = Flow()
    path = tmp_path / "c.pcap"
    path.write_bytes(pcap_bytes(eth_frames(flow.handshake() + flow.fin())))
    return path


@pytest.mark.parametrize(("option", "target", "why"), [
    ("--jsonl", "missing/events.jsonl", "No such file or directory"),
    ("--jsonl", ".", "Is a directory"),
    ("--store", "c.pcap/events.db", "Not a directory"),  # a path through a file
])
def test_an_output_that_cannot_be_opened_is_named(capture: Path, tmp_path: Path, option: str, target: str,
                                                  why: str) -> None:
    where = tmp_path / target
    result = CliRunner().invoke(ids_cli.app, ["read", str(capture), option, str(where)])
    assert result.exit_code == 2
    assert f"{option} {where}: cannot open it" in result.output
    assert why in result.output
    assert "Errno" not in result.output and "Traceback" not in result.output
