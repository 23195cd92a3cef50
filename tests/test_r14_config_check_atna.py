"""Outside round 14: `pacsguard config check` said OK for ATNA configurations `serve` refuses (exit
2): a token file that does not exist, the TCP and HTTP listeners on one port of one host, a watch
list that does not exist, a staff directory that is not CSV. Each is now refused by config check
with its key and serve's message; what serve accepts still passes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

#: A PEM certificate's first lines: a file that is not the CSV a staff directory is.
NOT_CSV = "-----BEGIN CERTIFICATE-----\nMIIBuzCCAWGgAwIBAgIUXeT9UTx/ZwIaMISwMYgQ9SKDQVwwCgYIKoZIzj0EAwIw\n"


def _check(tmp_path: Path, atna: str) -> subprocess.CompletedProcess[str]:
    """`config check FILE` on a file of the ``atna:`` lines given (the store left at its defaults)."""
    path = tmp_path / "pacsguard.yaml"
    path.write_text("atna:\n" + "".join(f"  {line}\n" for line in atna.strip().splitlines()))
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", "config", "check", str(path)], cwd=tmp_path,
                          text=True, capture_output=True, timeout=60, env=dict(os.environ))


def _said(done: subprocess.CompletedProcess[str]) -> str:
    return " ".join(done.stderr.split())  # the console wraps long lines


def test_a_token_file_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    done = _check(tmp_path, "enabled: true\nhttp: {port: 47001, token: {file: no-such-token}}")
    assert done.returncode == 2, done.stdout + done.stderr
    # serve: "error: atna.http.token: /…/no-such-token: no such secret file"
    assert f"atna.http.token: {tmp_path / 'no-such-token'}: no such secret file" in _said(done), done.stderr
    assert "atna (atna): 1 problem" in _said(done), done.stderr


def test_a_token_file_that_exists_passes(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("0123456789abcdef0123456789abcdef\n")
    done = _check(tmp_path, "enabled: true\nhttp: {port: 47001, token: {file: token}}")
    assert done.returncode == 0 and "atna (atna): OK" in done.stdout, done.stdout + done.stderr


def test_a_turned_off_section_is_not_read_as_serve_does_not_read_it(tmp_path: Path) -> None:
    done = _check(tmp_path, "enabled: false\nhttp: {port: 47001, token: {file: no-such-token}}\n"
                            "privacy: {watch_list: no-such-list.txt}")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("listeners", "why"), [
    ("tcp: {port: 47000}\nhttp: {port: 47000, token: {file: token}}", "the same host"),
    ("tcp: {host: 0.0.0.0, port: 47000}\nhttp: {port: 47000, token: {file: token}}",
     "a wildcard address (0.0.0.0, ::) takes its port on every interface"),
])
def test_two_listeners_on_one_port_of_one_address_are_refused(tmp_path: Path, listeners: str, why: str) -> None:
    (tmp_path / "token").write_text("0123456789abcdef0123456789abcdef\n")
    done = _check(tmp_path, "enabled: true\n" + listeners)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "atna: atna.tcp and atna.http both listen on port 47000:" in _said(done), done.stderr
    assert f"({why}); `serve` could not bind the second" in _said(done), done.stderr


@pytest.mark.parametrize("listeners", [
    "tcp: {port: 47000}\nudp: {port: 47000}",  # UDP and TCP each have their own port 47000
    "tcp: {host: 127.0.0.1, port: 47000}\nhttp: {host: 127.0.0.2, port: 47000, token: {file: token}}",
    "tcp: {port: 0}\nhttp: {port: 0, token: {file: token}}",  # any free port, each its own
])
def test_listeners_apart_pass(tmp_path: Path, listeners: str) -> None:
    (tmp_path / "token").write_text("0123456789abcdef0123456789abcdef\n")
    done = _check(tmp_path, "enabled: true\n" + listeners)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_watch_list_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    done = _check(tmp_path, "enabled: true\nprivacy: {watch_list: no-such-list.txt}")
    assert done.returncode == 2, done.stdout + done.stderr
    # serve: "error: /…/no-such-list.txt: atna.privacy.watch_list: cannot be read (No such file or directory)"
    assert (f"atna.privacy.watch_list: {tmp_path / 'no-such-list.txt'}: cannot be read (No such file or directory)"
            in _said(done)), done.stderr


def test_a_staff_directory_that_is_not_csv_is_refused(tmp_path: Path) -> None:
    (tmp_path / "staff.pem").write_text(NOT_CSV)
    done = _check(tmp_path, "enabled: true\nprivacy: {staff_directory: staff.pem}")
    assert done.returncode == 2, done.stdout + done.stderr
    assert (f"atna.privacy.staff_directory: {tmp_path / 'staff.pem'}: line 1: a header row naming the column user"
            in _said(done)), done.stderr


def test_privacy_lists_that_read_pass(tmp_path: Path) -> None:
    (tmp_path / "watch.txt").write_text("PID-0042\n")
    (tmp_path / "staff.csv").write_text("user,surname,address,department\njsmith,Smith,1 Main St,Radiology\n")
    done = _check(tmp_path, "enabled: true\nprivacy: {watch_list: watch.txt, staff_directory: staff.csv}")
    assert done.returncode == 0 and "atna (atna): OK" in done.stdout, done.stdout + done.stderr
