"""Text that came from files, archives, the network or a saved report, shown by the CLI: it can
neither drive the administrator's terminal (escape sequences, a forged line, reversed text) nor
break the command (a stray rich markup tag was a traceback)."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from pacsguard.cli.jsonlog import TEXT_FORMAT, TextLineFormatter
from pacsguard.cli.layout import printable
from pacsguard.events import Event, Party
from pacsguard.store import EventStore
from terminal import PACSGUARD, in_terminal

#: Clears the screen, sets the window title, writes the clipboard (OSC 52), rings, starts a forged
#: line, reverses what follows, and closes a rich markup tag that was never opened.
HOSTILE = "A\x1b[2J\x1b]0;owned\x07\x1b]52;c;aGk=\x07\x9b31m\nFAKE LINE\u202eZ[/b]"
SHOWN = r"A\x1b[2J\x1b]0;owned\x07\x1b]52;c;aGk=\x07\x9b31m\nFAKE LINE\u202eZ[/b]"


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``pacsguard ARGS`` into a pipe, wide enough that no table folds a value."""
    return subprocess.run([*PACSGUARD, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "1000"})


def assert_inert(out: str, *, terminal: bool = False) -> None:
    """No traceback, and none of HOSTILE's sequences raw (on a terminal, rich's own styles are)."""
    assert "Traceback" not in out and "MarkupError" not in out, out
    raw = ("\x1b[2J", "\x1b]", "\x07", "\x9b", "\u202e", "\nFAKE") if terminal else ("\x1b", "\x07", "\x9b", "\u202e")
    assert not any(r in out for r in raw), repr(out)


def test_printable_makes_every_control_and_reordering_character_visible() -> None:
    assert printable(HOSTILE) == SHOWN
    assert printable("Müller^Jürgen 山田 [ok]") == "Müller^Jürgen 山田 [ok]"  # text is left alone
    assert printable("\x00\x7f\x85\u200f\u2066") == r"\x00\x7f\x85\u200f\u2066"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    subprocess.run([*PACSGUARD, "init"], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    return tmp_path


def test_a_hostile_file_name_is_shown_as_text_by_scan(tmp_path: Path) -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()  # type: ignore[arg-type]
    media = tmp_path / "usb"
    media.mkdir()
    name = HOSTILE.replace("/", "-")  # a file name has no slash
    (media / f"{name}.dcm").write_bytes(b"MZ" + data[2:])  # an executable's header in the preamble
    proc = run("scan", str(media), cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr  # the finding is still reported, and fails the scan
    assert_inert(proc.stdout + proc.stderr)
    assert "preamble.pe" in proc.stdout
    assert r"\x1b]0;owned\x07" in proc.stdout
    out = in_terminal("scan", str(media), cwd=tmp_path, env={"TERM": "xterm-256color"})
    assert_inert(out, terminal=True)


def test_a_quarantine_named_by_hostile_text_can_be_listed(home: Path) -> None:
    added = run("gateway", "quarantine", "add", "MOD[/b]", "--reason", HOSTILE, cwd=home)
    assert added.returncode == 0, added.stderr
    assert_inert(added.stdout + added.stderr)
    listed = run("gateway", "quarantine", "list", cwd=home)
    assert listed.returncode == 0, listed.stderr
    assert_inert(listed.stdout + listed.stderr)
    assert "MOD[/b]" in listed.stdout and "FAKE" in listed.stdout


def test_events_from_the_network_are_shown_as_text(home: Path) -> None:
    es = EventStore.open(str(home / "var/pacsguard.db"), key_path=home / "var/keys/store-signing.key")
    es.append([Event(kind="atna.message.received", component="atna", actor=Party("X", "10.0.0.9", 514),
                     patient_ids=("P1",), message=f"from a sender: {HOSTILE}")])
    es.close()
    piped = run("events", "search", "--patient", "P1", cwd=home).stdout
    on_terminal = in_terminal("events", "search", "--patient", "P1", cwd=home, env={"TERM": "xterm-256color"})
    assert_inert(piped)
    assert_inert(on_terminal, terminal=True)
    for out in (piped, on_terminal):
        assert "FAKE" in out and "x1b]52;c;aGk" in out


@pytest.mark.parametrize(("args", "code"), [(("gateway", "spool", "show", "[/x]"), 1),
                                            (("scan", "/nonexistent/[/x]\x1b[2J"), 2)])
def test_an_argument_quoted_in_an_error_is_text(home: Path, args: tuple[str, ...], code: int) -> None:
    proc = run(*args, cwd=home)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert_inert(proc.stdout + proc.stderr)
    assert "[/x]" in proc.stdout + proc.stderr


def test_a_configuration_value_quoted_in_an_error_is_text(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text('gateway:\n  routes:\n  - name: "[/x]\\e[2J"\n    listen: {port: 99999}\n')
    for command in (("config", "check", str(bad)), ("serve", "-c", str(bad))):
        proc = run(*command, cwd=tmp_path)
        assert proc.returncode == 2, (proc.stdout, proc.stderr)
        assert_inert(proc.stdout + proc.stderr)
        assert "99999" in proc.stderr


def test_a_text_log_record_stays_one_line() -> None:
    formatter = TextLineFormatter(TEXT_FORMAT)
    record = logging.LogRecord("pacsguard.gateway", logging.WARNING, __file__, 1, "peer sent %s", (HOSTILE,), None)
    line = formatter.format(record)
    assert "\n" not in line and SHOWN in line


def test_a_bug_is_one_line_and_exit_70_and_its_traceback_is_there_when_asked(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from pacsguard.cli.common import EXIT_INTERNAL, guarded

    @guarded
    def broken() -> None:
        raise ZeroDivisionError(f"divided by {HOSTILE}")

    @guarded
    def ends() -> None:
        raise typer.Exit(3)

    monkeypatch.delenv("PACSGUARD_DEBUG", raising=False)
    with pytest.raises(typer.Exit) as info:
        broken()
    assert info.value.exit_code == EXIT_INTERNAL == 70
    err = capsys.readouterr().err
    assert "internal error: ZeroDivisionError: divided by" in err and "PACSGUARD_DEBUG=1" in err
    assert_inert(err)
    with pytest.raises(typer.Exit) as info:
        ends()  # a command's own exit passes through
    assert info.value.exit_code == 3
    monkeypatch.setenv("PACSGUARD_DEBUG", "1")
    with pytest.raises(ZeroDivisionError):
        broken()
