"""A client certificate whose subject holds two Common Names (an outside tester, round 5):
policy.cert_subjects ["ct1"] admitted [CN=ct1, CN=evil] (RFC 4514 "CN=evil,CN=ct1": the most
specific CN is "evil") and the multi-valued RDN CN=ct1+CN=evil, because only the first CN in DER
order was compared. A bare CN now names only a subject with exactly one CN."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tls_helpers import peer_as_described

CN = NameOID.COMMON_NAME
SUBJECTS = {
    "one": x509.Name([x509.NameAttribute(CN, "ct1")]),
    "two-rdns": x509.Name([x509.NameAttribute(CN, "ct1"), x509.NameAttribute(CN, "evil")]),
    "multi-valued": x509.Name([x509.RelativeDistinguishedName([x509.NameAttribute(CN, "ct1"),
                                                               x509.NameAttribute(CN, "evil")])]),
}


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
    path.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                           serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _issue(folder: Path, subject: x509.Name) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(CN, "Hospital CA")])

    def build(name: x509.Name, public: ec.EllipticCurvePublicKey, ca: bool) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name).issuer_name(ca_name).public_key(public)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca, None), True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
        return builder.sign(ca_key, hashes.SHA256())

    _write(folder / "ca", ca_key, build(ca_name, ca_key.public_key(), True))
    _write(folder / "leaf", key, build(subject, key.public_key(), False))


def _peer(folder: Path) -> dict[str, object]:
    """describe_peer of a client presenting folder/leaf.crt, seen by a server (the same cert)."""
    return peer_as_described(folder / "ca.crt", folder / "leaf.crt", folder / "leaf.crt")


@pytest.mark.parametrize("shape", sorted(SUBJECTS))
def test_a_bare_cn_names_only_a_subject_with_one_cn(tmp_path: Path, shape: str) -> None:
    _issue(tmp_path, SUBJECTS[shape])
    peer = _peer(tmp_path)
    assert peer["subject"] == SUBJECTS[shape].rfc4514_string(), peer
    assert peer["subject_cn"] == ("ct1" if shape == "one" else None), peer


def allow_list(*entries: str) -> Callable[[str, str | None], str]:
    """The verdict (its action's name) of a route's `cert_subjects` on a certificate's subject and CN."""
    from types import SimpleNamespace

    from pacsguard.config.schema import Route
    from pacsguard.gateway.checks.ae_titles import AETitlesCheck

    route = Route.model_validate({"name": "r", "listen": {"host": "127.0.0.1", "port": 11112, "ae_title": "GW"},
                                  "upstream": {"host": "127.0.0.1", "port": 104, "ae_title": "PACS"},
                                  "policy": {"cert_subjects": list(entries)}})
    check = AETitlesCheck(route)
    rq = SimpleNamespace(called_ae_title="GW", calling_ae_title="CT")

    def verdict(subject: str, cn: str | None) -> str:
        assoc = SimpleNamespace(cert={"subject": subject, "subject_cn": cn})
        return check.on_associate(assoc, rq, []).action.name  # type: ignore[arg-type]

    return verdict


def test_the_allow_list_refuses_a_subject_with_two_cns_unless_listed_whole() -> None:
    verdict = allow_list("ct1", "CN=evil,CN=ct1")
    assert verdict("CN=ct1", "ct1") == "ALLOW"
    assert verdict("CN=ct1+CN=evil", None) != "ALLOW"
    assert verdict("CN=evil,CN=ct1", None) == "ALLOW"  # listed whole


def test_a_cn_that_spells_a_subject_is_no_subject() -> None:
    """cert_subjects ["CN=ct1,O=Radiology"] admitted a certificate whose one CN is that text (a
    re-probe, round 5): an entry with "=" matches only a subject, one without only a CN."""
    verdict = allow_list("CN=ct1,O=Radiology", "ct2")
    assert verdict("CN=ct1,O=Radiology", "ct1") == "ALLOW"
    assert verdict("CN=CN\\=ct1\\,O\\=Radiology", "CN=ct1,O=Radiology") != "ALLOW"
    assert verdict("CN=ct2,O=Cardiology", "ct2") == "ALLOW"
    assert verdict("CN=ct2", "ct2") == "ALLOW"
