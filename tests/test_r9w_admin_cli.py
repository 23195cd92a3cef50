"""Outside round 9, wave 2 (W6): the administrator's loose ends in the command line.

- `audit verify --store /missing.db` (and every command that reads a store) advised "or give
  --store" to an administrator who had given --store; the advice now fits how the store was named
  (the option, or a configuration's store.url with the `init -c` that creates it).
- `events search --actor` took an AE title, a host or a user, but not `AE@host`, the form its own
  table prints in the actor column (`Party.label`): `--actor CT1@10.30.1.17` found nothing.
- `pacsguard init -c DIR/pacsguard.yaml` into a folder that does not exist printed a bare
  "[Errno 2] No such file or directory"; it now names the folder and what to do (exit 2). It does not
  create the folder as `mkdir -p` would: a mistyped folder would hold a configuration no later -c finds.
- `config show` in a folder with no configuration printed the defaults as if they were a file's;
  it now says on stderr that no file was found and these are the defaults (still exit 0: the
  defaults are what a command run without a file uses, and stdout stays YAML/JSON for scripts).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pacsguard.events import Event
from pacsguard.events.model import Party
from pacsguard.store import EventStore
from peers.dcmtk import Dcmtk, StoreSCP, free_port, read_log, stop_process_group, wait_for_port
from terminal import PACSGUARD
from test_cli import run

#: This helper's loopback address (outside round 9, W6).
HOST = "127.0.116.1"


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("command", [("audit", "verify"), ("events", "search"), ("events", "tail"),
                                     ("store", "migrate", "--backup-to", "bk"),
                                     ("gateway", "quarantine", "list")])
def test_a_missing_store_given_with_store_is_not_answered_with_give_store(command: tuple[str, ...],
                                                                         tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    err = one_line(run(*command, "--store", str(missing), cwd=tmp_path, check_code=2).stderr)
    assert str(missing) in err, err
    assert "given with --store" in err, err
    assert "give --store" not in err, err  # the advice of the configuration's case, not this one
    assert not missing.exists()


def test_a_missing_store_of_a_configuration_names_its_file_and_the_init_that_creates_it(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    config = tmp_path / "site" / "pacsguard.yaml"
    config.write_text("store:\n  url: var/site.db\n")
    err = one_line(run("audit", "verify", "-c", str(config), cwd=tmp_path, check_code=2).stderr)
    assert str(tmp_path / "site" / "var" / "site.db") in err, err
    assert f"store.url of {config}" in err, err
    assert f"pacsguard init -c {config}" in err, err


def _seed(store: str) -> None:
    """Two hosts calling as CT1, an AE title holding '@' on an IPv6 host with a user, and a user
    name of the AE@host form: every case a table row can show."""
    es = EventStore.open(store, create=True)
    try:
        ct1 = [Event(kind="dicom.association.accepted", component="test", message=f"ct1 {n}",
                     actor=Party(ae_title="CT1", host="10.30.1.17", port=50000 + n),
                     target=Party(ae_title="ARCHIVE", host="10.20.0.5", port=104)) for n in range(3)]
        other = Event(kind="dicom.association.accepted", component="test", message="ct1 elsewhere",
                      actor=Party(ae_title="CT1", host="10.30.1.99", port=50100))
        v6 = Event(kind="dicom.association.accepted", component="test", message="mr on v6",
                   actor=Party(ae_title="MR@2", host="fe80::17", port=4242, user="alice@hospital.org"))
        user = Event(kind="pacsguard.test", component="test", message="a user named so",
                     actor=Party(user="CT1@10.30.1.17"))
        es.append([*ct1, other, v6, user])
    finally:
        es.close()


def _messages(store: str, cwd: Path, *args: str) -> list[str]:
    out = run("events", "search", "--store", store, "--format", "json", *args, cwd=cwd).stdout
    return [json.loads(line)["message"] for line in out.splitlines()]


def test_events_search_takes_the_actor_as_its_table_prints_it(target: str, tmp_path: Path) -> None:
    """On SQLite and on the real PostgreSQL (the store's two backends)."""
    _seed(target)
    # AE@host: the three associations from that host, and the user whose name is that text.
    assert _messages(target, tmp_path, "--actor", "CT1@10.30.1.17") == ["ct1 0", "ct1 1", "ct1 2", "a user named so"]
    assert _messages(target, tmp_path, "--actor", "CT1@10.30.1.99") == ["ct1 elsewhere"]
    # The cell as the table shows it, port and all.
    assert _messages(target, tmp_path, "--actor", "CT1@10.30.1.17:50001") == ["ct1 1"]
    assert _messages(target, tmp_path, "--actor", "MR@2@fe80::17:4242 (alice@hospital.org)") == ["mr on v6"]
    assert _messages(target, tmp_path, "--actor", "MR@2@[fe80::17]:4242") == ["mr on v6"]
    assert _messages(target, tmp_path, "--actor", "MR@2@fe80::17") == ["mr on v6"]
    # What it took before still finds the same.
    assert _messages(target, tmp_path, "--actor", "CT1") == ["ct1 0", "ct1 1", "ct1 2", "ct1 elsewhere"]
    assert _messages(target, tmp_path, "--actor", "alice@hospital.org") == ["mr on v6"]
    # Nothing of another host or user, and --limit still counts the events shown.
    assert _messages(target, tmp_path, "--actor", "CT1@10.30.1.18") == []
    assert _messages(target, tmp_path, "--actor", "CT1@10.30.1.17 (bob)") == []
    done = run("events", "search", "--store", target, "--format", "json", "--actor", "CT1@10.30.1.17",
               "--limit", "2", cwd=tmp_path)
    assert [json.loads(line)["message"] for line in done.stdout.splitlines()] == ["ct1 0", "ct1 1"]
    assert "stopped at --limit 2" in done.stderr


def test_init_into_a_folder_that_does_not_exist_names_the_folder(tmp_path: Path) -> None:
    config = tmp_path / "nowhere" / "deeper" / "pacsguard.yaml"
    err = one_line(run("init", "-c", str(config), cwd=tmp_path, check_code=2).stderr)
    assert "Errno" not in err, err
    assert f"{config.parent}: no such folder" in err and f"mkdir -p {config.parent}" in err, err
    assert not (tmp_path / "nowhere").exists()  # nothing made in a folder the administrator may have mistyped
    (tmp_path / "afile").write_text("")
    err = one_line(run("init", "-c", str(tmp_path / "afile" / "pacsguard.yaml"), cwd=tmp_path, check_code=2).stderr)
    assert "Errno" not in err and f"{tmp_path / 'afile'}: a file, not a folder" in err, err


def test_config_show_without_a_file_says_so_on_stderr_and_keeps_stdout_for_scripts(tmp_path: Path) -> None:
    done = run("config", "show", cwd=tmp_path)
    assert "no configuration file (pacsguard.yaml does not exist); these are the defaults" in one_line(done.stderr)
    assert done.stdout.startswith("# from no file")
    done = run("config", "show", "--format", "json", cwd=tmp_path)
    assert json.loads(done.stdout)["source"] is None  # stdout is the JSON alone
    assert "these are the defaults" in done.stderr
    # With a file, nothing on stderr.
    (tmp_path / "pacsguard.yaml").write_text("store:\n  url: var/x.db\n")
    done = run("config", "show", cwd=tmp_path)
    assert done.stderr == "" and "url: var/x.db" in done.stdout


def test_the_actor_cell_of_real_dcmtk_traffic_finds_its_association(tmp_path: Path, dcmtk: Dcmtk,
                                                                     storescp_sink: StoreSCP) -> None:
    """dcmtk's echoscu through `gateway run` as CT1 and as MR1: the actor cell `events search`
    prints for CT1's association, pasted back into --actor, finds CT1's events and none of MR1's."""
    port = free_port(HOST)
    log = (tmp_path / "gateway.log").open("wb")
    gateway = subprocess.Popen([*PACSGUARD, "gateway", "run", "--listen", f"{HOST}:{port}", "--aet", "GW",
                                "--upstream", f"{storescp_sink.aet}@{storescp_sink.host}:{storescp_sink.port}",
                                "--store", "s.db", "--key", str(tmp_path / "keys" / "s.key")],
                               cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for_port(HOST, port, 60, gateway), read_log(tmp_path / "gateway.log")
        for calling in ("CT1", "MR1"):
            done = dcmtk.run("echoscu", "-aet", calling, "-aec", "GW", HOST, str(port), timeout=30)
            assert done.returncode == 0, done.stdout + done.stderr
    finally:
        stop_process_group(gateway)
        log.close()
    rows = [json.loads(line) for line in run("events", "search", "--store", "s.db", "--format", "json",
                                             cwd=tmp_path).stdout.splitlines()]
    ct1 = [r for r in rows if r.get("actor", {}).get("ae_title") == "CT1"]
    assert ct1 and any(r.get("actor", {}).get("ae_title") == "MR1" for r in rows), rows
    actor = ct1[0]["actor"]
    cell = f"CT1@{actor['host']}:{actor['port']}"
    assert cell in run("events", "search", "--store", "s.db", cwd=tmp_path).stdout  # as the table prints it
    for given in (cell, f"CT1@{actor['host']}"):
        found = [json.loads(line) for line in run("events", "search", "--store", "s.db", "--format", "json",
                                                  "--actor", given, cwd=tmp_path).stdout.splitlines()]
        assert [r["id"] for r in found] == [r["id"] for r in ct1], (given, found)
