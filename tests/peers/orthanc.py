"""The real Orthanc peer: Debian's ``/usr/sbin/Orthanc`` as the PACS behind the gateway.

Fixture
-------
``orthanc`` (function) — a factory: ``server = orthanc(**overrides)`` inside a test starts one
Orthanc with its own storage, index and configuration in the test's tmp dir, on two free ports,
and returns an :class:`Orthanc` handle (``host``, ``dicom_port``, ``http_port``, ``aet``,
``rest()``, ``instances()``, ``instance_file()``, ``wait_for_instances()``). Every server the
test started is stopped at teardown.

Overrides are Orthanc configuration keys, spelled as in Orthanc's own configuration file (the
convention PACS administrators know), for example::

    orthanc(DicomCheckCalledAet=True,
            DicomModalities={"gw": ["GATEWAY", "127.0.0.1", 11112]},
            DicomAlwaysAllowFind=True, DicomAlwaysAllowMove=True)

plus one keyword that is not a configuration key: ``tls=(certificate, private_key,
trusted_certificates)`` (PEM paths) turns on DICOM TLS (Orthanc >= 1.9.0: ``DicomTlsEnabled``
and friends); the DICOM port then accepts TLS only, and requires a client certificate unless
``DicomTlsRemoteCertificateRequired=False`` is also given.

Orthanc 1.10.1 has no option to bind one address: HTTP and DICOM listen on all interfaces.
``RemoteAccessAllowed: false`` makes HTTP refuse non-loopback clients; HTTP also requires a
random user/password. The DICOM port lives only as long as the test.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from peers.dcmtk import (
    LOOPBACK,
    PORT_ATTEMPTS,
    free_port,
    port_was_taken,
    read_log,
    stop_process_group,
    wait_for_port,
)

ORTHANC_BIN = Path("/usr/sbin/Orthanc")
INSTALL_HINT = "install Debian's Orthanc package: apt-get install orthanc"
STARTUP_TIMEOUT = 30.0
HTTP_TIMEOUT = 30.0


class OrthancError(RuntimeError):
    """An Orthanc REST call answered with an HTTP error (its status and body are in the message)."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"Orthanc {method} {path} -> HTTP {status}: {body[:2000]}")
        self.status = status
        self.body = body


