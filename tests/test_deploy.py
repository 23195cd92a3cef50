"""Deployment files: the systemd unit passes `systemd-analyze verify` and keeps its hardening, the
logrotate snippet parses, `make run` installs no test tools, and the wheel holds the package data
(no tests) and runs from a pipx install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "pacsguard.service"
LOGROTATE = ROOT / "deploy" / "pacsguard.logrotate"
INSTALLED_EXEC = "/opt/pacsguard/.venv/bin/pacsguard"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} is missing: run `apt-get install -y {package}` (Makefile PEERS)")
    return path


def _directives(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart on an executable that exists here (verify checks that it does)."""
    here = Path(sys.executable).parent / "pacsguard"
    assert here.exists(), f"{here}: the test venv has no pacsguard entry point"
    text = UNIT.read_text()
    assert INSTALLED_EXEC in text
    copy = tmp_path / "pacsguard.service"
    copy.write_text(text.replace(INSTALLED_EXEC, str(here)))
    return copy


def test_unit_hardening_directives() -> None:
    d = _directives(UNIT.read_text())
    expected = {
        "Type": "notify", "User": "pacsguard", "Group": "pacsguard", "Restart": "on-failure",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE", "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "StateDirectory": "pacsguard", "StateDirectoryMode": "0700", "LogsDirectory": "pacsguard",
        "LogsDirectoryMode": "0750", "UMask": "0077",
    }
    for key, value in expected.items():
        assert d.get(key) == [value], (key, d.get(key))
    assert "@system-service" in d["SystemCallFilter"]
    assert set(d["ReadWritePaths"][0].split()) == {"/var/lib/pacsguard", "/var/log/pacsguard"}
    assert d["ExecStart"] == [f"{INSTALLED_EXEC} serve --config /etc/pacsguard/pacsguard.yaml"]
    assert re.fullmatch(r"\d+s", d["WatchdogSec"][0])


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze", "systemd")
    unit = _unit_copy(tmp_path)
    done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
    # The unmodified unit fails only because /opt/pacsguard is not installed here: verify does check.
    original = tmp_path / "orig" / "pacsguard.service"
    original.parent.mkdir()
    shutil.copy(UNIT, original)
    done = subprocess.run([analyze, "verify", "--man=no", str(original)], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode != 0 and INSTALLED_EXEC in done.stderr


def test_systemd_security_exposure(tmp_path: Path) -> None:
    analyze = _tool("systemd-analyze", "systemd")
    done = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", str(_unit_copy(tmp_path))],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", done.stdout)
    assert match, done.stdout[-2000:] + done.stderr
    assert float(match.group(1)) <= 2.0, done.stdout  # systemd rates < 2.0 as "OK"; measured 1.5


def test_logrotate_snippet_parses(tmp_path: Path) -> None:
    logrotate = _tool("logrotate", "logrotate")
    text = LOGROTATE.read_text()
    assert "create 0640 pacsguard pacsguard" in text and "    copytruncate" not in text  # lossless (docs/sinks.md)
    conf = tmp_path / "pacsguard"
    conf.write_text(text.replace("/var/log/pacsguard/", f"{tmp_path}/log/")
                    .replace("su pacsguard pacsguard", "su root root")
                    .replace("create 0640 pacsguard pacsguard", "create 0640 root root"))
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "events.json").write_text("{}\n" * 10)
    done = subprocess.run([logrotate, "--debug", "--force", "--state", str(tmp_path / "state"), str(conf)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "renaming" in done.stderr and "creating new" in done.stderr, done.stderr


def test_make_run_installs_runtime_dependencies_only(tmp_path: Path) -> None:
    def extras(target: str) -> list[set[str]]:
        """The extras of each `pip install -e '.[...]'` that `make -n TARGET` would run."""
        done = subprocess.run(["make", "-n", "-B", target, f"VENV={tmp_path}/venv"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return [set(m.group(1).split(",")) for m in re.finditer(r"pip install .*-e '\.\[([^]]*)\]'", done.stdout)]

    run = extras("run")
    assert run and all("test" not in e for e in run)
    assert any("test" in e for e in extras("test"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a clean copy of the committed tree (never the work tree's build dirs)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info",
                                                             "__pycache__", ".mypy_cache", ".ruff_cache",
                                                             ".pytest_cache", "var"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(base / "dist"),
                           str(src)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = (base / "dist").glob("pacsguard-*.whl")
    return built


def test_wheel_contents(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ["pacsguard/py.typed", "pacsguard/ids/rules/dicom.yaml", "pacsguard/store/alembic.ini",
                   "pacsguard/store/migrations/env.py", "pacsguard/store/migrations/script.py.mako",
                   "pacsguard/sinks/formats/cef.py", "pacsguard/sdnotify.py"]:
        assert needed in names, needed
    migrations = sorted(p for p in (ROOT / "src/pacsguard/store/migrations/versions").glob("*.py"))
    assert migrations and all(f"pacsguard/store/migrations/versions/{p.name}" in names for p in migrations)
    assert not [n for n in names if n.startswith(("tests/", "bench/", "deploy/")) or "/tests/" in n]
    assert not [n for n in names if n.endswith((".pyc", ".db", ".key"))]
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "pacsguard = pacsguard.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_pipx_install_runs(wheel: Path, tmp_path: Path) -> None:
    pipx = _tool("pipx", "pipx")
    env = {**os.environ, "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin")}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run([pipx, "install", str(wheel)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    exe = tmp_path / "bin" / "pacsguard"
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("pacsguard "), version.stderr
    # The installed package finds its own data: init runs the store migrations from the wheel.
    site = tmp_path / "site"
    site.mkdir()
    init = subprocess.run([str(exe), "init"], cwd=site, capture_output=True, text=True, timeout=300)
    assert init.returncode == 0, init.stdout + init.stderr
    assert (site / "var" / "pacsguard.db").stat().st_size > 0 and "ready" in init.stdout
