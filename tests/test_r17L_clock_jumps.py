"""Durations measured while the wall clock jumps (an NTP step after a VM resume, a date set by hand).

Each test runs a real Python process under libfaketime: its wall clock is read from a timestamp
file the process itself rewrites to step the date, while CLOCK_MONOTONIC is left alone, as a real
NTP step leaves it. A missing libfaketime fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def run_under_faketime(tmp_path: Path, body: str, start: str = "@2026-12-06 10:00:00") -> str:
    """Run ``body`` under libfaketime and return its output; ``body`` may call ``jump(spec)`` to
    step the wall clock and ``pause(seconds)`` to wait."""
    assert LIBFAKETIME.is_file(), f"{LIBFAKETIME} is missing: apt-get install faketime"
    stamp = tmp_path / "faketime"
    stamp.write_text(start + "\n")
    prelude = textwrap.dedent(f"""
        import threading
        from pathlib import Path
        def pause(seconds):  # time.sleep fails (EINVAL) under libfaketime with a real monotonic clock
            threading.Event().wait(seconds)
        def jump(spec):
            Path({str(stamp)!r}).write_text(spec + "\\n")
            pause(0.05)
    """)
    env = {**os.environ, "LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_TIMESTAMP_FILE": str(stamp),
           "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1", "TZ": "UTC"}
    done = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(body)], env=env,
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_quarantine_for_an_hour_survives_the_date_jumping_a_day_forward(tmp_path: Path) -> None:
    out = run_under_faketime(tmp_path, """
        from datetime import datetime, timedelta, timezone
        from pacsguard.gateway.quarantine import QuarantineList, change_event
        q = QuarantineList()
        assert datetime.now(timezone.utc).year == 2026 and datetime.now(timezone.utc).day == 6
        q.apply(change_event("add", "CT1@10.0.0.7", duration=timedelta(hours=1), reason="worm"))
        assert q.match("10.0.0.7", "CT1") is not None
        jump("@2026-12-07 10:00:05")
        assert datetime.now(timezone.utc).day == 7, datetime.now(timezone.utc)
        print("forward", q.match("10.0.0.7", "CT1") is not None, len(q.active()))
    """)
    assert out.split() == ["forward", "True", "1"]


def test_quarantine_ends_on_time_when_the_clock_steps_an_hour_back(tmp_path: Path) -> None:
    out = run_under_faketime(tmp_path, """
        from datetime import datetime, timedelta, timezone
        from pacsguard.gateway.quarantine import QuarantineList, change_event
        q = QuarantineList()
        q.apply(change_event("add", "10.0.0.8", duration=timedelta(seconds=1), reason="scan"))
        jump("@2026-12-06 09:00:30")
        assert datetime.now(timezone.utc).hour == 9, datetime.now(timezone.utc)
        during = q.match("10.0.0.8", None) is not None
        pause(1.2)
        print("back", during, q.match("10.0.0.8", None) is not None)
    """)
    assert out.split() == ["back", "True", "False"]


def test_quarantine_read_back_from_the_store_keeps_its_deadline(tmp_path: Path) -> None:
    """The gateway applies its own change at once and again when it reads it from the store; the
    second must not restart the count from a date that has jumped meanwhile."""
    out = run_under_faketime(tmp_path, """
        from datetime import timedelta
        from pacsguard.gateway.quarantine import QuarantineList, change_event
        q = QuarantineList()
        event = change_event("add", "MR1", duration=timedelta(hours=1))
        q.apply(event)
        jump("@2026-12-06 12:00:00")
        q.apply(event)
        print("again", q.match(None, "MR1") is not None)
    """)
    assert out.split() == ["again", "True"]


def test_a_recording_outage_lasts_what_it_lasted_when_the_clock_steps_back(tmp_path: Path) -> None:
    """The store fails for about a second while the date steps an hour back: the recovery event
    (an audit record an administrator reads) says about a second, not minus an hour."""
    out = run_under_faketime(tmp_path, """
        from contextlib import ExitStack
        from pacsguard.events import Event
        from pacsguard.runtime.outputs import open_outputs

        class Disk:  # a sink whose disk is full until ``failing`` is cleared
            def __init__(self):
                self.events, self.failing = [], True
            def emit(self, events):
                if self.failing:
                    raise OSError(28, "No space left on device")
                self.events.extend(events)
            def close(self):
                pass

        def wait_for(condition):
            for _ in range(500):
                if condition():
                    return
                pause(0.01)
            raise AssertionError("not within 5 s")

        disk = Disk()
        with ExitStack() as stack:
            bus = open_outputs(stack, None, [disk]).bus
            bus.publish(Event(kind="probe.first", component="probe"))
            bus.hurry()
            wait_for(lambda: bus.failing)
            jump("@2026-12-06 09:00:30")
            pause(0.5)
            disk.failing = False
            bus.publish(Event(kind="probe.second", component="probe"))
            bus.hurry()
            wait_for(lambda: any(e.kind == "pacsguard.recording.recovered" for e in disk.events))
        (done,) = [e for e in disk.events if e.kind == "pacsguard.recording.recovered"]
        print("recovered", done.details["seconds"])
    """)
    word, seconds = out.split()
    assert word == "recovered" and 0.3 <= float(seconds) <= 5.0, out


def test_a_certificate_judged_by_a_wrong_clock_says_what_the_clock_reads(tmp_path: Path) -> None:
    """A host clock stepped years ahead makes a good certificate "expired": the message says what
    the clock reads, since the clock is what to fix (it named only the certificate's end)."""
    out = run_under_faketime(tmp_path, f"""
        from pacsguard.tls import TLSConfigError, client_context, make_ca, make_cert
        ca, ca_key = make_ca({str(tmp_path)!r}, "Clock CA", 30)
        cert, key = make_cert({str(tmp_path)!r}, "gw", ca, ca_key, hosts=["127.0.0.1"], client=True, days=30)
        jump("@2036-02-07 06:28:00")
        try:
            client_context(ca_file=ca, cert_file=cert, key_file=key)
        except TLSConfigError as exc:
            print(exc)
    """)
    assert "every certificate in it has expired" in out, out  # the CA's, checked first
    assert "this host's clock reads 2036-02-07 06:2" in out, out


def test_verify_notes_a_checkpoint_dated_before_an_earlier_one(tmp_path: Path) -> None:
    """Checkpoints are signed with the host's clock: after a step back an hour, a later checkpoint
    is dated before an earlier one. The seals still verify (exit 0), and verify now says so."""
    store = tmp_path / "store.db"
    run_under_faketime(tmp_path, f"""
        from pathlib import Path
        from pacsguard.events.model import Event
        from pacsguard.store import EventStore
        from pacsguard.store.keys import generate_key
        key = Path({str(tmp_path / "k.key")!r})
        generate_key(key)
        es = EventStore.open({str(store)!r}, key_path=key, create=True)
        es.append([Event(kind="dicom.association.accepted", component="gateway", message="one")])
        es.checkpoint()
        jump("@2026-12-06 09:00:00")
        es.append([Event(kind="dicom.association.accepted", component="gateway", message="two")])
        es.checkpoint()
        es.close()
    """)
    done = subprocess.run([sys.executable, "-m", "pacsguard.cli", "audit", "verify", "--store", str(store),
                           "--key", str(tmp_path / "k.key.pub")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    said = " ".join(done.stdout.split())
    assert "note: checkpoint at size 2 is dated 60 min before the one at size 1" in said, said
    assert "OK" in said
