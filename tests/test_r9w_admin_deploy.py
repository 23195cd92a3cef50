"""Outside round 9, wave 2 (W6): where the store's signing key goes, and docs/deployment.md's steps
followed as written, in a scratch root, as an unprivileged service user.

Found: the pages disagreed on the key. docs/store.md recommended /etc/pacsguard/keys/...,
docs/deployment.md put it in /var/lib/pacsguard/keys/ (inside the store's folder, so a copy of that
folder carried the key, and writable by the running service), and docs/gateway.md's worked example
used /etc/pacsguard/store-signing.key, which `pacsguard init` run as the service user cannot write
(/etc/pacsguard is root's). The one choice, stated in deployment.md: /etc/pacsguard/keys/, a 0700
folder the install steps give the service user, read-only to the running service
(ProtectSystem=strict) and away from the store's folder. Following the Upgrades steps also showed
`store migrate --backup-to /var/backups/pacsguard` run as the service user cannot make its backup
folder in root's /var/backups: the steps now make it first.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from store_helpers import make_events, write_revision_0001_store

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
DEPLOYMENT = DOCS / "deployment.md"
UNIT = ROOT / "deploy" / "pacsguard.service"
#: The service account of the scratch run: nobody/nogroup stand in for pacsguard/pacsguard.
UID, GID, USER, GROUP = 65534, 65534, "nobody", "nogroup"
#: What the page's commands run as the service user run as here. CAP_DAC_READ_SEARCH only because
#: this machine's Python lives under /root (0700): reading is let through, every write is still
#: checked against the service user's rights, which is what the steps must get right.
AS_SERVICE = ["setpriv", f"--reuid={UID}", f"--regid={GID}", "--clear-groups",
              "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
PACSGUARD_BIN = "/opt/pacsguard/.venv/bin/pacsguard"


def section(title: str) -> str:
    text = DEPLOYMENT.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def sh_blocks(title: str) -> list[list[str]]:
    """The commands of each ```sh block of a section, continuation lines joined."""
    blocks = re.findall(r"```sh\n(.*?)```", section(title), re.S)
    return [[line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()] for block in blocks]


def signing_key_of(text: str) -> str:
    found = yaml.safe_load(re.search(r"```yaml\n(.*?)```", text, re.S).group(1))  # type: ignore[union-attr]
    return str(found["store"]["signing_key"])


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A root for /etc, /var and the like that the service user can reach (pytest's tmp_path is
    0700 root's), laid out as Debian's: /etc and /var/backups root's, 0755."""
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is missing: it runs the page's `sudo -u pacsguard` steps")
    root = Path(tempfile.mkdtemp(prefix="r9w-admin-root-"))
    try:
        root.chmod(0o755)
        for folder in ("etc", "var/lib", "var/log", "var/backups"):
            (root / folder).mkdir(parents=True, mode=0o755)
        yield root
    finally:
        shutil.rmtree(root)


def rerooted(word: str, root: Path) -> str:
    for top in ("/etc/", "/var/"):
        if word.startswith(top):
            return f"{root}{word}"
    return word


def translated(line: str, root: Path) -> list[str] | None:
    """A command of the page as this scratch run makes it, or None for a step it cannot take here
    (making the user and the virtual environment, pip, systemd)."""
    words = shlex.split(line)
    if words[0] in ("useradd", "python3", "systemctl", "cp") or words[0].endswith("/pip"):
        return None
    prefix: list[str] = []
    if words[:3] == ["sudo", "-u", "pacsguard"]:
        prefix, words = AS_SERVICE, words[3:]
    out = []
    for n, word in enumerate(words):
        if n and words[n - 1] in ("-o", "-g") and word == "pacsguard":
            word = USER if words[n - 1] == "-o" else GROUP
        out.append(rerooted(word, root))
    if out[0] == PACSGUARD_BIN:
        out = [sys.executable, "-m", "pacsguard.cli", *out[1:]]
    return [*prefix, *out]


def run_steps(lines: list[str], root: Path, cwd: Path) -> None:
    env = {**os.environ, "HOME": str(root)}  # the service user's home is not root's
    for line in lines:
        argv = translated(line, root)
        if argv is None:
            continue
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"`{line}` failed:\n{done.stdout}{done.stderr}"
        assert "Traceback" not in done.stderr, done.stderr


def test_every_page_puts_the_store_signing_key_where_deployment_md_does() -> None:
    """One place, stated once: every absolute path of store-signing.key in the docs (a backup's .pub
    copy aside) is the one docs/deployment.md configures."""
    chosen = signing_key_of(section("Install"))
    found = {}
    for page in sorted(DOCS.glob("*.md")):
        for path in re.findall(r"(?<![\w.])/(?:[\w.-]+/)*store-signing\.key(?![\w.])", page.read_text()):
            found.setdefault(path, []).append(page.name)
    assert found == {chosen: found[chosen]}, found
    assert {"deployment.md", "store.md", "gateway.md"} <= set(found[chosen]), found


def test_the_deployment_steps_as_written_put_the_key_off_the_store_and_out_of_the_services_reach(
        scratch: Path) -> None:
    """Install (folders, configuration, `init` and `config check` as the service user), then the
    Upgrades steps on a store of an older revision, in a scratch root."""
    blocks = sh_blocks("Install")
    work = scratch / "admin"
    work.mkdir()
    run_steps(blocks[0], scratch, work)
    # The configuration as the page gives it, put in place with the page's own `install` line.
    text = section("Install")
    yaml_text = re.search(r"```yaml\n(.*?)```", text, re.S).group(1)  # type: ignore[union-attr]
    (work / "pacsguard.yaml").write_text(re.sub(r"(?<=[\s:])(/(?:etc|var)/)", f"{scratch}\\1", yaml_text))
    [put] = re.findall(r"`(install -m 0640 [^`]*pacsguard\.yaml[^`]*)`", text)
    run_steps([put], scratch, work)
    run_steps(blocks[1], scratch, work)

    config = yaml.safe_load((scratch / "etc/pacsguard/pacsguard.yaml").read_text())
    key, store = Path(config["store"]["signing_key"]), Path(config["store"]["url"])
    info = key.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (UID, 0o600), info
    assert store.is_file() and store.stat().st_uid == UID
    # Off the store's folder: a copy of it never carries the key.
    assert store.parent not in key.parents, (key, store)
    # Out of every folder the hardened unit lets the running service write (ProtectSystem=strict).
    writable = re.search(r"^ReadWritePaths=(.*)$", UNIT.read_text(), re.M).group(1).split()  # type: ignore[union-attr]
    assert not any(Path(folder) in Path(str(key).removeprefix(str(scratch))).parents for folder in writable)

    # An upgrade that has something to migrate, as the Upgrades section runs it.
    store.unlink()
    write_revision_0001_store(str(store), make_events(12))
    for made in store.parent.glob(f"{store.name}*"):  # with SQLite's -wal and -shm, if left
        os.chown(made, UID, GID)
    [upgrade] = sh_blocks("Upgrades")
    run_steps(upgrade, scratch, work)
    backups = list((scratch / "var/backups/pacsguard").iterdir())
    assert len(backups) == 1 and backups[0].name.startswith("pacsguard-rev0001-"), backups


def test_a_backup_folder_the_service_user_cannot_make_is_named_by_its_option(scratch: Path) -> None:
    """`store migrate --backup-to /var/backups/pacsguard` as the service user, without the folder
    made for it, said "[Errno 13] Permission denied: '...'"; now the option, the folder and that
    nothing was migrated."""
    state = scratch / "var/lib/pacsguard"
    state.mkdir(mode=0o700)
    store = state / "pacsguard.db"
    write_revision_0001_store(str(store), make_events(5))
    for made in [state, *state.iterdir()]:
        os.chown(made, UID, GID)
    folder = scratch / "var/backups/pacsguard"
    done = subprocess.run([*AS_SERVICE, sys.executable, "-m", "pacsguard.cli", "store", "migrate", "--store",
                           str(store), "--backup-to", str(folder)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(scratch)})
    err = " ".join(done.stderr.split())
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Errno" not in err and "Traceback" not in err, err
    assert f"--backup-to {folder}: the backup cannot be written there" in err and "nothing was migrated" in err, err
    assert not folder.exists()
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0001",)]
