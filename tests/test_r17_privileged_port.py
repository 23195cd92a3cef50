"""Outside round 17 (E): a gateway run by a service user without CAP_NET_BIND_SERVICE, told to
listen on DICOM's port 104, said "[Errno 13] route modalities: cannot listen on ...:104:
Permission denied": nothing of why a port refuses a user, or of the fix. Every listener (routes,
metrics, ATNA, witness, the demo upstream) now says it in one line without "[Errno 13]".

Root without the capability in its bounding set (setpriv) is refused port 104 like any user."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from terminal import PACSGUARD

HOST = "127.0.77.1"


def test_a_privileged_port_without_the_capability_says_what_to_do(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("setpriv is missing: run `apt-get install -y util-linux`")
    config = tmp_path / "pacsguard.yaml"
    config.write_text(f"gateway:\n  routes:\n    - name: modalities\n"
                      f"      listen: {{host: {HOST}, port: 104, ae_title: PACSGUARD}}\n"
                      f"      upstream: {{host: {HOST}, port: 11112, ae_title: PACS}}\n")
    done = subprocess.run([*PACSGUARD, "init", "-c", str(config)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    done = subprocess.run([setpriv, "--bounding-set=-net_bind_service", *PACSGUARD, "serve", "-c", str(config)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "[Errno" not in lines[0] and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"error: route modalities: cannot listen on {HOST}:104"), lines[0]
    assert "Permission denied; ports below 1024 need CAP_NET_BIND_SERVICE" in lines[0], lines[0]
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in lines[0], lines[0]
