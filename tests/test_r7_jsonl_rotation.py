"""Round 7: the JSON-lines sink under logrotate's `create` mode, a removed file and a full disk.

The sink kept writing to the file it opened: after logrotate's `create` rotation (logrotate's
default mode) every later event went into the renamed file, lost once that was compressed or
removed; after a write cut short (a full disk) the next event was glued to the half line, so a
shipper could read neither."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from pathlib import Path

from pacsguard.events.model import Event
from pacsguard.sinks import JsonLinesSink
from test_cli import run

LOGROTATE = "/usr/sbin/logrotate"


def _event(n: int) -> Event:
    return Event(kind="dicom.association.requested", component="gateway", message=f"event {n}",
                 details={"n": n, "pad": "x" * 200})


def _messages(path: Path) -> list[str]:
    return [json.loads(line)["message"] for line in path.read_text(encoding="utf-8").splitlines()]


def _rotate(folder: Path, path: Path, mode: str) -> None:
    conf = folder / "logrotate.conf"
    conf.write_text(f"{path} {{\n  rotate 3\n  {mode}\n  nocompress\n}}\n")
    done = subprocess.run([LOGROTATE, "-f", "-s", str(folder / "logrotate.state"), str(conf)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr


def test_after_a_create_rotation_events_go_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    with JsonLinesSink(path) as sink:
        sink.emit([_event(1)])
        _rotate(tmp_path, path, "create 0640")
        sink.emit([_event(2), _event(3)])
        assert sink.reopened == 1
    assert _messages(tmp_path / "events.json.1") == ["event 1"]
    assert _messages(path) == ["event 2", "event 3"]


def test_a_removed_file_is_made_again_owner_and_group_only(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    with JsonLinesSink(path) as sink:
        sink.emit([_event(1)])
        path.unlink()
        sink.emit([_event(2)])
    assert _messages(path) == ["event 2"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_copytruncate_keeps_the_same_file_open(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    with JsonLinesSink(path) as sink:
        sink.emit([_event(1)])
        _rotate(tmp_path, path, "copytruncate")
        sink.emit([_event(2)])
        assert sink.reopened == 0
    assert _messages(tmp_path / "events.json.1") == ["event 1"]
    assert _messages(path) == ["event 2"]  # appended at the new end (O_APPEND), no hole before it


# A full disk, made with the kernel's file size limit (RLIMIT_FSIZE cuts a write the same way
# ENOSPC does); in a child process, since the limit applies to the whole process.
_FULL = '''
import resource, signal, sys
from pathlib import Path
from pacsguard.events.model import Event
from pacsguard.sinks import JsonLinesSink

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
path = Path(sys.argv[1])
def event(n):
    return Event(kind="dicom.association.requested", component="gateway", message=f"event {n}",
                 details={"n": n, "pad": "x" * 200})
sink = JsonLinesSink(path)
sink.emit([event(1)])
line = len(event(2).to_json()) + 1
resource.setrlimit(resource.RLIMIT_FSIZE, (path.stat().st_size + line + 100, resource.RLIM_INFINITY))
try:
    sink.emit([event(2), event(3), event(4)])
except OSError as exc:
    print("failed:", exc)
resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
sink.emit([event(5)])
print("lost", getattr(sink, "lost", "(not counted)"))
'''


def test_a_line_cut_by_a_full_disk_does_not_swallow_the_next_event(tmp_path: Path) -> None:
    path = tmp_path / "events.json"
    done = subprocess.run([sys.executable, "-c", _FULL, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"failed: [Errno 27] {path}: 2 of 3 event(s) not written (File too large)" in done.stdout
    assert "lost 2" in done.stdout
    lines = path.read_bytes().splitlines()
    assert len(lines) == 4
    parsed = [json.loads(line)["message"] for line in (lines[0], lines[1], lines[3])]
    assert parsed == ["event 1", "event 2", "event 5"]
    assert lines[2].startswith(b'{"actor"') and b"event 3" not in lines[2]  # the half line, alone


def test_serve_names_the_setting_of_a_file_it_cannot_open(tmp_path: Path) -> None:
    (tmp_path / "pacsguard.yaml").write_text("store: {url: var/pacsguard.db, signing_key: var/keys/k.key}\n"
                                             "sinks: {jsonl: {path: no-such-folder/events.json}}\n")
    run("init", "-c", "pacsguard.yaml", cwd=tmp_path)
    done = run("serve", "-c", "pacsguard.yaml", cwd=tmp_path, check_code=2)
    assert (f"sinks.jsonl.path: cannot open {tmp_path / 'no-such-folder' / 'events.json'} for appending "
            "(No such file or directory)") in done.stderr
