"""Each real-peer fixture proves it works, against the real peer (nothing here is mocked)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import NamedTuple

import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_testdata_file

from peers.dcmtk import Dcmtk, StoreSCP
from peers.orthanc import Orthanc

pytestmark = pytest.mark.peers

DCMTK_TOOLS = ("echoscu", "storescu", "storescp", "findscu", "movescu", "getscu")


def read_dataset(source: Path | bytes) -> Dataset:
    """Read a Part 10 file for comparison, without Data Set Trailing Padding (FFFC,FFFC).

    The padding may only exist in files (PS3.10 7.2); it is not part of the dataset a network
    peer transfers, so dcmtk and Orthanc drop it and an honest comparison must too.
    """
    ds = dcmread(BytesIO(source) if isinstance(source, bytes) else source)
    if (0xFFFC, 0xFFFC) in ds:
        del ds[0xFFFC, 0xFFFC]
    return ds


def test_dcmtk_tools_are_offis_dcmtk(dcmtk: Dcmtk) -> None:
    """Every tool resolves to /usr/bin (not pynetdicom's same-named apps) and is dcmtk."""
    for tool in DCMTK_TOOLS:
        assert dcmtk.path(tool) == f"/usr/bin/{tool}"
        banner = dcmtk.run(tool, "--version").stdout
        assert "dcmtk" in banner or "OFFIS" in banner, banner
    assert dcmtk.env["TCP_NODELAY"] == "1"


def test_echoscu_to_storescp_sink(dcmtk: Dcmtk, storescp_sink: StoreSCP) -> None:
    """A C-ECHO from dcmtk's echoscu is answered by the storescp sink."""
    host, port, aet, _ = storescp_sink
    assert host == "127.0.0.1" and aet == "SINK"
    result = dcmtk.run("echoscu", "-v", "-aet", "PEERTEST", "-aec", aet, host, str(port), timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.storescp_sink(write=True)
def test_storescp_sink_writes_when_asked(dcmtk: Dcmtk, storescp_sink: StoreSCP) -> None:
    """With write=True the sink keeps what it receives, and it is the dataset that was sent."""
    source = Path(get_testdata_file("CT_small.dcm"))
    result = dcmtk.run(
        "storescu", "-aet", "PEERTEST", "-aec", storescp_sink.aet,
        storescp_sink.host, str(storescp_sink.port), source, timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    received = list(storescp_sink.output_dir.iterdir())
    assert len(received) == 1
    assert read_dataset(received[0]) == read_dataset(source)


def test_postgres_url_answers_select_version(postgres_url: str) -> None:
    """SQLAlchemy + psycopg 3 reach the private PostgreSQL 15 as role pacsguard, with the password."""
    from sqlalchemy import create_engine, text

    assert postgres_url.startswith("postgresql+psycopg://pacsguard:")
    engine = create_engine(postgres_url)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("select version()")).scalar_one()
            user, db = conn.execute(text("select current_user, current_database()")).one()
    finally:
        engine.dispose()
    assert version.startswith("PostgreSQL 15"), version
    assert (user, db) == ("pacsguard", "pacsguard")


def test_postgres_db_url_is_a_fresh_database(postgres_db_url: str) -> None:
    """The per-test database is empty, owned by pacsguard, and writable."""
    from sqlalchemy import create_engine, text

    assert postgres_db_url.rsplit("/", 1)[1].startswith("t_")
    engine = create_engine(postgres_db_url)
    try:
        with engine.begin() as conn:
            tables = conn.execute(text("select count(*) from pg_tables where schemaname = 'public'")).scalar_one()
            assert tables == 0
            conn.execute(text("create table audit (id serial primary key, note text)"))
            conn.execute(text("insert into audit (note) values ('x')"))
            assert conn.execute(text("select count(*) from audit")).scalar_one() == 1
    finally:
        engine.dispose()


def test_orthanc_stores_what_storescu_sends(dcmtk: Dcmtk, orthanc: Callable[..., Orthanc]) -> None:
    """storescu → Orthanc's DICOM port, then the file fetched back through REST is the same dataset."""
    server = orthanc()
    source = Path(get_testdata_file("CT_small.dcm"))
    result = dcmtk.run(
        "storescu", "-aet", "PEERTEST", "-aec", server.aet, server.host, str(server.dicom_port), source, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (instance_id,) = server.wait_for_instances(1, timeout=15)
    assert read_dataset(server.instance_file(instance_id)) == read_dataset(source)
    assert server.rest("/system")["DicomAet"] == "ORTHANC"


class PKI(NamedTuple):
    """A throw-away CA with a server (Orthanc) and a client (dcmtk) certificate, as PEM paths."""

    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    """Make a CA and two leaf certificates (RSA 2048: accepted by dcmtk's BCP 195 profile)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    pem = serialization.Encoding.PEM

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write_key(k: rsa.RSAPrivateKey, path: Path) -> Path:
        path.write_bytes(k.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        return path

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("pacsguard test CA"))
        .issuer_name(name("pacsguard test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(cn: str) -> tuple[x509.Certificate, rsa.RSAPrivateKey]:
        k = key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            # Orthanc uses one certificate for its SCP and its SCU side: allow both uses.
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return cert, k

    d = tmp_path / "pki"
    d.mkdir()
    (d / "ca.crt").write_bytes(ca.public_bytes(pem))
    server, server_key = leaf("orthanc.test")
    client, client_key = leaf("modality.test")
    (d / "server.crt").write_bytes(server.public_bytes(pem))
    (d / "client.crt").write_bytes(client.public_bytes(pem))
    return PKI(
        ca_cert=d / "ca.crt",
        server_cert=d / "server.crt",
        server_key=write_key(server_key, d / "server.key"),
        client_cert=d / "client.crt",
        client_key=write_key(client_key, d / "client.key"),
    )


def test_orthanc_dicom_tls(dcmtk: Dcmtk, orthanc: Callable[..., Orthanc], pki: PKI) -> None:
    """Orthanc 1.10.1 serves DICOM over TLS: dcmtk with a CA-signed client certificate gets in
    (echo and store), plain TCP and a TLS client without a certificate are refused."""
    server = orthanc(tls=(pki.server_cert, pki.server_key, pki.ca_cert))
    target = ["-aet", "PEERTEST", "-aec", server.aet, server.host, str(server.dicom_port)]
    tls = ["+tls", str(pki.client_key), str(pki.client_cert), "-pw", "+cf", str(pki.ca_cert)]

    echo = dcmtk.run("echoscu", "-v", *tls, *target, timeout=30)
    assert echo.returncode == 0, echo.stdout + echo.stderr + server.log()

    source = Path(get_testdata_file("MR_small.dcm"))
    store = dcmtk.run("storescu", *tls, *target, source, timeout=30)
    assert store.returncode == 0, store.stdout + store.stderr + server.log()
    (instance_id,) = server.wait_for_instances(1, timeout=15)
    assert read_dataset(server.instance_file(instance_id)) == read_dataset(source)

    plain = dcmtk.run("echoscu", *target, timeout=30)
    assert plain.returncode != 0, "Orthanc answered plain TCP on its TLS port"

    anonymous = dcmtk.run("echoscu", "+tla", "+cf", str(pki.ca_cert), *target, timeout=30)
    assert anonymous.returncode != 0, "Orthanc accepted a TLS client without a certificate"
