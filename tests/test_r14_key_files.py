"""A key file is read up to 64 KiB: `--key /dev/zero` grew to 23 GB until the kernel ended it (an
outside probe), and a large file of something else ended in an internal error under a memory
limit. Both are now a usage error naming the key (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from store_helpers import make_events, new_store
from test_cli import run


@pytest.mark.parametrize("given", ["/dev/zero", "big.pem"])
def test_a_key_file_past_64_kib_is_refused_by_name(tmp_path: Path, given: str) -> None:
    store, _ = new_store(str(tmp_path / "s.db"), tmp_path)
    store.append(make_events(3))
    store.close()
    big = tmp_path / "big.pem"
    big.write_bytes(b"-----BEGIN PUBLIC KEY-----\n" + b"A" * 200_000)
    key = given if given.startswith("/") else str(big)
    done = run("audit", "verify", "--store", str(tmp_path / "s.db"), "--key", key, cwd=tmp_path, check_code=2)
    assert f"--key: {key}: more than 64 KiB, not a key file" in done.stderr, done.stderr
