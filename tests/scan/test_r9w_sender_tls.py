"""Outside round 9, wave 2: the store-and-forward sender's TLS without a context handed in.

pacsguard.gateway.store_forward.sender.StoreAssociation.open fell back to Python's
``ssl.create_default_context()`` when no context was passed: the destination's own ``ca_file``,
``cert_file`` and ``key_file`` were ignored, so a destination whose certificate the hospital's
CA issued, and which asks for the gateway's certificate (mutual TLS, PS3.15 B.1), was refused
("certificate verify failed"). It now builds pacsguard's client context (RFC 9325) from them, as
the relay does. The peer is a pynetdicom Storage SCP on pacsguard's server context that requires
a client certificate."""

from __future__ import annotations

import io
import socket
import ssl
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

from pacsguard.config.loader import parse_config
from pacsguard.config.schema import Route
from pacsguard.gateway.store_forward.sender import Refused, StoreAssociation
from pacsguard.tls import make_ca, make_cert, server_context

HOST = "127.0.113.5"  # this area's loopback range (outside round 9, wave 2, area W3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def route(port: int, tls: str) -> Route:
    return parse_config(f"""
gateway:
  routes:
  - name: sf
    mode: store-and-forward
    listen: {{port: {free_port()}, ae_title: PACSGUARD}}
    destinations: [{{name: archive, host: {HOST}, port: {port}, ae_title: ARCHIVE, tls: {tls}}}]
""").gateway.routes[0]


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "pki"
    ca, ca_key = make_ca(d, "Hospital CA", 30)
    out = {"ca": ca}
    out["archive"], out["archive_key"] = make_cert(d, "archive", ca, ca_key, hosts=[HOST], server=True, days=30)
    out["gateway"], out["gateway_key"] = make_cert(d, "gateway", ca, ca_key, client=True, days=30)
    return out


@pytest.fixture
def archive(pki: dict[str, Path]) -> Any:
    """A Storage SCP over TLS that requires a client certificate from the hospital's CA; it
    keeps each stored SOP Instance UID with the client certificate's common name."""
    from pynetdicom import AE, AllStoragePresentationContexts, evt

    stored: list[tuple[str, str]] = []

    def store(event: Any) -> int:
        peer = event.assoc.dul.socket.socket.getpeercert()
        name = dict(pair[0] for pair in peer["subject"])["commonName"]
        stored.append((str(event.request.AffectedSOPInstanceUID), name))
        return 0x0000

    ae = AE(ae_title="ARCHIVE")
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, "1.2.840.10008.1.2.1")
    port = free_port()
    context = server_context(pki["archive"], pki["archive_key"], ca_file=pki["ca"], require_client_cert=True)
    server = ae.start_server((HOST, port), block=False, ssl_context=context, evt_handlers=[(evt.EVT_C_STORE, store)])
    assert server is not None
    try:
        yield SimpleNamespace(stored=stored, port=port)
    finally:
        server.shutdown()


def ct_file(folder: Path) -> tuple[Path, str, str]:
    """pydicom's CT_small.dcm in explicit VR little endian, as a spooled file; its SOP class
    and instance UIDs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        out = io.BytesIO()
        ds.save_as(out, implicit_vr=False, little_endian=True, enforce_file_format=True)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ct.dcm"
    path.write_bytes(out.getvalue())
    return path, str(ds.SOPClassUID), str(ds.SOPInstanceUID)


def test_without_a_context_the_destinations_own_files_are_used(archive: Any, pki: dict[str, Path],
                                                                 tmp_path: Path) -> None:
    path, sop_class, instance = ct_file(tmp_path / "spool")
    rt = route(archive.port, f"{{ca_file: {pki['ca']}, cert_file: {pki['gateway']}, key_file: {pki['gateway_key']}}}")
    assoc = StoreAssociation.open(rt, rt.destinations[0], [(sop_class, "1.2.840.10008.1.2.1")])
    try:
        assert assoc.is_established
        sock = assoc.sock
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        assert assoc.store(path) == 0x0000
    finally:
        assoc.release()
    assert archive.stored == [(instance, "gateway")]  # the gateway's certificate was presented


def test_a_destination_tls_file_that_cannot_be_used_is_named(archive: Any, pki: dict[str, Path],
                                                              tmp_path: Path) -> None:
    """A key file without its certificate: refused before connecting, naming the file."""
    rt = route(archive.port, f"{{ca_file: {pki['ca']}, key_file: {pki['gateway_key']}}}")
    with pytest.raises(Refused, match=r"ARCHIVE@127\.0\.113\.5:\d+: its TLS settings cannot be used \(key file "
                       + r".*gateway\.key: given without a cert file\)"):
        StoreAssociation.open(rt, rt.destinations[0], [("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")])
    assert archive.stored == []
