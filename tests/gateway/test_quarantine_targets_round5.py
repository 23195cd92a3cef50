"""`gateway quarantine add` took targets that match no device and said "quarantined" (an outside
tester, round 5): a network, an address with an octet past 255, AE@host with such a host, an AE
title of 17 characters or with a backslash. Each is now a usage error naming what is wrong."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pacsguard.gateway.quarantine import check_target

BAD = {"127.0.0.0/8": "is a network", "10.30.1.0/24": "is a network", "10.30.1.256": "not an IP address",
       "CT9@10.0.0.999": "after the @ is not an IP address", "ABCDEFGHIJKLMNOPQ": "1-16",
       "A\\B": "without backslash", "": "1-16"}


@pytest.mark.parametrize("target", sorted(BAD))
def test_a_target_that_can_match_no_device_is_refused(target: str) -> None:
    with pytest.raises(ValueError, match=BAD[target]):
        check_target(target)


@pytest.mark.parametrize("target", ["10.30.1.7", "::1", "fe80::1", "CT1", "CT1@10.30.1.7", "MR@LAB@10.0.0.1",
                                    "PACS.MAIN"])
def test_addresses_titles_and_pairs_pass(target: str) -> None:
    assert check_target(target) == target


def test_the_command_says_so_and_records_nothing(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    done = subprocess.run([sys.executable, "-m", "pacsguard.cli", "gateway", "quarantine", "add", "127.0.0.0/8",
                           "--store", str(store)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2 and "is a network" in done.stderr, (done.returncode, done.stderr)
    assert not store.exists() or store.stat().st_size == 0 or "quarantined" not in done.stdout


@pytest.mark.parametrize(("typed", "kept"), [("127.0.0.1 ", "127.0.0.1"), ("::ffff:127.0.0.1", "127.0.0.1"),
                                             ("CT1@::FFFF:10.0.0.7", "CT1@10.0.0.7"),
                                             ("2001:DB8:0:0:0:0:0:1", "2001:db8::1")])
def test_an_address_is_kept_in_the_spelling_connections_report(typed: str, kept: str) -> None:
    """`quarantine add "127.0.0.1 "` (pasted) and `::ffff:127.0.0.1` said "quarantined" and blocked
    nothing: the first was taken for an AE title, the second never equals a peer's 127.0.0.1."""
    assert check_target(typed) == kept


def test_a_quarantine_matches_a_peer_whatever_its_address_spelling() -> None:
    from datetime import datetime, timezone

    from pacsguard.events import Event
    from pacsguard.gateway.quarantine import ADDED, QuarantineList

    q = QuarantineList()
    q.apply(Event(kind=ADDED, component="cli", details={"target": "::ffff:10.0.0.7"}))
    now = datetime.now(timezone.utc)
    assert q.match("10.0.0.7", None, now) is not None
    assert q.match("::ffff:10.0.0.7", "CT1", now) is not None
    assert q.match("10.0.0.8", None, now) is None


def test_spaces_around_an_ae_title_are_not_part_of_it() -> None:
    """'CTC @127.0.0.1' was kept with its space and matched no association from CTC (a re-probe)."""
    assert check_target("CTC @127.0.0.1") == "CTC@127.0.0.1"
    assert check_target(" CT2 ") == "CT2"


def test_remove_takes_the_target_in_any_spelling_add_took(tmp_path: Path) -> None:
    store = str(tmp_path / "s.db")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "pacsguard.cli", "gateway", "quarantine", *args, "--store",
                               store], capture_output=True, text=True, timeout=60, cwd=tmp_path)

    from pacsguard.store import EventStore
    from pacsguard.store.keys import generate_key

    generate_key(tmp_path / "k.key")
    EventStore.open(store, key_path=tmp_path / "k.key", create=True).close()
    for typed in ("CT1@2001:DB8::1", " CT2", "CT3@::ffff:10.0.0.3"):
        assert cli("add", typed).returncode == 0
        removed = cli("remove", typed)
        assert removed.returncode == 0, (typed, removed.stderr)
    assert "no device is quarantined" in cli("list").stdout
    assert cli("remove", "CT9").returncode == 1
