"""Run `pacsguard ARGS` in a fresh interpreter and list the modules it imported: how the tests hold
the command line to its start-up budget (docs/PERFORMANCE.md, "CLI start-up")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PROBE = """
import runpy, sys
sys.argv = ["pacsguard", *sys.argv[1:]]
try:
    runpy.run_module("pacsguard.cli", run_name="__main__")
except SystemExit:
    pass
print("MODULES", *sorted(sys.modules))
"""


def run_listing_modules(args: list[str], env: dict[str, str], cwd: Path | None = None
                        ) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """The finished process (its MODULES line included in stdout) and the modules it had loaded."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60,
                          env=env, cwd=cwd)
    line = next((line for line in proc.stdout.splitlines() if line.startswith("MODULES")), "MODULES")
    return proc, set(line.split()[1:])
