"""Round 17, outside probe F: `pacsguard` with its standard streams as a shell can leave them.

A closed stdout (`>&-`), a stdout open for reading (`1< file`), a stdout whose encoding is not
UTF-8 (`PYTHONIOENCODING`, a Latin-1 locale), an argument that is not valid UTF-8 and a closed
stdin: each is one line and a documented exit code (docs/cli.md), never exit 70 or lost output."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pacsguard.events import Event, Party, Severity
from store_helpers import new_store

PACSGUARD = str(Path(sys.executable).with_name("pacsguard"))
#: This probe's own loopback address (round 17, helper F): listeners bind nowhere else.
LOOPBACK = "127.0.76.1"

#: Text no Latin-1 or ASCII stdout can hold: Japanese, a bidi override, a character above U+FFFF.
HOSTILE = ["山田^太郎", "\u202eRTL", "x-ray \U0001f4a9", "Müller^Jürgen"]


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with one event per HOSTILE text (in its message, patient and details)."""
    target = tmp_path / "store.db"
    events = [Event(kind="dicom.store.request", component="gateway", severity=Severity.INFO,
                    actor=Party("MOD1", "10.0.0.1", 104), target=Party("PACS", "10.0.0.2", 104),
                    patient_ids=(text,), message=text, details={"text": text}) for text in HOSTILE]
    es, _ = new_store(str(target), tmp_path)
    es.append(events)
    es.checkpoint()
    es.engine.dispose()
    return target


def _shell(script: str, *args: str, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> subprocess.CompletedProcess[bytes]:
    """``script`` run by bash with "$1"... as ``args`` and $P as the pacsguard script."""
    environ = {key: value for key, value in os.environ.items() if key != "PACSGUARD_CONFIG"}
    environ.update(P=PACSGUARD, **(env or {}))
    return subprocess.run(["bash", "-c", script, "probe", *args], capture_output=True, env=environ, cwd=cwd,
                          timeout=60)


@pytest.mark.parametrize("command", ['"$P" events search --store "$1"', '"$P" events search --store "$1" --format json',
                                     '"$P" scan "$1"', '"$P" --version', '"$P" events search --help'])
def test_closed_stdout_is_one_line_and_exit_2(store: Path, command: str) -> None:
    """`>&-` was exit 70 ("internal error: AttributeError: 'NoneType' object has no attribute
    'write'"), or exit 0 with the output lost (scan, --version, --help)."""
    done = _shell(command + " >&-", str(store))
    assert done.returncode == 2, done.stderr
    assert done.stderr.decode().splitlines() == [
        "error: cannot write the output: standard output is closed; redirect it to a file or to /dev/null "
        "instead of closing it"]


def test_stdout_open_for_reading_names_the_output(store: Path, tmp_path: Path) -> None:
    """`1< file` said "error: [Errno 9] Bad file descriptor", naming neither output nor file."""
    readonly = tmp_path / "readonly.txt"
    readonly.write_text("x\n")
    done = _shell('"$P" events search --store "$1" 1< "$2"', str(store), str(readonly))
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == ["error: cannot write the output: Bad file descriptor"]
    assert readonly.read_text() == "x\n"


@pytest.mark.parametrize("encoding", ["latin-1", "ascii"])
def test_json_lines_on_a_stdout_that_is_not_utf8(store: Path, encoding: str) -> None:
    """PYTHONIOENCODING=latin-1 (or a Latin-1 locale): `events search --format json` was exit 70
    (UnicodeEncodeError) after part of its output. Now each line is JSON decoding to the stored text."""
    done = _shell('"$P" events search --store "$1" --format json', str(store),
                  env={"PYTHONIOENCODING": encoding, "LC_ALL": "C"})
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.decode(encoding).splitlines()]
    assert [e["message"] for e in events] == HOSTILE
    assert [e["details"]["text"] for e in events] == HOSTILE


