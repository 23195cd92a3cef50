"""Outside round 9, area G: every TLS file of pacsguard.yaml is checked by `config check` and named
by its key, as docs/configuration.md promises ("an error naming the key path and what was expected").

Before, `config check` loaded only the gateway routes' TLS files: a missing certificate of the ATNA
listeners, the outbound feed, the syslog sink, the store's witnesses or the witness service passed
as OK, and `serve` (or `witness serve`) then stopped with "cert file ...: file does not exist",
naming no key. docs/witness.md's own example (`cert_file: witness.pem`, where `pacsguard tls
make-cert witness` writes witness.crt) ran into exactly that.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pacsguard.tls import make_ca, make_cert

HOST = "127.0.107.9"  # this helper's loopback range; nothing listens: every case fails before binding
STORE = "store: {url: var/pacsguard.db, signing_key: var/keys/store-signing.key}\n"


def _pacsguard(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacsguard.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=60)


def _check(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pacsguard.yaml").write_text(STORE + body)
    return _pacsguard("config", "check", "pacsguard.yaml", cwd=tmp_path)


# One block of each kind that holds TLS files, with a file that is not there.
MISSING = {
    "atna.tls": f"atna:\n  enabled: true\n  tls: {{host: {HOST}, port: 16514, cert_file: nope.crt, "
                "key_file: nope.key}\n",
    "atna.http": f"atna:\n  enabled: true\n  http: {{host: {HOST}, port: 18089, token: {{env: T}}, "
                 "cert_file: nope.crt, key_file: nope.key}\n",
    "atna.outbound": f"atna:\n  enabled: true\n  outbound: {{host: {HOST}, ca_file: nope.crt}}\n",
    "sinks.syslog": f"sinks:\n  syslog: {{host: {HOST}, port: 16515, ca_file: nope.crt}}\n",
    "store.witnesses.0": f"store:\n  url: var/pacsguard.db\n  witnesses:\n    - url: https://{HOST}:18471\n"
                         "      token: {env: T}\n      ca_file: nope.crt\n",
    "store.witnesses.0.syslog": f"store:\n  url: var/pacsguard.db\n  witnesses:\n"
                                f"    - syslog: {{host: {HOST}, ca_file: nope.crt}}\n",
    "witness.tls": "witness:\n  enabled: true\n  tls: {cert_file: witness.pem, key_file: witness.key}\n"
                   "  logs:\n    - {name: gw1, public_key: gw1.pub, token: {env: T}}\n",
}


@pytest.mark.parametrize("key", sorted(MISSING))
def test_config_check_names_the_key_of_a_missing_tls_file(tmp_path: Path, key: str) -> None:
    body = MISSING[key]
    if body.startswith("store:"):  # the store section itself, with its witnesses
        (tmp_path / "pacsguard.yaml").write_text(body)
        done = _pacsguard("config", "check", "pacsguard.yaml", cwd=tmp_path)
    else:
        done = _check(tmp_path, body)
    assert done.returncode == 2, done.stdout + done.stderr
    err = " ".join(done.stderr.split())
    assert f"pacsguard.yaml: {key}: " in err and "does not exist" in err, err
    section = key.split(".", 1)[0]
    assert f"{section} (" in err and "1 problem" in err, err
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("body", [
    # A section turned off is not started by serve, so its files are not loaded either.
    f"atna:\n  enabled: false\n  tls: {{host: {HOST}, port: 16514, cert_file: nope.crt, key_file: nope.key}}\n",
    # A collector over plain TCP uses no CA file.
    f"sinks:\n  syslog: {{host: {HOST}, port: 16515, transport: tcp, ca_file: nope.crt}}\n",
    # An HTTP endpoint with a token only is not TLS.
    f"atna:\n  enabled: true\n  http: {{host: {HOST}, port: 18089, token: {{env: T}}}}\n",
], ids=["disabled", "tcp-collector", "plain-http"])
def test_blocks_that_use_no_tls_file_are_not_loaded(tmp_path: Path, body: str) -> None:
    done = _check(tmp_path, body)
    assert done.returncode == 0, done.stdout + done.stderr


def test_real_certificates_pass_and_a_key_of_another_certificate_is_named(tmp_path: Path) -> None:
    ca_cert, ca_key = make_ca(tmp_path / "pki", "Test CA")
    make_cert(tmp_path / "pki", "repo", ca_cert, ca_key, hosts=[HOST], server=True, client=True)
    make_cert(tmp_path / "pki", "other", ca_cert, ca_key, hosts=[HOST], server=True, client=True)
    good = (f"atna:\n  enabled: true\n  tls: {{host: {HOST}, port: 16514, cert_file: pki/repo.crt, "
            "key_file: pki/repo.key, ca_file: pki/ca.crt, require_client_cert: true}\n"
            f"  outbound: {{host: {HOST}, ca_file: pki/ca.crt, cert_file: pki/repo.crt, key_file: pki/repo.key}}\n"
            f"sinks:\n  syslog: {{host: {HOST}, ca_file: pki/ca.crt}}\n")
    done = _check(tmp_path, good)
    assert done.returncode == 0, done.stdout + done.stderr
    done = _check(tmp_path, good.replace("key_file: pki/repo.key, ca_file", "key_file: pki/other.key, ca_file"))
    assert done.returncode == 2, done.stdout + done.stderr
    err = " ".join(done.stderr.split())
    assert "pacsguard.yaml: atna.tls: " in err and "pki/other.key" in err, err
    assert "atna.outbound" not in err, err


def test_serve_names_the_key_before_it_starts_anything(tmp_path: Path) -> None:
    (tmp_path / "pacsguard.yaml").write_text(STORE + MISSING["atna.tls"])
    done = _pacsguard("serve", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    err = " ".join(done.stderr.split())
    assert "pacsguard.yaml: atna.tls: cert file" in err and "nope.crt: file does not exist" in err, err
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "var" / "pacsguard.db").exists()  # refused before the store was opened


def test_witness_serve_names_witness_tls(tmp_path: Path) -> None:
    (tmp_path / "pacsguard.yaml").write_text(STORE + MISSING["witness.tls"])
    done = _pacsguard("witness", "serve", cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    err = " ".join(done.stderr.split())
    assert "pacsguard.yaml: witness.tls: cert file" in err and "witness.pem: file does not exist" in err, err
