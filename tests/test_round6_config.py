"""Round 6, configuration and keys: listeners compared by the addresses they bind, and a key
that `deid keygen` could not finish or announce is not left behind."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pacsguard.config import ConfigError, parse_config

ROUTE = """    - name: {name}
      listen: {{host: "{host}", port: {port}, ae_title: GW}}
      upstream: {{host: 127.0.63.9, port: 22900, ae_title: PACS}}
"""


def routes(*listeners: tuple[str, int]) -> str:
    """A gateway section with one route (r0, r1, ...) per (host, port) listener."""
    return "gateway:\n  routes:\n" + "".join(ROUTE.format(name=f"r{n}", host=host, port=port)
                                              for n, (host, port) in enumerate(listeners))


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "p.yaml")
    return [str(p) for p in info.value.problems]


def _resolves(host: str) -> set[str]:
    return {str(info[4][0]) for info in socket.getaddrinfo(host, 22001, type=socket.SOCK_STREAM,
                                                           flags=socket.AI_PASSIVE)}


# --- two listeners on one address and port --------------------------------------------------------

def test_localhost_and_its_address_on_one_port_clash() -> None:
    """`localhost:22001` and `127.0.0.1:22001` passed `config check`; `serve` then failed at bind."""
    assert "127.0.0.1" in _resolves("localhost")  # the premise: this host's resolver says so
    [found] = problems(routes(("localhost", 22001), ("127.0.0.1", 22001)))
    assert found.startswith("gateway: routes 'r0' and 'r1' both listen on port 22001"), found
    assert "gateway.routes.0.listen.host is localhost" in found, found
    assert "gateway.routes.1.listen.host is 127.0.0.1" in found and "both are 127.0.0.1" in found, found


@pytest.mark.parametrize(("first", "second"), [("::1", "0:0:0:0:0:0:0:1"), ("LOCALHOST", "localhost."),
                                               ("127.0.0.1", "localhost.")])
def test_two_spellings_of_one_address_clash(first: str, second: str) -> None:
    [found] = problems(routes((first, 22002), (second, 22002)))
    assert "both listen on port 22002" in found and "gateway.routes.1.listen.host" in found, found


def test_localhost_and_ipv6_loopback_clash_where_localhost_is_ipv6_too() -> None:
    """`::1` vs `localhost`: a clash exactly when this host's resolver gives localhost ::1."""
    text = routes(("localhost", 22003), ("::1", 22003))
    if "::1" in _resolves("localhost"):
        [found] = problems(text)
        assert "both are ::1" in found, found
    else:
        parse_config(text)


def test_distinct_addresses_and_ports_still_pass() -> None:
    parse_config(routes(("127.0.63.1", 22004), ("127.0.63.2", 22004), ("localhost", 22005),
                        ("127.0.63.1", 22005)))


def test_a_name_that_does_not_resolve_is_compared_as_written() -> None:
    """No resolver answer (a name of another site's DNS): the same name, however capitalised,
    still clashes; the check never fails for want of DNS."""
    from pacsguard.config.schema import listen_addresses

    name = "pacsguard-round6-no-such-host.invalid"  # RFC 6761 6.4: never resolves
    assert listen_addresses(name, 22006) == frozenset({name})
    [found] = problems(routes((name, 22006), (name.upper() + ".", 22006)))
    assert "both listen on port 22006" in found, found


def test_config_check_names_both_keys_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(routes(("localhost", 22007), ("127.0.0.1", 22007)))
    done = subprocess.run([sys.executable, "-m", "pacsguard.cli", "config", "check", str(config)], cwd=tmp_path,
                          text=True, capture_output=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    err = " ".join(done.stderr.split())
    assert "gateway.routes.0.listen.host is localhost" in err and "gateway.routes.1.listen.host is 127.0.0.1" in err
    assert "Traceback" not in done.stderr


# --- deid keygen: all or nothing ------------------------------------------------------------------

def _keygen(path: Path, *, stdout: int | None = subprocess.PIPE, max_file_bytes: int | None = None,
            ) -> subprocess.CompletedProcess[str]:
    """`pacsguard deid keygen PATH`, with standard output ``stdout`` and, when given, files this
    process writes limited to ``max_file_bytes`` (RLIMIT_FSIZE: a write past it fails with EFBIG,
    as on a disk that fills while the key is written)."""
    def limit() -> None:
        if max_file_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))

    return subprocess.run([sys.executable, "-m", "pacsguard.cli", "deid", "keygen", str(path)],
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120, preexec_fn=limit,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_keygen_to_an_output_that_cannot_be_written_keeps_no_key(tmp_path: Path) -> None:
    """`keygen K > /dev/full` reported "No space left on device" (exit 2) and left K, a key
    nobody was told the fingerprint of."""
    key = tmp_path / "deid.key"
    with open("/dev/full", "w") as full:
        done = _keygen(key, stdout=full.fileno())
    assert done.returncode == 2, done.stderr
    assert "standard output" in done.stderr and "no key file was kept" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr
    assert not key.exists() and list(tmp_path.iterdir()) == []


def test_keygen_on_a_disk_that_fills_leaves_no_partial_key(tmp_path: Path) -> None:
    """A write cut short (RLIMIT_FSIZE of 10 bytes: EFBIG) left the first 10 hex digits as the key file."""
    key = tmp_path / "deid.key"
    done = _keygen(key, max_file_bytes=10)
    assert done.returncode == 2, done.stderr
    assert "cannot write the key" in done.stderr and "no key file was kept" in done.stderr, done.stderr
    assert not key.exists() and list(tmp_path.iterdir()) == []


def test_keygen_that_works_prints_the_fingerprint_of_the_key_it_kept(tmp_path: Path) -> None:
    from pacsguard.deid.keys import load_key

    key = tmp_path / "keys" / "deid.key"
    done = _keygen(key)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{key}: key {load_key(key).fingerprint}"
    assert key.stat().st_mode & 0o777 == 0o600
    again = _keygen(key)
    assert again.returncode == 2 and "never overwritten" in again.stderr and key.exists()


def test_a_key_that_cannot_be_taken_back_is_named_complete(tmp_path: Path) -> None:
    """Printing failed, then the folder turned read-only (ext4's errors=remount-ro; here a read-only
    bind mount, root only) before the key could be removed: the error says plainly that the key in
    the file is whole and on disk, with its fingerprint, instead of leaving it unmentioned."""
    from pacsguard.deid.keys import KeyProblem, generate_key, load_key

    folder = tmp_path / "keys"
    folder.mkdir()
    key = folder / "deid.key"
    mounted = False

    def announce(_: object) -> None:
        nonlocal mounted
        subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True, timeout=30)
        mounted = True
        subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], check=True, timeout=30)
        raise OSError(28, "cannot write its fingerprint to standard output (No space left on device)")

    try:
        with pytest.raises(KeyProblem) as info:
            generate_key(key, announce=announce)
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True, timeout=30)
    message = str(info.value)
    assert f"complete and on disk (key {load_key(key).fingerprint})" in message, message
    assert "Read-only file system" in message and "use it, or delete it" in message, message
