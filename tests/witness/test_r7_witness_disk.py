"""Round 7: a witness's files on a full disk, and a SIEM's export of the syslog witness.

A write(2) that takes only part of a line (a full disk; here the kernel's file size limit,
RLIMIT_FSIZE, which cuts a write the same way) used to stay in the file witness's copy and the
witness service's ledger, with the next checkpoint glued to it: `audit verify --witness FILE`
refused the whole copy, and the witness service (which had answered 200 and countersigned a
checkpoint it did not hold) printed tracebacks and then would not start again. rsyslog's `%msg%`
export of the syslog witness keeps the UTF-8 BOM, which the reader refused as "not JSON"."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key
from pacsguard.witness.held import read_file
from pacsguard.witness.ledger import Ledger
from pacsguard.witness.syslog import SyslogWitness
from peers.rsyslog import tcp_collector
from store_helpers import make_events
from test_cli import run

TESTS = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
DEADLINE = 20.0

# Run in a child process: the file size limit applies to the whole process.
_LIMIT = '''
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead

def limit(path, extra):
    """Let `path` grow by `extra` bytes more: the next line is cut part way."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + extra, resource.RLIM_INFINITY))

def unlimited():
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
'''

_FILE_WITNESS = _LIMIT + '''
import sys
from pathlib import Path
from pacsguard.store import EventStore
from pacsguard.witness.errors import WitnessError
from pacsguard.witness.file import FileWitness
from store_helpers import make_events

base = Path(sys.argv[1])
es = EventStore.open(str(base / "site.db"), key_path=base / "site.key", create=True)
copy = base / "witness.jsonl"
witness = FileWitness(copy)
checkpoints = []
for n in (3, 2, 4):
    es.append(make_events(n, len(checkpoints) * 10))
    checkpoints.append(es.checkpoint())
es.close()
witness.deliver(checkpoints[0])
limit(copy, 40)
try:
    witness.deliver(checkpoints[1])
    print("second: taken")
except WitnessError as exc:
    print("second:", exc)
unlimited()
witness.deliver(checkpoints[2])
print("third: taken")
'''

_LEDGER = _LIMIT + '''
import sys
from pathlib import Path
from pacsguard.config.schema import SecretRef
from pacsguard.store import EventStore
from pacsguard.store.keys import key_id, load_public_key, public_path
from pacsguard.witness.build import witness_server
from pacsguard.witness.config import WitnessedLog, WitnessServiceConfig
from pacsguard.witness.errors import WitnessError
from pacsguard.witness.http import WitnessClient
from pacsguard.witness.push import HttpWitness
from store_helpers import make_events

base = Path(sys.argv[1])
cfg = WitnessServiceConfig.model_validate({
    "enabled": True, "host": "127.0.0.1", "port": 0, "storage": base / "held",
    "signing_key": base / "witness.key",
    "logs": [WitnessedLog(name="site-a", public_key=public_path(base / "site.key"), token=SecretRef(env="TOKEN"))]})
server = witness_server(cfg, lambda p: p, lambda event: None)
url = server.start()
es = EventStore.open(str(base / "site.db"), key_path=base / "site.key", create=True)
push = HttpWitness(WitnessClient(url, "t0ken"), es.leaves)
ledger = base / "held" / (key_id(load_public_key(base / "site.key")) + ".jsonl")
sizes = []
for n in (3, 2, 4):
    es.append(make_events(n, sum(sizes) * 10))
    sizes.append(n)
    checkpoint = es.checkpoint()
    if len(sizes) == 2:
        limit(ledger, 40)
    try:
        push.deliver(checkpoint)
        print(f"size {checkpoint.tree_size}: taken")
    except WitnessError as exc:
        print(f"size {checkpoint.tree_size}: {type(exc).__name__}: {exc}")
    unlimited()
es.close()
server.close()
'''


def _child(script: str, base: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOKEN": "t0ken", "PYTHONPATH": os.pathsep.join(
        [str(TESTS), *os.environ.get("PYTHONPATH", "").split(os.pathsep)])}
    return subprocess.run([sys.executable, "-c", script, str(base)], capture_output=True, text=True, timeout=120,
                          env=env)


def test_a_file_witness_line_cut_by_a_full_disk_is_taken_back(tmp_path: Path) -> None:
    generate_key(tmp_path / "site.key")
    done = _child(_FILE_WITNESS, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "second: witness " in done.stdout and "cannot append the checkpoint at size 5" in done.stdout
    assert "File too large" in done.stdout and "third: taken" in done.stdout
    # The copy holds whole lines only: what was taken, not the half of what was not.
    assert [cp.tree_size for cp in read_file(tmp_path / "witness.jsonl")] == [3, 9]
    out = run("audit", "verify", "--store", str(tmp_path / "site.db"), "--key", str(tmp_path / "site.key"),
              "--witness", str(tmp_path / "witness.jsonl"), cwd=tmp_path).stdout
    assert "2 checkpoints of this log, newest at size 9" in out


def test_a_ledger_that_cannot_take_a_checkpoint_answers_503_and_starts_again(tmp_path: Path) -> None:
    generate_key(tmp_path / "site.key")
    done = _child(_LEDGER, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "size 3: taken" and lines[2] == "size 9: taken", lines
    # Not held, so not countersigned: a 503 the log retries, not a refusal of the checkpoint.
    assert lines[1].startswith("size 5: WitnessError: ") and " answered 503 " in lines[1], lines
    assert "cannot store the checkpoint now" in lines[1] and "it is not held" in lines[1]
    # The witness starts again over its ledger and holds what it countersigned.
    held = Ledger(tmp_path / "held")
    log = next((tmp_path / "held").glob("*.jsonl")).stem
    assert [h.checkpoint.tree_size for h in held.held(log)] == [3, 9]


def test_rsyslogs_msg_export_of_the_syslog_witness_verifies(tmp_path: Path) -> None:
    base = tmp_path / "rsyslog"
    export = base / "export.jsonl"
    key = generate_key(tmp_path / "site.key")
    # What an administrator writes to export the MSG parts: rsyslog's %msg% property.
    with tcp_collector(base, HOST, "%msg%\\n", f'action(type="omfile" file="{export}" template="t")') as rsyslog:
        port, end = rsyslog.port, time.monotonic() + DEADLINE
        es = EventStore.open(str(tmp_path / "site.db"), key_path=key, create=True)
        witness = SyslogWitness(HOST, port, transport="tcp")
        for n in (4, 3):
            es.append(make_events(n, n * 10))
            witness.deliver(es.checkpoint())
        es.close()
        witness.close()
        while not export.exists() or len(export.read_bytes().splitlines()) < 2:
            assert time.monotonic() < end
            time.sleep(0.05)
    assert export.read_bytes().startswith(b"\xef\xbb\xbf{")  # rsyslog keeps the BOM
    out = run("audit", "verify", "--store", str(tmp_path / "site.db"), "--key", str(key), "--witness", str(export),
              cwd=tmp_path).stdout
    assert "2 checkpoints of this log, newest at size 7" in out and "OK" in out