@dataclass
class Orthanc:
    """A running Orthanc and its REST API (basic auth with the random registered user)."""

    host: str
    dicom_port: int
    http_port: int
    aet: str
    username: str
    password: str
    workdir: Path
    config: dict[str, Any]
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<http_port>`` — the REST API root."""
        return f"http://{self.host}:{self.http_port}"

    @property
    def log_path(self) -> Path:
        """Orthanc's stdout/stderr, for failure messages."""
        return self.workdir / "orthanc.log"

    def log(self) -> str:
        """The tail of Orthanc's log."""
        return read_log(self.log_path)

    def _request(
        self, path: str, method: str = "GET", body: Any = None, timeout: float = HTTP_TIMEOUT
    ) -> tuple[bytes, str]:
        """Send one authenticated request; return (body, content type); raise OrthancError on 4xx/5xx."""
        data: bytes | None
        headers = {"Authorization": "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()}
        if body is None:
            data = None
        elif isinstance(body, (bytes, bytearray)):
            # Raw bytes: e.g. a DICOM file POSTed to /instances.
            data = bytes(body)
            headers["Content-Type"] = "application/octet-stream"
        else:
            data = json.dumps(body).encode() if not isinstance(body, str) else body.encode()
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raise OrthancError(method, path, exc.code, exc.read().decode(errors="replace")) from None

    def rest(self, path: str, method: str = "GET", body: Any = None, timeout: float = HTTP_TIMEOUT) -> Any:
        """Call the REST API and return the parsed JSON answer (None for an empty answer).

        ``body`` may be bytes (sent as is), a str, or anything JSON-serialisable.
        """
        raw, _ = self._request(path, method, body, timeout)
        if not raw.strip():
            return None
        return json.loads(raw)

    def instances(self) -> list[str]:
        """Orthanc identifiers of every stored instance."""
        return list(self.rest("/instances"))

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM Part 10 file of one instance, byte for byte."""
        raw, _ = self._request(f"/instances/{instance_id}/file")
        return raw

    def wait_for_instances(self, n: int, timeout: float = 30.0) -> list[str]:
        """Wait until at least ``n`` instances are stored; return their ids, fail on timeout.

        Orthanc acknowledges a C-STORE before its index is necessarily queryable, and moves
        run as asynchronous jobs, so tests poll rather than assume.
        """
        deadline = time.monotonic() + timeout
        ids: list[str] = []
        while time.monotonic() < deadline:
            ids = self.instances()
            if len(ids) >= n:
                return ids
            time.sleep(0.1)
        pytest.fail(f"Orthanc holds {len(ids)} instances after {timeout} s, expected {n}:\n{self.log()}")

    def stop(self, graceful: bool = False) -> None:
        """Stop Orthanc and its process group.

        By default it is killed outright: its storage is thrown away with the test, and a
        graceful stop costs ~3 s (its HTTP and DICOM servers poll before exiting).
        ``graceful=True`` sends SIGTERM so it closes its SQLite index cleanly, for a test that
        restarts Orthanc on the same directories.
        """
        stop_process_group(self.process, sig=signal.SIGTERM if graceful else signal.SIGKILL, grace=15)


def _base_config(workdir: Path, dicom_port: int, http_port: int, username: str, password: str) -> dict[str, Any]:
    """The configuration every test server starts from: private storage, loopback-only HTTP with
    authentication, Orthanc's own defaults for the DICOM access switches, no plugins."""
    return {
        "Name": "pacsguard-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {username: password},
        "DicomCheckCalledAet": False,
        "DicomModalities": {},
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": False,
        "DicomAlwaysAllowGet": False,
        "DicomAlwaysAllowMove": False,
        "Plugins": [],
        # Nothing survives the test, so persisting jobs or serving WebDAV only adds surface.
        "SaveJobs": False,
        "WebDavEnabled": False,
        "HttpDescribeErrors": True,
    }


def _tls_config(tls: tuple[os.PathLike[str] | str, os.PathLike[str] | str, os.PathLike[str] | str]) -> dict[str, Any]:
    """Orthanc's DICOM TLS keys (new in 1.9.0) for ``(certificate, private_key, trusted_certificates)``."""
    cert, key, trusted = (Path(p).resolve() for p in tls)
    for p in (cert, key, trusted):
        if not p.is_file():
            raise FileNotFoundError(f"TLS file for Orthanc not found: {p}")
    return {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(cert),
        "DicomTlsPrivateKey": str(key),
        "DicomTlsTrustedCertificates": str(trusted),
        "DicomTlsRemoteCertificateRequired": True,
    }


def _wait_ready(server: Orthanc) -> None:
    """Wait until HTTP /system answers with our credentials and the DICOM port accepts TCP."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    last: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"Orthanc exited with {server.process.returncode} during start-up:\n{server.log()}")
        if "Orthanc has stopped" in server.log():
            # After a fatal start-up error Orthanc 1.10.1 logs that it stopped but may linger.
            pytest.fail(f"Orthanc stopped during start-up:\n{server.log()}")
        try:
            # A short timeout: whatever holds the port must answer at once to count as Orthanc.
            server.rest("/system", timeout=2)
            break
        except (OSError, OrthancError) as exc:
            last = exc
            time.sleep(0.1)
    else:
        pytest.fail(f"Orthanc HTTP did not answer within {STARTUP_TIMEOUT} s ({last}):\n{server.log()}")
    remaining = max(0.5, deadline - time.monotonic())
    if not wait_for_port(server.host, server.dicom_port, remaining, server.process):
        pytest.fail(f"Orthanc DICOM port {server.dicom_port} did not open within {STARTUP_TIMEOUT} s:\n{server.log()}")


def start_orthanc(workdir: Path, **overrides: Any) -> Orthanc:
    """Write a configuration into ``workdir``, start Orthanc with it and wait until it serves.

    Keyword arguments are Orthanc configuration keys (capitalised, as in its JSON file), plus
    ``tls=(cert, key, trusted_ca)``. The caller owns the returned server and must ``stop()`` it.
    """
    if not os.access(ORTHANC_BIN, os.X_OK):
        pytest.fail(f"{ORTHANC_BIN} is missing: {INSTALL_HINT}")
    tls = overrides.pop("tls", None)
    misspelt = [key for key in overrides if not key[:1].isupper()]
    if misspelt:
        # A lower-case key is almost surely a typo that Orthanc would silently ignore.
        raise TypeError(f"orthanc() overrides are Orthanc configuration keys (e.g. DicomModalities), got {misspelt}")

    workdir.mkdir(parents=True, exist_ok=True)
    username, password = f"test-{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        dicom_port, http_port = free_port(), free_port()
        while http_port == dicom_port:
            http_port = free_port()
        config = _base_config(workdir, dicom_port, http_port, username, password)
        if tls is not None:
            config.update(_tls_config(tls))
        config.update(overrides)
        try:
            return _launch(workdir, config, username, password)
        except BaseException:
            # Lost the race between free_port() and Orthanc's bind: try other ports, unless the
            # test chose the ports itself.
            ports_overridden = "DicomPort" in overrides or "HttpPort" in overrides
            if attempt < PORT_ATTEMPTS and not ports_overridden and port_was_taken(workdir / "orthanc.log"):
                continue
            raise
    raise AssertionError("unreachable")


def _launch(workdir: Path, config: dict[str, Any], username: str, password: str) -> Orthanc:
    """Write ``config``, start Orthanc on it and wait until it serves; leave nothing on failure."""
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    with open(workdir / "orthanc.log", "wb") as log:
        # --no-jobs: never resume jobs from a previous run (there is none, but be explicit).
        proc = subprocess.Popen(
            [str(ORTHANC_BIN), "--no-jobs", str(config_path)],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        server = Orthanc(
            host=LOOPBACK,
            dicom_port=int(config["DicomPort"]),
            http_port=int(config["HttpPort"]),
            aet=str(config["DicomAet"]),
            username=username,
            password=password,
            workdir=workdir,
            config=config,
            process=proc,
        )
        _wait_ready(server)
    except BaseException:
        # Whatever went wrong (a bad override, a start-up failure), leave no Orthanc behind.
        stop_process_group(proc, sig=signal.SIGKILL)
        raise
    return server


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    """Factory: ``orthanc(**overrides) -> Orthanc``; every server started is stopped at teardown."""
    started: list[Orthanc] = []

    def factory(**overrides: Any) -> Orthanc:
        server = start_orthanc(tmp_path / f"orthanc{len(started)}", **overrides)
        started.append(server)
        return server

    yield factory
    for server in reversed(started):
        server.stop()
