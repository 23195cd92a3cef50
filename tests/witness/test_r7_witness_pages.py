"""Round 7: a witness service holding more checkpoints than one answer may carry.

A checkpoint a minute makes 2,000 in a day and a half; the GET answer listing them all outgrew the
1 MiB a client reads, and `audit verify --witness URL` failed for good ("answer larger than
1048576 bytes"). The client now reads the list page by page (`?from=SIZE`)."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pacsguard.config.schema import SecretRef
from pacsguard.store import EventStore
from pacsguard.store.keys import generate_key, key_id, load_private_key, public_path
from pacsguard.store.merkle import Frontier
from pacsguard.store.store import Checkpoint, checkpoint_message
from pacsguard.witness.build import witness_server
from pacsguard.witness.config import WitnessedLog, WitnessServiceConfig
from pacsguard.witness.cosign import cosign
from pacsguard.witness.http import WitnessClient
from pacsguard.witness.ledger import Held
from pacsguard.witness.server import WitnessServer
from store_helpers import make_events
from test_cli import run

HELD = 2300  # about 1.1 MB as one answer: more than a client reads (witness/http.py MAX_BODY)


@pytest.fixture
def witness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, WitnessServer]]:
    """A store of HELD events and a witness service whose ledger holds a checkpoint at every size
    1..HELD, each signed with the store's key and countersigned, as if it had been sent each one."""
    site = generate_key(tmp_path / "site.key")
    es = EventStore.open(str(tmp_path / "site.db"), key_path=site, create=True)
    es.append(make_events(HELD))
    es.checkpoint()
    leaves = es.leaves(0, HELD)
    es.close()
    log_key, witness_key = load_private_key(site), load_private_key(generate_key(tmp_path / "w" / "witness.key"))
    log = key_id(log_key.public_key())
    frontier, lines, t = Frontier(), [], 1_780_000_000_000_000
    for size, leaf in enumerate(leaves, 1):
        frontier.append(leaf)
        root, when = frontier.root(), t + size * 60_000_000
        cp = Checkpoint(size, root, when, log, log_key.sign(checkpoint_message(size, root, when)))
        held = Held(cp, when + 1000, cosign(witness_key, cp, when + 1000), key_id(witness_key.public_key()))
        lines.append(json.dumps(held.to_dict(), sort_keys=True))
    (tmp_path / "w" / "held").mkdir(mode=0o700)
    (tmp_path / "w" / "held" / f"{log}.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("SITE_TOKEN", "t0ken")
    cfg = WitnessServiceConfig.model_validate({
        "enabled": True, "port": 0, "storage": Path("held"), "signing_key": Path("witness.key"),
        "logs": [WitnessedLog(name="site", public_key=public_path(site), token=SecretRef(env="SITE_TOKEN"))]})
    server = witness_server(cfg, lambda p: tmp_path / "w" / p, lambda event: None)
    url = server.start()
    try:
        yield url, log, server
    finally:
        server.close()


def test_verify_reads_every_checkpoint_of_a_long_held_list(tmp_path: Path,
                                                           witness: tuple[str, str, WitnessServer]) -> None:
    url, log, _ = witness
    held = WitnessClient(url).held(log)
    assert [h["tree_size"] for h in held] == list(range(1, HELD + 1))
    # The store signed only its newest checkpoint: the witness's others are "deleted" (exit 3),
    # which verify can say only after reading every page.
    out = " ".join(run("audit", "verify", "--store", str(tmp_path / "site.db"), "--key", str(tmp_path / "site.key"),
                       "--witness", url, cwd=tmp_path, check_code=3).stdout.split())
    assert f"{HELD} checkpoints of this log, newest at size {HELD}" in out
    assert f"holds {HELD - 1} checkpoint(s) the store lacks" in out


def test_pages_and_the_whole_list(witness: tuple[str, str, WitnessServer]) -> None:
    url, log, server = witness
    base = WitnessClient(url).checkpoints_url(log)

    def get(query: str) -> dict:
        with urllib.request.urlopen(base + query, timeout=10) as resp:
            return json.loads(resp.read())

    page = get("?from=1001")
    sizes = [h["tree_size"] for h in page["checkpoints"]]
    assert sizes[0] == 1001 and len(sizes) == 1000 and page["next"] == 2001
    last = get("?from=2001")
    assert [h["tree_size"] for h in last["checkpoints"]][-1] == HELD and "next" not in last
    assert len(get("")["checkpoints"]) == HELD  # without ?from: the whole list, as a saved copy has it
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(base + "?from=-3", timeout=10)
    assert refused.value.code == 400 and "expected a tree size" in json.loads(refused.value.read())["error"]
    assert os.environ["SITE_TOKEN"] == "t0ken"  # reading needed no token
    # Whole lists (no token needed, the whole ledger in memory) are made two at a time; pages are not bound.
    slots = server.httpd.whole_lists
    assert slots.acquire(blocking=False) and slots.acquire(blocking=False)
    try:
        with pytest.raises(urllib.error.HTTPError) as busy:
            urllib.request.urlopen(base, timeout=10)
        assert busy.value.code == 503 and "?from=0" in json.loads(busy.value.read())["error"]
        assert get("?from=0")["next"] == 1001
    finally:
        slots.release()
        slots.release()
    assert len(get("")["checkpoints"]) == HELD
