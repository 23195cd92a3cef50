"""The real PixelMed peer: David Clunie's Java DICOM toolkit from Debian's ``libpixelmed-java``
(``/usr/share/java/pixelmed.jar``, with the jars its manifest names) run by ``/usr/bin/java``.

Fixtures
--------
``pixelmed`` (session)
    A :class:`PixelMed`: ``run(ops, timeout=60)`` runs PixelMed's own SCU classes
    (``VerificationSOPClassSCU``, ``StorageSOPClassSCU``, ``FindSOPClassSCU``, ``MoveSOPClassSCU``,
    ``GetSOPClassSCU``) one after another in one JVM, through the driver ``pixelmed/PixelMedDriver.java``
    (compiled once a session with ``javac``), and returns one :class:`Outcome` per operation: what
    PixelMed itself concluded (it throws on a refusal or a failure status).
``pixelmed_scp`` (function)
    A factory: ``pixelmed_scp(host, aet="PMSCP")`` starts PixelMed's ``StorageSOPClassSCP`` on a
    socket bound to ``host`` only, on a free port, storing into its own folder; a
    :class:`StorageSCP` handle, stopped at teardown.

Why a driver and not ``/usr/bin/VerificationSOPClassSCU`` and friends: Debian ships a launcher for
the echo SCU only, the classes' own ``main`` methods differ in their arguments, and a JVM takes a
second or two to start; and ``StorageSOPClassSCPDispatcher`` binds every interface, while the tests
must stay on their own loopback address.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from peers.dcmtk import PORT_ATTEMPTS, free_port, stop_process_group

JAVA = Path("/usr/bin/java")
JAVAC = Path("/usr/bin/javac")
JAR = Path("/usr/share/java/pixelmed.jar")
DRIVER = Path(__file__).parent / "pixelmed" / "PixelMedDriver.java"
INSTALL_HINT = ("install Debian's PixelMed and a JDK: apt-get install libpixelmed-java pixelmed-apps "
                "default-jdk-headless")


@dataclass(frozen=True)
class Outcome:
    """One operation's verdict as PixelMed printed it: ``op``, ``ok`` and the detail text."""

    op: str
    ok: bool
    detail: str

    def field(self, name: str) -> str:
        """The value of ``name=value`` in the detail (e.g. ``completed`` of a store)."""
        for word in self.detail.split():
            if word.startswith(name + "="):
                return word[len(name) + 1:]
        raise KeyError(f"{name} not in {self.detail!r}")


@dataclass
class Run:
    """The outcomes of one JVM, with its output for failure messages."""

    outcomes: list[Outcome]
    stdout: str
    stderr: str
    seconds: float

    def __str__(self) -> str:
        return f"{self.stdout}\n--- PixelMed stderr ---\n{self.stderr[-6000:]}"


class PixelMed:
    """PixelMed's classes, verified present, and the compiled driver."""

    def __init__(self, classes: Path) -> None:
        for tool in (JAVA, JAVAC, JAR):
            if not tool.exists():
                pytest.fail(f"{tool} is missing: {INSTALL_HINT}")
        self.classpath = f"{JAR}{os.pathsep}{classes}"
        classes.mkdir(parents=True, exist_ok=True)
        made = subprocess.run([str(JAVAC), "-cp", str(JAR), "-d", str(classes), str(DRIVER)],
                              capture_output=True, text=True, timeout=120, check=False)
        if made.returncode != 0:
            pytest.fail(f"javac of {DRIVER} failed ({INSTALL_HINT}):\n{made.stdout}{made.stderr}")

    def command(self, *args: str) -> list[str]:
        # A small heap: several JVMs may run at once on a 2-core machine.
        return [str(JAVA), "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", self.classpath, "PixelMedDriver", *args]

    def run(self, ops: Sequence[Sequence[object]], workdir: Path, timeout: float = 60) -> Run:
        """Run ``ops`` (each ``(op, host, port, calling, called, *more)``) in one JVM, in order."""
        workdir.mkdir(parents=True, exist_ok=True)
        script = workdir / f"ops-{time.monotonic_ns()}.txt"
        script.write_text("".join("\t".join(str(x) for x in op) + "\n" for op in ops))
        started = time.monotonic()
        try:
            done = subprocess.run(self.command(str(script)), capture_output=True, text=True,
                                  errors="replace", timeout=timeout, check=False, cwd=workdir)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"PixelMed did not finish {[op[0] for op in ops]} within {timeout} s: {exc.stdout!r}")
        outcomes = []
        for line in done.stdout.splitlines():
            if line.startswith("RESULT "):
                _, op, verdict, *rest = line.split(" ", 3)
                outcomes.append(Outcome(op, verdict == "OK", rest[0] if rest else ""))
        run = Run(outcomes, done.stdout, done.stderr, time.monotonic() - started)
        assert len(outcomes) == len(ops), f"PixelMed reported {len(outcomes)} of {len(ops)} operations:\n{run}"
        return run


@pytest.fixture(scope="session")
def pixelmed(tmp_path_factory: pytest.TempPathFactory) -> PixelMed:
    return PixelMed(tmp_path_factory.mktemp("pixelmed-classes"))


@dataclass
class StorageSCP:
    """A running PixelMed Storage SCP: ``host``, ``port``, ``aet``, ``folder`` and what it said."""

    host: str
    port: int
    aet: str
    folder: Path
    proc: subprocess.Popen[str] = field(repr=False)
    lines: list[str] = field(default_factory=list)

    def received(self) -> list[tuple[Path, str, str]]:
        """(file, transfer syntax, calling AE title) of each object stored, in order."""
        out = []
        for line in list(self.lines):
            if line.startswith("RECEIVED "):
                _, path, syntax, calling = (line.split(" ") + [""])[:4]
                out.append((Path(path), syntax, calling))
        return out

    def wait_for(self, count: int, timeout: float = 15.0) -> list[tuple[Path, str, str]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.received()) < count:
            time.sleep(0.05)
        got = self.received()
        assert len(got) >= count, f"PixelMed SCP stored {len(got)} of {count} objects: {self.lines}"
        return got

    def stop(self) -> None:
        # Closing stdin makes the driver exit; the process group is swept in any case.
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        stop_process_group(self.proc, grace=5)  # type: ignore[arg-type]


def _reader(proc: subprocess.Popen[str], lines: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))


@pytest.fixture
def pixelmed_scp(pixelmed: PixelMed, tmp_path: Path) -> Iterator[Callable[..., StorageSCP]]:
    started: list[StorageSCP] = []

    def start(host: str, aet: str = "PMSCP") -> StorageSCP:
        folder = tmp_path / f"pixelmed-scp-{len(started)}"
        folder.mkdir()
        for _ in range(PORT_ATTEMPTS):
            port = free_port(host)
            log = tmp_path / f"pixelmed-scp-{len(started)}.log"
            proc = subprocess.Popen(pixelmed.command("scp", host, str(port), aet, str(folder)),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log.open("a"),
                                    text=True, start_new_session=True)
            scp = StorageSCP(host, port, aet, folder, proc)
            started.append(scp)
            threading.Thread(target=_reader, args=(proc, scp.lines), daemon=True).start()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and proc.poll() is None and not scp.lines:
                time.sleep(0.05)
            if scp.lines and scp.lines[0].startswith("LISTENING"):
                return scp
            scp.stop()  # most likely the port was taken meanwhile: try another
        pytest.fail(f"PixelMed's Storage SCP did not start on {host} ({INSTALL_HINT})")

    yield start
    for scp in started:
        scp.stop()
