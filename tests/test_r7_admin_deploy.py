"""Outside round 7, docs/deployment.md followed literally by a PACS administrator: the install
steps make the folders `pacsguard init` writes into before the unit ever ran (systemd makes
them only at the first start), and the quarterly restore test verifies the backup copy with
the command the page gives."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from terminal import PACSGUARD

ROOT = Path(__file__).resolve().parents[1]
DEPLOYMENT = ROOT / "docs" / "deployment.md"
UNIT = ROOT / "deploy" / "pacsguard.service"


def section(title: str) -> str:
    text = DEPLOYMENT.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def commands(title: str) -> list[str]:
    """The lines of the ```sh blocks of a section of docs/deployment.md, in order."""
    blocks = re.findall(r"```sh\n(.*?)```", section(title), re.S)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


def unit_directive(name: str) -> str:
    found = re.search(rf"^{name}=(.*)$", UNIT.read_text(), re.M)
    assert found, name
    return found.group(1).strip()


def test_the_install_steps_make_the_service_folders_before_init_runs_as_the_service_user() -> None:
    """`useradd --system` makes no home, and StateDirectory=/LogsDirectory= exist only once the unit
    started: `sudo -u pacsguard pacsguard init` failed with "Permission denied: '/var/lib/pacsguard'"."""
    lines = commands("Install")
    init = next(n for n, line in enumerate(lines) if " init " in f"{line} " and "-u pacsguard" in line)
    modes = {"/var/lib/pacsguard": unit_directive("StateDirectoryMode"),
             "/var/log/pacsguard": unit_directive("LogsDirectoryMode")}
    assert set(unit_directive("ReadWritePaths").split()) == set(modes)
    for folder, mode in modes.items():
        made = [n for n, line in enumerate(lines) if line.startswith("install -d") and line.endswith(f" {folder}")]
        assert made and made[0] < init, f"{folder} is not made before `pacsguard init`"
        words = shlex.split(lines[made[0]])
        assert words[words.index("-m") + 1] == mode  # as systemd would make it
        assert words[words.index("-o") + 1] == unit_directive("User")
        assert words[words.index("-g") + 1] == unit_directive("Group")


def test_the_restore_check_of_the_backups_section_verifies_a_copy(tmp_path: Path) -> None:
    """"Restore the copy to another host and run `pacsguard audit verify` on it" exited 2: a copy
    holds no key, and the command needs the public half the section says to keep with it."""
    sqlite3 = shutil.which("sqlite3")
    if sqlite3 is None:
        pytest.fail("sqlite3 is missing: run `apt-get install -y sqlite3` (Makefile PEERS)")
    home = tmp_path / "gateway"
    home.mkdir()
    done = subprocess.run([*PACSGUARD, "init"], cwd=home, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    backup = tmp_path / "backup"
    backup.mkdir()
    verify = [line for line in commands("Backups") if line.startswith("pacsguard audit verify")]
    assert len(verify) == 1, commands("Backups")
    words = shlex.split(verify[0])
    copy = Path(words[words.index("--store") + 1])
    public = Path(words[words.index("--key") + 1])
    # The page's backup command (SQLite's online backup), then the public half beside the copy.
    done = subprocess.run([sqlite3, str(home / "var" / "pacsguard.db"), f".backup '{backup / copy.name}'"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    shutil.copy(home / "var" / "keys" / f"{public.name}", backup / public.name)
    restored = tmp_path / "other-host"
    restored.mkdir()
    args = [str(backup / copy.name) if w == str(copy) else str(backup / public.name) if w == str(public) else w
            for w in words[1:]]
    done = subprocess.run([*PACSGUARD, *args], cwd=restored, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: every event" in done.stdout
