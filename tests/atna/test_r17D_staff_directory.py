"""Outside round 17, area D: the privacy officer's lists as a spreadsheet leaves them. A quote opened
and never closed in the staff directory read the rest of the file into one value: every user after
it was left out without a word (their same_surname and same_address rules, their department's
explanations gone). A list saved as UTF-16 ("Unicode text") without a byte order mark was read as
UTF-8 (its NUL bytes are valid): the watch list watched IDs such as "P\\x00I\\x00D", i.e. nobody, and
the staff directory's error named its header back as 'u\\x00s\\x00e\\x00r\\x00'. Checked as `config
check` and `serve` read them (a real process)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pacsguard.ids.audit.adapter import PrivacyLists


def _check(tmp_path: Path, privacy: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "pacsguard.yaml"
    path.write_text(f"atna:\n  enabled: true\n  privacy: {privacy}\n")
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", "config", "check", str(path)], cwd=tmp_path,
                          text=True, capture_output=True, timeout=60, env=dict(os.environ))


def test_a_quote_that_never_closes_is_refused_not_the_rest_of_the_directory_left_out(tmp_path: Path) -> None:
    (tmp_path / "staff.csv").write_bytes(b'user,surname,address\njsmith,"Smith,Main St\nkim,Kim,Elm St\n'
                                         b"lee,Lee,Oak St\n")
    done = _check(tmp_path, "{staff_directory: staff.csv}")
    assert done.returncode == 2, done.stdout + done.stderr
    said = " ".join(done.stderr.split())
    assert f"{tmp_path / 'staff.csv'}: line 2: unexpected end of data (a quoted value on this line never " \
           "closes" in said, done.stderr
    assert "Traceback" not in done.stderr


def test_a_quoted_value_over_two_lines_still_reads(tmp_path: Path) -> None:
    """A quoted address that holds a line break (RFC 4180 section 2.6) is one value, as before."""
    (tmp_path / "staff.csv").write_bytes(b'user,surname,address\njsmith,Smith,"1 Main St\nBerlin"\nkim,Kim,Elm\n')
    lists = PrivacyLists.load(None, tmp_path / "staff.csv")
    assert {u: m.address for u, m in lists.staff.items()} == {"jsmith": "1 MAIN ST BERLIN", "kim": "ELM"}
    assert _check(tmp_path, "{staff_directory: staff.csv}").returncode == 0


def test_a_watch_list_in_utf16_without_a_mark_is_refused_not_watching_nobody(tmp_path: Path) -> None:
    (tmp_path / "watch.txt").write_bytes("PID-0042\r\nPID-0043\r\n".encode("utf-16-le"))
    done = _check(tmp_path, "{watch_list: watch.txt}")
    assert done.returncode == 2, done.stdout + done.stderr
    said = " ".join(done.stderr.split())
    assert "line 1: UTF-16 or UTF-32 text without a byte order mark; save it as UTF-8" in said, done.stderr


def test_a_staff_directory_in_utf16_is_named_so(tmp_path: Path) -> None:
    (tmp_path / "staff.csv").write_bytes("user\tsurname\r\njsmith\tSmith\r\n".encode("utf-16"))
    done = _check(tmp_path, "{staff_directory: staff.csv}")
    assert done.returncode == 2, done.stdout + done.stderr
    said = " ".join(done.stderr.split())
    assert "UTF-16 text (byte order mark FF FE), not UTF-8 (iconv -f UTF-16 -t UTF-8); save it as UTF-8" in said, \
        done.stderr
    assert "\\x00" not in done.stderr
