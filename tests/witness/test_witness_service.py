"""The witness service over real HTTP on loopback, in process: a store delivers its checkpoints with
consistency proofs and gets countersignatures; a rolled-back or forked log, a wrong token and a
forged checkpoint are refused and recorded; an unreachable witness is recorded once and caught up."""

from __future__ import annotations

import base64
import json
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsguard.config.schema import SecretRef
from pacsguard.events import Event
from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key, key_id, load_private_key, load_public_key, public_path
from pacsguard.store.statement import from_statement, to_statement
from pacsguard.store.store import Checkpoint, checkpoint_message
from pacsguard.witness.build import witness_server
from pacsguard.witness.config import WitnessedLog, WitnessServiceConfig
from pacsguard.witness.cosign import cosigned_by
from pacsguard.witness.delivery import WitnessDelivery
from pacsguard.witness.http import WitnessClient
from pacsguard.witness.push import HttpWitness
from pacsguard.witness.server import WitnessServer
from peers.dcmtk import free_port
from store_helpers import make_events
from test_cli import run

TOKEN = "s3cret-token-of-site-a"


def _config(site_key: Path, **settings: object) -> WitnessServiceConfig:
    """A witness pinning site-a's key and token ($SITE_A_TOKEN); its files go under witness_server's folder."""
    log = WitnessedLog(name="site-a", public_key=public_path(site_key), token=SecretRef(env="SITE_A_TOKEN"))
    return WitnessServiceConfig.model_validate({"enabled": True, "storage": Path("held"),
                                                "signing_key": Path("keys/witness.key"), "logs": [log], **settings})


@pytest.fixture
def site_key(tmp_path: Path) -> Path:
    return generate_key(tmp_path / "site" / "keys" / "site.key")


@pytest.fixture
def witness(tmp_path: Path, site_key: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, list[Event]]]:
    monkeypatch.setenv("SITE_A_TOKEN", TOKEN)
    cfg = _config(site_key, port=0)
    seen: list[Event] = []
    server: WitnessServer = witness_server(cfg, lambda p: tmp_path / "witness" / p, seen.append)
    url = server.start()
    try:
        yield url, seen
    finally:
        server.close()


def _site(tmp: Path, key: Path, url: str, token: str = TOKEN, *, name: str = "site.db",
          published: list[Event] | None = None) -> tuple[EventStore, WitnessDelivery]:
    es = EventStore.open(str(tmp / "site" / name), key_path=key, create=True)
    push = HttpWitness(WitnessClient(url, token), es.leaves, witness_key=public_path(tmp / "witness/keys/witness.key"))
    delivery = WitnessDelivery([push], (published if published is not None else []).append, backoff=(0.05, 0.2))
    es.add_checkpoint_listener(delivery)
    return es, delivery


def _drained(delivery: WitnessDelivery) -> None:
    """Wait until every courier has delivered or given up what it was handed (close() records nothing)."""
    end = time.monotonic() + 10
    while any(c.queue for c in delivery.couriers):
        assert time.monotonic() < end, "delivery did not finish"
        time.sleep(0.02)


def _held(url: str, log: str) -> list[dict]:
    return WitnessClient(url).held(log)


def test_checkpoints_are_held_countersigned_and_verify_reads_them(tmp_path, site_key, witness) -> None:
    url, _ = witness
    es, delivery = _site(tmp_path, site_key, url)
    for n in (7, 1, 300, 2):  # sizes 7, 8, 308, 310: proofs across perfect and ragged trees
        es.append(make_events(n))
        es.checkpoint()
    es.close()
    log = key_id(load_public_key(site_key))
    held = _held(url, log)
    assert [h["tree_size"] for h in held] == [7, 8, 308, 310]
    assert delivery.couriers[0].delivered == 4
    witness_key = load_public_key(tmp_path / "witness/keys/witness.key")
    for h in held:
        cp = from_statement(h)
        assert cosigned_by(witness_key, cp, h["received_us"], base64.b64decode(h["cosignature"]))
    # The witness's ledger file is owner-only and holds the same.
    ledger = tmp_path / "witness/held" / f"{log}.jsonl"
    assert oct(ledger.stat().st_mode & 0o777) == "0o600" and len(ledger.read_text().splitlines()) == 4
    out = run("audit", "verify", "--store", str(tmp_path / "site/site.db"), "--key", str(site_key),
              "--witness", url, cwd=tmp_path).stdout
    assert "4 checkpoints of this log, newest at size 310" in out and "OK" in out


