"""Outside round 9, area G: the standalone commands of the docs run as a new administrator runs them.

- `pacsguard atna listen --store F` (docs/audit.md, "Turning it on", the trial without a file) made
  its checkpoint key beside the store (`F.key`), where docs/store.md ("Keeping the signing key off
  the host") says pacsguard never puts a key it makes: a copy of the store's folder carried the key
  that re-signs it. It now does what `gateway run` does: a key already beside the store is kept, a
  new one goes to the key folder.
- `pacsguard gateway run` on a new store (docs/gateway.md, "Quick start without a file") printed
  fifteen lines of Alembic's INFO narration before its banner; `serve` already kept those quiet.
- `events search --patient "$PID"` with PID unset, and `events search`/`audit search` with an
  --until not after --since, answered an empty table and exit 0, which reads as "nobody touched the
  patient"; `audit patient` already refused both. They are refused now (exit 2), naming the option.
- `serve` with the metrics port taken said only "error while attempting to bind on address ...",
  naming neither the metrics listener nor its keys; with the ATNA UDP port taken it said
  "[Errno None] atna udp listener cannot listen on HOST:PORT: None"; the witness service said only
  "[Errno 98] Address already in use".
- `pacsguard serv` said "No such command 'serv'." where `pacsguard audit verfy` suggests `verify`:
  the root's parts are loaded on use, so typer's suggestion did not see them.
- `gateway run --aet THIS_AE_TITLE_IS_TOO_LONG` answered "routes.0.listen.ae_title: ...", and
  `atna listen --tcp HOST:99999` "atna.tcp.port: ...": keys of a file the administrator never wrote.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

HOST = "127.0.107.10"  # this helper's loopback range


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _run_until_banner(args: list[str], cwd: Path, env: dict[str, str],
                      during: Callable[[], None] = lambda: None, last_row: str = "ATNA syslog") -> str:
    """Start `pacsguard ARGS`, wait for its banner down to the row naming ``last_row``, call
    ``during``, stop it with Ctrl-C (SIGINT); all it printed."""
    proc = subprocess.Popen([sys.executable, "-m", "pacsguard.cli", *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if last_row in line:  # the banner's table, listened to its last row
                break
        assert any(last_row in line for line in lines), "".join(lines)
        during()
        time.sleep(1)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return "".join(lines) + rest


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PACSGUARD_KEY_DIR": str(tmp_path / "keys")}


def test_atna_listen_makes_its_key_off_the_store_folder_and_verify_finds_it(tmp_path: Path) -> None:
    env = _env(tmp_path)
    (tmp_path / "var").mkdir()
    port = _free_port()

    def send() -> None:  # one RFC 6587 octet-counted frame, so that the stop signs a checkpoint
        message = b"<110>1 2026-12-05T10:00:00Z ris app - IHE+RFC-3881 - <AuditMessage/>"
        with socket.create_connection((HOST, port), timeout=10) as conn:
            conn.sendall(b"%d %s" % (len(message), message))

    out = _run_until_banner(["atna", "listen", "--tcp", f"{HOST}:{port}", "--store", "var/audit.db"],
                            tmp_path, env, send)
    assert not (tmp_path / "var" / "audit.db.key").exists(), out
    made = sorted((tmp_path / "keys").glob("audit.db-*.key"))
    assert len(made) == 1, out
    assert f"generated checkpoint signing key {made[0]}" in " ".join(out.split()), out
    verify = subprocess.run([sys.executable, "-m", "pacsguard.cli", "audit", "verify", "--store", "var/audit.db"],
                            cwd=tmp_path, env=env, text=True, capture_output=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "1 events" in verify.stdout and "signature valid" in verify.stdout, verify.stdout


def test_atna_listen_keeps_a_key_an_earlier_version_made_beside_the_store(tmp_path: Path) -> None:
    from pacsguard.store import keys

    env = _env(tmp_path)
    (tmp_path / "var").mkdir()
    keys.generate_key(tmp_path / "var" / "audit.db.key")
    out = _run_until_banner(["atna", "listen", "--tcp", f"{HOST}:{_free_port()}", "--store", "var/audit.db"],
                            tmp_path, env)
    assert "generated checkpoint signing key" not in out, out
    assert not (tmp_path / "keys").exists() or not any((tmp_path / "keys").iterdir()), out


def test_gateway_run_on_a_new_store_prints_no_alembic_narration(tmp_path: Path) -> None:
    out = _run_until_banner(["gateway", "run", "--listen", f"{HOST}:{_free_port()}", "--aet", "PACS",
                             "--upstream", f"ARCHIVE@{HOST}:{_free_port()}", "--store", "var/pacsguard.db"],
                            tmp_path, _env(tmp_path), last_row="gateway route")
    assert (tmp_path / "var" / "pacsguard.db").exists(), out
    assert "alembic" not in out.lower(), out
    assert f"PACS@{HOST}" in out, out


# --- searches that could only answer "no event" -----------------------------------------------------

def _store_with_one_event(tmp_path: Path) -> Path:
    from pacsguard.events import Event, Party
    from pacsguard.store import EventStore, keys

    db = tmp_path / "s.db"
    keys.generate_key(tmp_path / "s.key")
    es = EventStore.open(str(db), key_path=tmp_path / "s.key", create=True)
    try:
        es.append([Event(kind="dicom.dimse.c-store", component="gateway", actor=Party(ae_title="CT1"),
                         patient_ids=("PID-7",), message="C-STORE")])
    finally:
        es.close()
    return db


def _search(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", *args, "--store", str(tmp_path / "s.db")],
                          cwd=tmp_path, text=True, capture_output=True, timeout=60)


def test_an_empty_filter_is_refused_naming_it(tmp_path: Path) -> None:
    _store_with_one_event(tmp_path)
    for option in ("--patient", "--study", "--actor", "--kind"):
        done = _search(tmp_path, "events", "search", option, "")
        assert done.returncode == 2, (option, done.stdout, done.stderr)
        assert f"error: {option}: empty" in done.stderr and done.stdout == "", (option, done.stderr)
    done = _search(tmp_path, "events", "search", "--patient", "PID-7")
    assert done.returncode == 0 and "PID-7" in done.stdout, done.stdout + done.stderr


def test_a_window_that_holds_no_time_is_refused_by_both_searches(tmp_path: Path) -> None:
    _store_with_one_event(tmp_path)
    for command in (("events", "search"), ("audit", "search")):
        for since, until in (("2026-12-05T14:00", "2026-12-05T13:00"), ("2026-12-05", "2026-12-05")):
            done = _search(tmp_path, *command, "--since", since, "--until", until)
            assert done.returncode == 2, (command, since, until, done.stdout, done.stderr)
            err = " ".join(done.stderr.split())
            assert f"--until {until}" in err and f"is not after --since {since}" in err, err
            assert done.stdout == "" and "Traceback" not in done.stderr
    done = _search(tmp_path, "events", "search", "--since", "2000-01-01", "--until", "9999-01-01")
    assert done.returncode == 0 and "PID-7" in done.stdout, done.stdout + done.stderr


# --- a port already taken, named by what wanted it -------------------------------------------------

def _serve_with_port_taken(tmp_path: Path, kind: int, section: str) -> subprocess.CompletedProcess[str]:
    from pacsguard.store import keys

    (tmp_path / "var").mkdir()
    keys.generate_key(tmp_path / "var" / "k.key")
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind((HOST, 0))
        if kind == socket.SOCK_STREAM:
            taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "pacsguard.yaml").write_text("store: {url: var/pacsguard.db, signing_key: var/k.key}\n"
                                                 + section.format(host=HOST, port=port))
        return subprocess.run([sys.executable, "-m", "pacsguard.cli", "serve"], cwd=tmp_path, text=True,
                              capture_output=True, timeout=60)


def test_serve_names_the_metrics_listener_whose_port_is_taken(tmp_path: Path) -> None:
    done = _serve_with_port_taken(tmp_path, socket.SOCK_STREAM,
                                  "metrics: {{enabled: true, host: {host}, port: {port}}}\n")
    assert done.returncode == 2, done.stdout + done.stderr
    err = " ".join(done.stderr.split())
    assert f"metrics: cannot listen on {HOST}:" in err and "(metrics.host, metrics.port)" in err, err
    assert "Traceback" not in done.stderr


def test_serve_names_the_atna_udp_listener_whose_port_is_taken_without_none(tmp_path: Path) -> None:
    done = _serve_with_port_taken(tmp_path, socket.SOCK_DGRAM,
                                  "atna: {{enabled: true, udp: {{host: {host}, port: {port}}}}}\n")
    assert done.returncode == 2, done.stdout + done.stderr
    err = " ".join(done.stderr.split())
    assert f"atna udp listener: cannot listen on {HOST}:" in err and "(atna.udp)" in err, err
    assert "None" not in err and "Traceback" not in done.stderr, err


def test_witness_serve_names_its_listener_whose_port_is_taken(tmp_path: Path) -> None:
    from pacsguard.store import keys

    keys.generate_key(tmp_path / "gw1.key")
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "pacsguard.yaml").write_text(
            "store: {url: var/w.db, signing_key: var/own.key}\n"
            f"witness:\n  enabled: true\n  host: {HOST}\n  port: {port}\n"
            "  logs:\n    - {name: gw1, public_key: gw1.key.pub, token: {env: HOME}}\n")
        subprocess.run([sys.executable, "-m", "pacsguard.cli", "init"], cwd=tmp_path, check=True,
                       capture_output=True, timeout=60)
        done = subprocess.run([sys.executable, "-m", "pacsguard.cli", "witness", "serve"], cwd=tmp_path, text=True,
                              capture_output=True, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    err = " ".join(done.stderr.split())
    assert f"witness service: cannot listen on {HOST}:{port} (witness.host, witness.port)" in err, err


# --- typos and wrong values, named as the administrator typed them --------------------------------

def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=60)


def test_a_typo_of_a_top_level_command_is_answered_with_the_command_meant(tmp_path: Path) -> None:
    for typo, meant in (("serv", "serve"), ("evnts", "events"), ("confg", "config"), ("adit", "audit")):
        done = _cli(typo, cwd=tmp_path)
        assert done.returncode == 2, done.stderr
        assert f"No such command '{typo}'. Did you mean '{meant}'?" in done.stderr, done.stderr
    done = _cli("xyzzy", cwd=tmp_path)
    assert done.returncode == 2 and "No such command 'xyzzy'." in done.stderr and "Did you" not in done.stderr


def test_gateway_run_and_atna_listen_name_the_option_that_gave_a_wrong_value(tmp_path: Path) -> None:
    up = f"ARCHIVE@{HOST}:11114"
    cases = [
        (["gateway", "run", "--listen", f"{HOST}:11112", "--aet", "THIS_AE_TITLE_IS_TOO_LONG", "--upstream", up],
         "--aet: an AE title is 1-16"),
        (["gateway", "run", "--listen", f"{HOST}:11112", "--aet", "PACS", "--upstream", up,
          "--allow-host", "10.0.0.0/33"], "--allow-host: expected an IP address or CIDR"),
        (["gateway", "run", "--listen", f"{HOST}:11112", "--aet", "PACS", "--upstream", f"ARCHIVE@{HOST}:99999"],
         "--upstream: Input should be less than or equal to 65535"),
        (["gateway", "run", "--listen", f"{HOST}:11112", "--aet", "PACS", "--upstream", up, "--tls-cert", "x.crt"],
         "--tls-cert and --tls-key go together"),
        (["atna", "listen", "--tcp", f"{HOST}:99999"], "--tcp: Input should be less than or equal to 65535"),
        (["atna", "listen", "--udp", "999.1.1.1:514"], "--udp: expected an IP address or a host name"),
    ]
    for args, said in cases:
        done = _cli(*args, "--store", str(tmp_path / "s.db"), cwd=tmp_path)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        err = " ".join(done.stderr.split())
        assert said in err and "routes.0" not in err and "atna." not in err, (args, err)
        assert not (tmp_path / "s.db").exists(), args  # refused before anything was made
