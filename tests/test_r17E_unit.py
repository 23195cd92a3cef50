"""Outside round 17 (E): deploy/pacsguard.service against what pacsguard really does when it runs.

- The forwarding process of a store-and-forward route (and the ATNA reading processes) start as
  `python -m ...` in the unit's WorkingDirectory, /var/lib/pacsguard, which the service may write:
  Python put that folder first on their import path, so a `pacsguard/` written there ran as their
  code. The unit's environment must keep the working directory off the import path.
- The unit left out MemoryDenyWriteExecute= for "cffi callbacks"; a gateway relaying over TLS and
  store-and-forward runs under the kernel's own memory-deny-write-execute (prctl PR_SET_MDWE, what
  systemd applies where the kernel has it), so the unit sets it.
"""

from __future__ import annotations

import ctypes
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "pacsguard.service"
HOST = "127.0.75.1"  # this round's loopback address for listeners
PACSGUARD = Path(sys.executable).parent / "pacsguard"  # the console script, as ExecStart= runs it
STORESCU = Path("/usr/bin/storescu")
PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1

PLANTED = """import os
open(os.path.join(os.getcwd(), "PLANTED-CODE-RAN"), "w").write(str(os.getpid()))
raise SystemExit(0)
"""


def _unit_values(name: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^{name}=(.*)$", UNIT.read_text(), re.M)]


def _unit_environment() -> dict[str, str]:
    pairs = [word.split("=", 1) for line in _unit_values("Environment") for word in shlex.split(line)]
    return dict((key, value) for key, value in pairs)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def _run(*args: str | Path, cwd: Path) -> None:
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _dicom(path: Path) -> str:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.PatientName, ds.PatientID, ds.Modality = "Test^Deploy", "R17E", "OT"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid(), generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def _site(tmp: Path) -> tuple[Path, Path, dict[str, int]]:
    """A configuration folder (etc) and a state folder (state, the working directory), as the
    docs lay them out: a TLS route and a store-and-forward route to the demo PACS."""
    etc, state = tmp / "etc", tmp / "state"
    etc.mkdir()
    state.mkdir(mode=0o700)
    ports = {name: _free_port() for name in ("demo", "tls", "sf")}
    tls = tmp / "tls"
    _run(PACSGUARD, "tls", "make-ca", "--out", tls, cwd=tmp)
    _run(PACSGUARD, "tls", "make-cert", "gw", "--ca-cert", tls / "ca.crt", "--ca-key", tls / "ca.key", "--out", tls,
         "--host", HOST, "--server", cwd=tmp)
    config = etc / "pacsguard.yaml"
    config.write_text(f"""
store:
  url: {state}/pacsguard.db
  signing_key: {etc}/keys/store-signing.key
demo_upstream: {{enabled: true, host: {HOST}, port: {ports['demo']}, storage: {state}/demo}}
gateway:
  routes:
    - name: tls
      listen: {{host: {HOST}, port: {ports['tls']}, ae_title: PACS,
               tls: {{cert_file: {tls}/gw.crt, key_file: {tls}/gw.key}}}}
      upstream: {{host: {HOST}, port: {ports['demo']}, ae_title: DEMOPACS}}
    - name: sf
      mode: store-and-forward
      listen: {{host: {HOST}, port: {ports['sf']}, ae_title: PACS}}
      destinations: [{{name: demo, host: {HOST}, port: {ports['demo']}, ae_title: DEMOPACS}}]
      spool: {{directory: {state}/spool/sf}}
""")
    _run(PACSGUARD, "init", "-c", config, cwd=tmp)
    return config, state, ports


@contextmanager
def _serve(config: Path, cwd: Path, env: dict[str, str],
           preexec: Callable[[], None] | None = None) -> Iterator[subprocess.Popen[str]]:
    out = cwd.parent / "serve.out"
    with out.open("w") as sink:
        proc = subprocess.Popen([str(PACSGUARD), "serve", "--config", str(config)], cwd=cwd, env=env,
                                stdout=sink, stderr=subprocess.STDOUT, text=True, preexec_fn=preexec)
    try:
        deadline = time.monotonic() + 30
        while "is running" not in out.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _store(port: int, files: list[Path], *tls: str) -> None:
    if not STORESCU.exists():
        pytest.fail("dcmtk's storescu is missing: run `apt-get install -y dcmtk` (Makefile PEERS)")
    done = subprocess.run([str(STORESCU), *tls, "-aec", "PACS", "-aet", "CT1", HOST, str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr


def _arrived(storage: Path, uids: list[str], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = {p.stem for p in storage.rglob("*.dcm")} if storage.exists() else set()
        if set(uids) <= held:
            return True
        time.sleep(0.2)
    return False


def test_the_unit_keeps_the_working_directory_off_the_child_processes_import_path(tmp_path: Path) -> None:
    config, state, ports = _site(tmp_path)
    (state / "pacsguard").mkdir()
    (state / "pacsguard" / "__init__.py").write_text(PLANTED)  # what a compromised gateway could leave
    env = {**os.environ, **_unit_environment()}
    env.pop("PYTHONPATH", None)
    uid = _dicom(tmp_path / "sf.dcm")
    with _serve(config, state, env):
        _store(ports["sf"], [tmp_path / "sf.dcm"])
        arrived = _arrived(state / "demo", [uid])
    assert not (state / "PLANTED-CODE-RAN").exists(), "code in the working directory ran in a child process"
    assert arrived, (tmp_path / "serve.out").read_text()[-3000:]


def _deny_write_execute() -> None:
    """In the child before exec: the kernel's memory-deny-write-execute, kept across execve."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE) failed: the kernel must be 6.3 or later")


def test_the_gateway_runs_without_writable_executable_memory_and_the_unit_says_so(tmp_path: Path) -> None:
    assert _unit_values("MemoryDenyWriteExecute") == ["yes"]
    config, state, ports = _site(tmp_path)
    files = [tmp_path / "tls.dcm", tmp_path / "sf.dcm"]
    uids = [_dicom(path) for path in files]
    env = {**os.environ, **_unit_environment()}
    with _serve(config, state, env, _deny_write_execute) as proc:
        # The kernel refuses a writable+executable mapping to the running gateway: MDWE is on.
        probe = subprocess.run([sys.executable, "-c", "import mmap; mmap.mmap(-1, 4096, prot=7)"],
                               capture_output=True, text=True, timeout=30, preexec_fn=_deny_write_execute)
        assert probe.returncode != 0 and "Permission denied" in probe.stderr, probe.stderr
        _store(ports["tls"], files[:1], "--anonymous-tls", "+cf", str(tmp_path / "tls" / "ca.crt"))
        _store(ports["sf"], files[1:])
        assert _arrived(state / "demo", uids), (tmp_path / "serve.out").read_text()[-3000:]
        assert proc.poll() is None