def test_a_rolled_back_or_forked_log_is_refused_and_recorded(tmp_path, site_key, witness) -> None:
    url, seen = witness
    es, _ = _site(tmp_path, site_key, url)
    es.append(make_events(10))
    es.checkpoint()
    with sqlite3.connect(tmp_path / "site/site.db") as live, sqlite3.connect(tmp_path / "site/older.db") as copy:
        live.backup(copy)
    es.append(make_events(10, 10))
    es.checkpoint()
    es.close()
    # The older copy goes on (as a restored backup would) and signs a tree that does not extend size 20.
    published: list[Event] = []
    older, delivery = _site(tmp_path, site_key, url, name="older.db", published=published)
    older.append(make_events(15, 100))
    older.checkpoint()
    _drained(delivery)
    older.close()
    refused = [e for e in published if e.kind == "pacsguard.witness.refused"]
    assert refused and "422" in refused[0].message and "forked or rolled back" in refused[0].message
    inconsistent = [e for e in seen if e.kind == "pacsguard.witness.inconsistent"]
    assert inconsistent and inconsistent[0].details["held"] == 20 and inconsistent[0].details["tree_size"] == 25
    assert "does not extend the one of size 20" in inconsistent[0].message
    assert [h["tree_size"] for h in _held(url, key_id(load_public_key(site_key)))] == [10, 20]


def test_a_wrong_token_and_a_forged_checkpoint_are_refused(tmp_path, site_key, witness) -> None:
    url, seen = witness
    published: list[Event] = []
    es, delivery = _site(tmp_path, site_key, url, token="guessed", published=published)
    es.append(make_events(3))
    es.checkpoint()
    _drained(delivery)
    es.close()
    assert [e.kind for e in published] == ["pacsguard.witness.refused"] and "401" in published[0].message
    attacker = load_private_key(generate_key(tmp_path / "attacker.key"))
    log = key_id(load_public_key(site_key))
    forged = Checkpoint(3, bytes(32), 1, log, attacker.sign(checkpoint_message(3, bytes(32), 1)))
    reply = WitnessClient(url, TOKEN).request("POST", log, {"checkpoint": to_statement(forged)})
    assert reply.status == 403 and "pinned key" in reply.body["error"]
    assert [e.kind for e in seen] == ["pacsguard.witness.rejected", "pacsguard.witness.rejected"]
    assert _held(url, log) == []


def test_an_unreachable_witness_is_recorded_once_and_caught_up(tmp_path, site_key, monkeypatch) -> None:
    generate_key(tmp_path / "witness/keys/witness.key")  # the witness's key exists; the witness is not up yet
    monkeypatch.setenv("SITE_A_TOKEN", TOKEN)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    published: list[Event] = []
    es, delivery = _site(tmp_path, site_key, url, published=published)
    es.append(make_events(5))
    start = time.monotonic()
    es.checkpoint()
    assert time.monotonic() - start < 0.5  # the writer never waits for a witness
    es.append(make_events(5, 5))
    es.checkpoint()
    time.sleep(0.5)
    assert [e.kind for e in published] == ["pacsguard.witness.unreachable"]
    assert published[0].details["witness"] == url and len(delivery.couriers[0].queue) == 2
    cfg = _config(site_key, port=port)
    server = witness_server(cfg, lambda p: tmp_path / "witness" / p, lambda e: None)
    server.start()
    try:
        _drained(delivery)  # the courier's backoff is short here: it retries and finds the witness up
        es.close()
        assert [e.kind for e in published] == ["pacsguard.witness.unreachable", "pacsguard.witness.reachable"]
        assert [h["tree_size"] for h in _held(url, key_id(load_public_key(site_key)))] == [5, 10]
    finally:
        server.close()


def test_the_http_api_refuses_what_it_does_not_know(tmp_path, witness) -> None:
    url, _ = witness
    for path, code in (("/v1/logs/nothex/checkpoints", 404), ("/v1/logs/0123456789abcdef/checkpoints", 404),
                       ("/", 404)):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url + path, timeout=5)
        assert err.value.code == code
        assert "error" in json.loads(err.value.read())


