"""Outside round 9, wave 2 (W1, issue #18): the RESTful ATNA endpoint given only part of its TLS
settings (cert_file without key_file, the reverse, or a ca_file alone) served plain HTTP, its
bearer token in the clear, and `config check` said OK. HTTPS (RFC 9110 4.2.2) needs the server's
certificate and key: such a block is refused when the configuration is read, naming atna.http and
what is missing, as the syslog TLS listener's block is. Loopback 127.0.111.0/24."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pacsguard.config.loader import ConfigError, load_config
from pacsguard.tls import make_ca, make_cert

HOST = "127.0.111.4"
PACSGUARD = Path(sys.executable).with_name("pacsguard")


def _port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _config(tmp_path: Path, port: int, **tls: str) -> Path:
    """A pacsguard.yaml whose atna.http block has the token and the TLS keys ``tls`` names."""
    pki = tmp_path / f"pki-{port}"
    ca, ca_key = make_ca(pki, "ATNA W1 CA", 2)
    cert, key = make_cert(pki, "localhost", ca, ca_key, hosts=["localhost", HOST], server=True, days=1)
    files = {"cert_file": str(cert), "key_file": str(key), "ca_file": str(ca)}
    http = {"host": HOST, "port": port, "token": {"env": "ATNA_W1_TOKEN"}, **{k: files[k] for k in tls}}
    path = tmp_path / f"pacsguard-{port}.yaml"
    path.write_text(yaml.safe_dump({"store": {"url": str(tmp_path / "store.db"),
                                              "signing_key": str(tmp_path / "keys" / "store.key")},
                                    "atna": {"enabled": True, "http": http}}))
    return path


HALVES = [({"cert_file": "x"}, "cert_file given without key_file"),
          ({"key_file": "x"}, "key_file given without cert_file"),
          ({"ca_file": "x"}, "ca_file given without cert_file and key_file"),
          ({"cert_file": "x", "ca_file": "x"}, "cert_file, ca_file given without key_file")]


@pytest.mark.parametrize(("given", "said"), HALVES)
def test_part_of_https_is_refused_when_the_configuration_is_read(tmp_path: Path, given: dict[str, str],
                                                                  said: str) -> None:
    path = _config(tmp_path, _port(), **given)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = [(p.key, p.message) for p in caught.value.problems]
    assert any(key == "atna.http" and said in message and "plain HTTP" in message
               for key, message in problems), problems


def test_serve_refuses_a_cert_without_its_key_and_curl_finds_no_plain_endpoint(tmp_path: Path) -> None:
    """The administrator's view: `config check` and `serve` stop with exit 2 and one line naming
    atna.http; nothing listens, so curl cannot send the token in the clear (before, it was
    answered over plain HTTP)."""
    curl = shutil.which("curl")
    assert curl, "curl is needed (Debian package curl)"
    port = _port()
    path = _config(tmp_path, port, cert_file="x")
    env = {**os.environ, "ATNA_W1_TOKEN": "w1-token-0123456789abcdef"}
    checked = subprocess.run([str(PACSGUARD), "config", "check", "-c", str(path)], capture_output=True,
                             text=True, timeout=20, env=env)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert "atna.http: cert_file given without key_file" in checked.stderr, checked.stderr
    served = subprocess.Popen([str(PACSGUARD), "serve", "-c", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        out, err = served.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        reached = subprocess.run([curl, "-sS", "-m", "5", "-H", f"Authorization: Bearer {env['ATNA_W1_TOKEN']}",
                                  f"http://{HOST}:{port}/metadata"], capture_output=True, text=True, timeout=10)
        served.kill()
        served.communicate(timeout=10)
        pytest.fail(f"serve ran with half a TLS block; plain HTTP answered curl: {reached.stdout[:120]!r}")
    assert served.returncode == 2, out + err
    assert "atna.http" in err and "key_file" in err and "Traceback" not in err, err
    refused = subprocess.run([curl, "-sS", "-m", "5", f"http://{HOST}:{port}/metadata"], capture_output=True,
                             text=True, timeout=10)
    assert refused.returncode != 0, refused.stdout


def test_both_halves_or_none_are_still_read(tmp_path: Path) -> None:
    """The refusal is only of half a block: cert_file and key_file together (HTTPS), or neither
    (plain HTTP on loopback, with the token), are read as before."""
    whole = load_config(_config(tmp_path, _port(), cert_file="x", key_file="x", ca_file="x")).config.atna.http
    assert whole is not None and whole.cert_file is not None and whole.key_file is not None
    plain = load_config(_config(tmp_path, _port())).config.atna.http
    assert plain is not None and plain.cert_file is None and plain.token is not None
