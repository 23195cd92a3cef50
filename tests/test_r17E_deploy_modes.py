"""Outside round 17 (E): docs/deployment.md and deploy/ followed by the hospital's Linux administrator,
checked for least privilege. The page's backup command, run as root (whose umask is 0022), left a
copy of the store, patient IDs and names included, readable by every user of the host."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from terminal import PACSGUARD
from test_r7_admin_deploy import section


def _backup_commands() -> list[str]:
    """The shell lines of "Backups" that take the store's copy: its ```sh blocks, and any command
    given inline in the prose (`sqlite3 ...`), with the folder made for it."""
    text = section("Backups")
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    lines = [line.strip() for block in blocks for line in block.splitlines() if line.strip()]
    inline = [code for code in re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
              if code.startswith("sqlite3 ")]
    taken = [line for line in lines + inline if "sqlite3 " in line or line.startswith("install -d")]
    assert any("sqlite3 " in line for line in taken), text
    return taken


def test_the_documented_backup_of_the_store_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    sqlite3 = shutil.which("sqlite3")
    if sqlite3 is None:
        pytest.fail("sqlite3 is missing: run `apt-get install -y sqlite3` (Makefile PEERS)")
    home = tmp_path / "gateway"
    home.mkdir()
    done = subprocess.run([*PACSGUARD, "init"], cwd=home, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    state = home / "var"
    backup = tmp_path / "backup"  # the site's /backup: there already, root's, 0755
    backup.mkdir()
    backup.chmod(0o755)
    script = "\n".join(line.replace("/var/lib/pacsguard/", f"{state}/").replace("/backup/", f"{backup}/")
                       for line in _backup_commands())
    # As root from a login shell: umask 0022, which is what makes the copy world-readable.
    done = subprocess.run(["bash", "-ec", f"umask 0022\n{script}"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{Path(sqlite3).parent}:{os.environ.get('PATH', '')}"})
    assert done.returncode == 0, done.stderr
    copies = list(backup.rglob("*.db"))
    assert len(copies) == 1, list(backup.rglob("*"))
    # The copy 0600, in a folder of its own that no other user may enter (/backup is the site's).
    assert stat.S_IMODE(copies[0].stat().st_mode) == 0o600
    folder = copies[0].parent
    assert folder != backup and stat.S_IMODE(folder.stat().st_mode) == 0o700, oct(folder.stat().st_mode)
    # ... and it is still the consistent copy the restore test verifies.
    done = subprocess.run([*PACSGUARD, "audit", "verify", "--store", str(copies[0]),
                           "--key", str(state / "keys" / "store-signing.key.pub")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0 and "OK: every event" in done.stdout, done.stdout + done.stderr