def test_a_content_length_of_unicode_digits_is_refused_like_a_missing_one(witness) -> None:
    """"\u00b2" is a digit to str.isdigit but not to int(): once, it raised out of the handler and
    the client got no answer. It is a Content-Length missing, as any other that is not ASCII digits."""
    import socket
    from urllib.parse import urlsplit

    url, _ = witness
    where = urlsplit(url)
    with socket.create_connection((where.hostname, where.port), timeout=5) as conn:
        conn.sendall(b"POST /v1/logs/0123456789abcdef/checkpoints HTTP/1.1\r\nHost: w\r\n"
                     b"Content-Length: \xb2\r\n\r\n")
        assert conn.recv(4096).startswith(b"HTTP/1.1 411 ")


def test_a_tampered_store_is_named_through_the_witness_url(tmp_path, site_key, witness) -> None:
    url, _ = witness
    es, _ = _site(tmp_path, site_key, url)
    for batch in range(3):
        es.append(make_events(10, 10 * batch))
        es.checkpoint()
    es.close()
    with sqlite3.connect(tmp_path / "site/site.db") as conn:
        conn.execute("DELETE FROM checkpoints WHERE tree_size = 30")
    proc = run("audit", "verify", "--store", str(tmp_path / "site/site.db"), "--key", str(site_key),
               "--witness", url, "--format", "json", cwd=tmp_path, check_code=3)
    assert [f["kind"] for f in json.loads(proc.stdout)["findings"]] == ["deleted checkpoint"]


def _tls_witness(tmp: Path, site_key: Path, require_client_cert: bool) -> tuple[WitnessServer, Path, Path, Path]:
    from pacsguard.config.schema import ListenTLS
    from pacsguard.tls.certs import make_ca, make_cert

    ca, ca_key = make_ca(tmp / "pki")
    cert, key = make_cert(tmp / "pki", "witness", ca, ca_key, hosts=["127.0.0.1"], server=True)
    client, client_key = make_cert(tmp / "pki", "site", ca, ca_key, client=True)
    cfg = _config(site_key, port=0, tls=ListenTLS(cert_file=cert, key_file=key, ca_file=ca,
                                                  require_client_cert=require_client_cert))
    return witness_server(cfg, lambda p: tmp / "witness" / p, lambda e: None), ca, client, client_key


def test_https_with_mutual_tls_takes_only_a_client_with_a_certificate(tmp_path, site_key, monkeypatch) -> None:
    from pacsguard.tls.contexts import client_context

    monkeypatch.setenv("SITE_A_TOKEN", TOKEN)
    server, ca, client, client_key = _tls_witness(tmp_path, site_key, require_client_cert=True)
    url = server.start()
    assert url.startswith("https://127.0.0.1:")
    try:
        es = EventStore.open(str(tmp_path / "site.db"), key_path=site_key, create=True)
        with_cert = HttpWitness(WitnessClient(url, TOKEN, client_context(ca_file=ca, cert_file=client,
                                                                         key_file=client_key)), es.leaves)
        without = HttpWitness(WitnessClient(url, TOKEN, client_context(ca_file=ca)), es.leaves)
        published: list[Event] = []
        delivery = WitnessDelivery([with_cert, without], published.append, backoff=(0.05, 0.2))
        es.add_checkpoint_listener(delivery)
        es.append(make_events(4))
        es.checkpoint()
        deadline = time.monotonic() + 10
        while (delivery.couriers[0].queue or not published) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert delivery.couriers[0].delivered == 1 and delivery.couriers[1].delivered == 0
        assert [(e.kind, e.details["witness"]) for e in published] == [("pacsguard.witness.unreachable", url)]
        delivery.couriers[1].queue.clear()  # the one without a certificate would only retry until close
        es.close()
        out = run("audit", "verify", "--store", str(tmp_path / "site.db"), "--key", str(site_key), "--witness", url,
                  "--witness-ca", str(ca), "--witness-cert", str(client), "--witness-key", str(client_key),
                  cwd=tmp_path).stdout
        assert "1 checkpoints of this log, newest at size 4" in out and "OK" in out
    finally:
        server.close()


