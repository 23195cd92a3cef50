"""Outside round 8, wave 3: a checkpoint key file given wrong. Every command that reads one
(`audit verify --key`, `audit patient --key`, `audit prove --key`, `atna listen --key`, `serve`
with `store.signing_key`) exits 2 with one line naming the option or configuration key, the file,
and what the file is instead: a folder, missing, empty, not PEM, a certificate, a public key
where the private one signs (RFC 8032 keys in PKCS #8 / SubjectPublicKeyInfo, RFC 8410), or a
key of another type. It used to be a bare "[Errno 21] Is a directory: 'x'", or the
cryptography library's own text with a link to its FAQ, naming neither the option nor the fix."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from pacsguard.store.errors import StoreError
from pacsguard.store.keys import load_private_key
from test_cli import run


def _pem_private(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def _wrong_keys(folder: Path) -> dict[str, tuple[Path, str]]:
    """Each wrong file, and the words its error must hold."""
    (folder / "keys").mkdir()
    (folder / "empty.pub").write_bytes(b"\n")
    (folder / "junk.pub").write_bytes(b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI not-a-pem-key\n")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    (folder / "ec.pub").write_bytes(ec_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    # A certificate where its public key is wanted: made by the real openssl.
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ed25519", "-nodes", "-subj", "/CN=pacs", "-days", "1",
                    "-keyout", str(folder / "cert.key"), "-out", str(folder / "cert.pem")],
                   check=True, capture_output=True, timeout=20)
    return {
        "folder": (folder / "keys", "a folder, not a key file"),
        "missing": (folder / "nothing.pub", "not found"),
        "empty": (folder / "empty.pub", "an empty file, not a key"),
        "not PEM": (folder / "junk.pub", "not a PEM file"),
        "certificate": (folder / "cert.pem", "a certificate, not"),
        "RSA": (_pem_private(rsa.generate_private_key(65537, 2048), folder / "rsa.key"),
                "must be Ed25519, found a key of type RSA"),
        "EC": (folder / "ec.pub", "must be Ed25519, found a key of type EC"),
    }


def _one_clear_line(proc: subprocess.CompletedProcess[str], role: str, path: Path, words: str) -> None:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.stdout, err)
    assert len(err.splitlines()) == 1, err
    assert f"{role}: {path}" in err and words in err, err
    assert "Errno" not in err and "cryptography.io" not in err and "Traceback" not in err, err


def test_audit_verify_names_what_its_key_file_is(tmp_path: Path) -> None:
    run("init", cwd=tmp_path)
    for what, (path, words) in _wrong_keys(tmp_path).items():
        proc = run("audit", "verify", "--key", str(path), cwd=tmp_path, check_code=None)
        _one_clear_line(proc, "--key", path, words)
        assert what


def test_audit_patient_and_prove_name_their_key_files(tmp_path: Path) -> None:
    run("init", cwd=tmp_path)
    wrong = _wrong_keys(tmp_path)
    public = tmp_path / "var/keys/store-signing.key.pub"
    for path, words in (wrong["folder"], wrong["RSA"], wrong["certificate"],
                        (public, "a public key; the private signing key is wanted")):
        proc = run("audit", "patient", "P1^^^HOSP", "--key", str(path), "--format", "json", cwd=tmp_path,
                   check_code=None)
        _one_clear_line(proc, "--key", path, words)
    # `audit prove --key FOLDER` keeps the previous wave's words; a file of the wrong kind names --key.
    proc = run("audit", "patient", "P1^^^HOSP", "--format", "json", cwd=tmp_path)
    (tmp_path / "report.json").write_text(proc.stdout)
    proc = run("audit", "prove", "report.json", "--key", str(wrong["folder"][0]), cwd=tmp_path, check_code=2)
    assert f"{wrong['folder'][0]}: a directory, not a public key" in proc.stderr
    for what in ("empty", "EC", "not PEM"):
        path, words = wrong[what]
        _one_clear_line(run("audit", "prove", "report.json", "--key", str(path), cwd=tmp_path, check_code=None),
                        "--key", path, words)


@pytest.mark.parametrize("given", ["folder", "public", "RSA", "empty"])
def test_serve_names_a_wrong_store_signing_key(tmp_path: Path, given: str) -> None:
    """The key is read before any listener opens: one line naming store.signing_key, exit 2 (the
    configuration error of docs/cli.md)."""
    run("init", cwd=tmp_path)
    wrong = _wrong_keys(tmp_path)
    public = tmp_path / "var/keys/store-signing.key.pub"
    path, words = (public, "a public key; the private signing key is wanted") if given == "public" else wrong[given]
    config = tmp_path / "pacsguard.yaml"
    text, n = re.subn(r"(?m)^(\s*signing_key:).*$", rf"\1 {path}", config.read_text())
    assert n == 1
    config.write_text(text)
    _one_clear_line(run("serve", cwd=tmp_path, check_code=None), "store.signing_key", path, words)


def test_atna_listen_names_a_wrong_key(tmp_path: Path) -> None:
    wrong = _wrong_keys(tmp_path)
    for what in ("folder", "certificate", "RSA"):
        path, words = wrong[what]
        proc = run("atna", "listen", "--tcp", "127.0.96.11:0", "--store", str(tmp_path / "a.db"),
                   "--key", str(path), cwd=tmp_path, check_code=None)
        _one_clear_line(proc, "--key", path, words)


def test_an_encrypted_private_key_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "enc.key"
    path.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(StoreError, match=r"^store\.signing_key: .*enc\.key: an encrypted private key; give it "
                                         r"unencrypted"):
        load_private_key(path, role="store.signing_key")


def test_the_witness_service_names_its_wrong_key_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The `witness:` section's keys, as `serve` reads them: a log's pinned public key that is a
    folder, and a countersigning key that is a public key, each named by its configuration key."""
    from pacsguard.witness.build import witness_server
    from pacsguard.witness.config import WitnessServiceConfig

    run("init", cwd=tmp_path)
    wrong = _wrong_keys(tmp_path)
    public = tmp_path / "var/keys/store-signing.key.pub"
    monkeypatch.setenv("R8H_WITNESS_TOKEN", "t0ken")
    token = {"env": "R8H_WITNESS_TOKEN"}
    for logs_key, signing, role, path, words in (
            (wrong["folder"][0], tmp_path / "w.key", "witness.logs.0.public_key", wrong["folder"][0],
             "a folder, not a key file"),
            (public, public, "witness.signing_key", public, "a public key; the private signing key is wanted")):
        cfg = WitnessServiceConfig.model_validate({
            "enabled": True, "host": "127.0.96.12", "port": 0, "storage": tmp_path / "held", "signing_key": signing,
            "logs": [{"name": "site", "public_key": logs_key, "token": token}]})
        with pytest.raises(StoreError) as caught:
            witness_server(cfg, lambda p: p, lambda event: None)
        assert str(caught.value).startswith(f"{role}: {path}: {words}"), caught.value