def test_table_on_an_ascii_stdout(store: Path) -> None:
    """The table on a stdout that holds ASCII only: the text escaped, not exit 70."""
    done = _shell('"$P" events search --store "$1"', str(store), env={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode("ascii")
    assert "\\u5c71\\u7530^\\u592a\\u90ce" in text and "x-ray \\ud83d\\udca9" in text
    assert done.stderr == b""


def test_an_argument_that_is_not_utf8_is_printed_escaped(store: Path) -> None:
    """`audit patient $'\\xff'` wrote the raw byte 0xff back to stdout (not UTF-8, not what the
    note on stderr calls it); it is now written as the escape the note uses."""
    done = _shell('"$P" audit patient "$(printf "\\377")" --store "$1"', str(store))
    assert done.returncode == 0, done.stderr
    first = done.stdout.decode("utf-8").splitlines()[0]
    assert first.startswith("patient \\udcff: 0 events")


def test_reidentify_with_stdin_closed_or_not_text(tmp_path: Path) -> None:
    """`deid reidentify -` with stdin closed was exit 70 (AttributeError); a binary file named as
    the events said "'utf-8' codec can't decode byte 0xce in position 140: ..."."""
    key = tmp_path / "deid.key"
    assert _shell('"$P" deid keygen "$1"', str(key)).returncode == 0
    closed = _shell('"$P" deid reidentify --key-file "$1" - <&-', str(key), cwd=tmp_path)  # no pacsguard.yaml
    assert closed.returncode == 2, closed.stderr
    assert closed.stderr.decode().splitlines() == [
        "error: -: standard input is closed; pipe the events into it or name their file"]
    binary = tmp_path / "image.dcm"
    binary.write_bytes(b"\0" * 128 + b"DICM" + b"\xce\xff" * 8)
    done = _shell('"$P" deid reidentify --key-file "$1" "$2"', str(key), str(binary), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == [f"error: {binary}: not JSON lines (not UTF-8 text at byte 132)"]


@pytest.mark.parametrize(("kind", "said"), [("atna", "is called 'atna'"), ("dicom.assocation.rejected",
                                                                          "is called 'dicom.assocation.rejected'"),
                                            ("*.unparsed", "is called '*.unparsed'"), ("zzz*", "begins with 'zzz'")])
def test_a_kind_no_part_records_is_told(store: Path, kind: str, said: str) -> None:
    """`events search --kind atna` (meaning atna.*) or a misspelt kind found nothing, silently: the
    administrator could not tell it from a quiet network. stdout stays empty, exit 0."""
    done = _shell('"$P" events search --store "$1" --format json --kind "$2"', str(store), kind)
    assert done.returncode == 0 and done.stdout == b""
    assert done.stderr.decode().splitlines() == [
        f"events search: note: no kind of event {said}; a kind is matched whole, or by its beginning when it "
        "ends in * (dicom.*); `pacsguard events schema` lists every kind"]
    tail = _shell('"$P" events tail --store "$1" --format json --kind "$2"', str(store), kind)
    assert tail.returncode == 0 and tail.stdout == b""
    assert tail.stderr.decode().startswith(f"events tail: note: no kind of event {said};")


@pytest.mark.parametrize("kind", ["dicom.store.request", "dicom.*", "ids.alert.dicom-malformed-pdu", "atna.*"])
def test_a_declared_kind_finding_nothing_is_quiet(store: Path, kind: str) -> None:
    """A kind a part records (or a beginning of one) is not noted, whether it found events or not."""
    done = _shell('"$P" events search --store "$1" --format json --kind "$2"', str(store), kind)
    assert done.returncode == 0 and done.stderr == b""


def test_tail_options_say_what_they_take() -> None:
    """`events tail --help` showed --format with no help and --kind as "(prefix with *)", which
    reads as `*.unparsed`, a value that finds nothing."""
    done = _shell('"$P" events tail --help')
    text = " ".join(done.stdout.decode().split())
    assert "--format [table|json] table or json (one event per line)" in text
    assert "--kind TEXT event kind, e.g. dicom.association.rejected, or dicom.* for every kind it begins" in text


def test_schema_check_of_a_file_that_cannot_be_read_is_exit_2(tmp_path: Path) -> None:
    """`events schema --check /missing` said "is not the schema the code declares" with exit 1,
    the code of a schema that differs, so a CI job took a typo in the path for a stale file."""
    missing = _shell('"$P" events schema --check "$1"', str(tmp_path / "missing.json"))
    assert missing.returncode == 2
    assert missing.stderr.decode().splitlines() == [f"error: {tmp_path / 'missing.json'}: cannot read: "
                                                    "No such file or directory"]
    folder = _shell('"$P" events schema --check "$1"', str(tmp_path))
    assert folder.returncode == 2 and folder.stderr.decode() == f"error: {tmp_path}: cannot read: Is a directory\n"
    stale = tmp_path / "stale.json"
    stale.write_text("{}\n")
    assert _shell('"$P" events schema --check "$1"', str(stale)).returncode == 1
    assert _shell('"$P" events schema --check docs/events.schema.json', cwd=Path(__file__).parents[1]).returncode == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def test_spool_takes_format_json_and_an_unknown_id_says_where_ids_are(tmp_path: Path) -> None:
    """`gateway spool list|show` took only --json where every other command takes --format json
    ("No such option: --format"). An id that is not spooled stays exit 1 (tests/test_hostile_text.py
    holds it), now saying where the ids are."""
    listen, dead = _free_port(), _free_port()
    (tmp_path / "pacsguard.yaml").write_text(f"""\
store: {{url: var/pacsguard.db, signing_key: var/keys/store-signing.key}}
gateway:
  routes:
    - name: sf
      mode: store-and-forward
      listen: {{host: {LOOPBACK}, port: {listen}, ae_title: PACSGUARD}}
      destinations: [{{name: d0, host: {LOOPBACK}, port: {dead}, ae_title: NOBODY, connect_timeout: 1}}]
      spool: {{directory: spool, min_free_mib: 0}}
      retry: {{initial_delay: 60, max_delay: 60}}
      policy: {{hosts: [127.0.0.0/8]}}
""")
    assert _shell('"$P" init', cwd=tmp_path).returncode == 0
    serve = subprocess.Popen([PACSGUARD, "serve"], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while _shell(f'/usr/bin/echoscu -aec PACSGUARD {LOOPBACK} {listen}').returncode != 0:
            assert time.monotonic() < deadline and serve.poll() is None, serve.stderr
            time.sleep(0.2)
        part10 = tmp_path / "ct.dcm"
        part10.write_bytes(_part10())
        sent = _shell(f'/usr/bin/storescu -aec PACSGUARD {LOOPBACK} {listen} "$1"', str(part10))
        assert sent.returncode == 0, sent.stderr
    finally:
        serve.terminate()
        serve.wait(timeout=20)
    listed = _shell('"$P" gateway spool list --format json', cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)
    assert [e["route"] for e in entries] == ["sf"]
    assert json.loads(_shell('"$P" gateway spool list --json', cwd=tmp_path).stdout) == entries
    shown = _shell('"$P" gateway spool show "$1" --format json', entries[0]["id"], cwd=tmp_path)
    assert shown.returncode == 0 and json.loads(shown.stdout)["route"] == "sf"
    for verb in ("show nope", "show nope --format json", "purge nope --yes"):
        unknown = _shell(f'"$P" gateway spool {verb}', cwd=tmp_path)
        assert unknown.returncode == 1, (verb, unknown.stderr)
        assert unknown.stderr.decode().endswith("`pacsguard gateway spool list` shows the ids\n")


def _part10() -> bytes:
    """A small CT image as a Part-10 file (pydicom writes it)."""
    from io import BytesIO

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality = "SPOOL1", "Spool^Test", "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def test_serve_json_log_keeps_a_line_naming_a_path_that_is_not_utf8(tmp_path: Path) -> None:
    """`serve --log-format json` from a folder whose name is not valid UTF-8 (byte 0xff): orjson
    refused the lone surrogate of the path in "DemoPACS ... listening ..., storage PATH", so
    logging dropped the record and wrote "--- Logging error ---" and a traceback, many lines,
    into what journald takes as one JSON object per line."""
    home = tmp_path / os.fsdecode(b"site\xff")
    home.mkdir()
    assert _shell('"$P" init', cwd=home).returncode == 0
    listen, demo = _free_port(), _free_port()
    config = home / "pacsguard.yaml"
    text = config.read_text().replace("host: 127.0.0.1, port: 11112", f"host: {LOOPBACK}, port: {listen}")
    text = text.replace("host: 127.0.0.1, port: 11113", f"host: {LOOPBACK}, port: {demo}")
    text = text.replace("host: 127.0.0.1\n", f"host: {LOOPBACK}\n").replace("port: 11113\n", f"port: {demo}\n")
    config.write_text(text)
    serve = subprocess.Popen([PACSGUARD, "serve", "--log-format", "json"], cwd=home, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while _shell(f'/usr/bin/echoscu -aec PACSGUARD {LOOPBACK} {listen}').returncode != 0:
            assert time.monotonic() < deadline and serve.poll() is None
            time.sleep(0.2)
    finally:
        serve.terminate()
        _, err = serve.communicate(timeout=20)
    records = [json.loads(line) for line in err.decode().splitlines()]
    storage = [r["message"] for r in records if "listening" in r["message"] and r["logger"] == "pacsguard.demo.scp"]
    assert len(storage) == 1 and "site\\udcff" in storage[0], records


@pytest.mark.parametrize(("fmt", "lines"), [("table", "2"), ("json", "1")])  # header and row, or the row
def test_tail_follow_stops_when_its_reader_goes_on_a_quiet_store(store: Path, fmt: str, lines: str) -> None:
    """`events tail -f | head -1` (or `| grep -m1`) went on after the reader had gone, until the
    next event made a write fail: on a quiet store the pipeline never ended. Now it ends within a
    poll interval, exit 141 and nothing on stderr, as GNU tail -f does."""
    started = time.monotonic()
    done = _shell('timeout 10 "$P" events tail -f -n 1 --interval 0.1 --format "$2" --store "$1" | head -n "$3"; '
                  'exit "${PIPESTATUS[0]}"', str(store), fmt, lines)
    assert done.returncode == 141, done.stderr
    assert time.monotonic() - started < 8 and done.stderr == b""


def test_ids_live_stops_when_its_reader_goes(tmp_path: Path) -> None:
    """`ids live -i lo | head -1` captured on after head had its alert, unseen, until --duration
    (or for ever without one): the write that would fail only came with the next alert. Now it
    stops within a second of the reader going, exit 141 as `ids read | head` does."""
    with socket.socket() as listener:
        listener.bind((LOOPBACK, 0))
        listener.listen()
        port = listener.getsockname()[1]
        (tmp_path / "pacsguard.yaml").write_text(f"ids: {{dicom_ports: [{port}]}}\n")  # DICOM is looked for here
        started = time.monotonic()
        live = subprocess.Popen(["bash", "-c", f'"$P" ids live -i lo --bpf "host {LOOPBACK} and port {port}" '
                                 '--duration 25 --format json | head -n 1; exit "${PIPESTATUS[0]}"'], cwd=tmp_path,
                                env={**os.environ, "P": PACSGUARD}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert b"capturing on lo" in live.stderr.readline()  # ready: the capture has started
            # A calling AE title with a backslash (PS3.5 6.2, VR AE) is an alert (dicom-malformed-pdu);
            # nothing answers it, and echoscu gives up after 2 s.
            _shell(f'/usr/bin/echoscu -to 2 -ta 2 -aet "AB\\\\CD" {LOOPBACK} {port}')
            out, _ = live.communicate(timeout=20)
        finally:
            live.kill()
    assert live.returncode == 141
    assert json.loads(out)["component"] == "ids"
    assert time.monotonic() - started < 15  # not the 25 s of --duration