def test_verify_reads_an_https_witness_with_its_ca(tmp_path, site_key, monkeypatch) -> None:
    from pacsguard.tls.contexts import client_context

    monkeypatch.setenv("SITE_A_TOKEN", TOKEN)
    server, ca, _, _ = _tls_witness(tmp_path, site_key, require_client_cert=False)
    url = server.start()
    try:
        es = EventStore.open(str(tmp_path / "site.db"), key_path=site_key, create=True)
        es.add_checkpoint_listener(WitnessDelivery([HttpWitness(WitnessClient(url, TOKEN, client_context(ca_file=ca)),
                                                                es.leaves)]))
        es.append(make_events(9))
        es.close()
        out = run("audit", "verify", "--store", str(tmp_path / "site.db"), "--key", str(site_key), "--witness", url,
                  "--witness-ca", str(ca), cwd=tmp_path).stdout
        assert "1 checkpoints of this log, newest at size 9" in out and "OK" in out
        err = run("audit", "verify", "--store", str(tmp_path / "site.db"), "--key", str(site_key), "--witness", url,
                  cwd=tmp_path, check_code=2).stderr
        # Without --witness-ca the system's trust store has no CA for it: said as such, not "unreachable".
        assert f"witness {url}: peer certificate rejected" in err and "not issued by a CA of ca_file" in err, err
    finally:
        server.close()


def test_close_cuts_a_long_backoff_short_to_deliver_the_final_checkpoint(tmp_path, site_key, monkeypatch) -> None:
    generate_key(tmp_path / "witness/keys/witness.key")
    monkeypatch.setenv("SITE_A_TOKEN", TOKEN)
    port = free_port()
    es = EventStore.open(str(tmp_path / "site.db"), key_path=site_key, create=True)
    delivery = WitnessDelivery([HttpWitness(WitnessClient(f"http://127.0.0.1:{port}", TOKEN), es.leaves)],
                               backoff=(60.0, 60.0), close_timeout=5.0)
    es.add_checkpoint_listener(delivery)
    es.append(make_events(3))
    es.checkpoint()
    time.sleep(0.3)  # the first attempt failed: the courier now waits a minute
    cfg = _config(site_key, port=port)
    server = witness_server(cfg, lambda p: tmp_path / "witness" / p, lambda e: None)
    server.start()
    try:
        es.append(make_events(2, 3))
        start = time.monotonic()
        es.close()
        assert time.monotonic() - start < 5
        assert [h["tree_size"] for h in _held(server_url(server), key_id(load_public_key(site_key)))] == [3, 5]
    finally:
        server.close()


def server_url(server: WitnessServer) -> str:
    host, port = server.address
    return f"http://{host}:{port}"


def test_delivery_and_witnessed_verify_on_both_databases(target, tmp_path, site_key, witness) -> None:
    """SQLite and the real PostgreSQL: proofs read the stored leaves; a deleted checkpoint is named."""
    from pacsguard.store.verify import verify_store
    from pacsguard.store.witnessed import check_witnessed, exit_code
    from pacsguard.witness.held import read_witness
    from store_helpers import raw_sql

    url, _ = witness
    es = EventStore.open(target, key_path=site_key, create=True)
    es.add_checkpoint_listener(WitnessDelivery([HttpWitness(WitnessClient(url, TOKEN), es.leaves)]))
    for n in (5, 11, 70):
        es.append(make_events(n))
        es.checkpoint()
    es.close()
    with raw_sql(target) as cur:
        cur.execute("DELETE FROM checkpoints WHERE tree_size = 16")
    public = load_public_key(site_key)
    es = EventStore.open(target)
    try:
        report = verify_store(es, public)
        assert report.ok
        check_witnessed(report, es.checkpoints(), read_witness(url, [key_id(public)]), public, url)
    finally:
        es.close()
    assert [f.kind for f in report.findings] == ["deleted checkpoint"] and exit_code(report.findings) == 3
    assert report.witnesses == [{"source": url, "log": key_id(public), "checkpoints": 3, "newest": 86}]


def test_idle_connections_beyond_the_bound_are_closed_and_time_out(tmp_path, site_key, monkeypatch) -> None:
    import socket

    from pacsguard.witness.server import MAX_CLIENTS

    monkeypatch.setenv("SITE_A_TOKEN", TOKEN)
    cfg = _config(site_key, port=0, timeout=1.0)
    server = witness_server(cfg, lambda p: tmp_path / "witness" / p, lambda e: None)
    url = server.start()
    idle = [socket.create_connection(server.address, timeout=5) for _ in range(MAX_CLIENTS)]
    try:
        time.sleep(0.3)
        extra = socket.create_connection(server.address, timeout=5)
        # It takes the oldest idle connection's slot, then is cut off itself at the 1 s timeout.
        assert extra.recv(1) == b""
        extra.close()
        for sock in idle:
            assert sock.recv(1) == b""  # each idle one is cut off after the 1 s timeout
        assert _held(url, key_id(load_public_key(site_key))) == []  # and the witness answers again
    finally:
        for sock in idle:
            sock.close()
        server.close()
