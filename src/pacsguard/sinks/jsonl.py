"""JSON Lines event file, in the spirit of Suricata's eve.json: one canonical JSON Event per line
(JSON Lines / RFC 8259 text, UTF-8, each record terminated by LF), for log shippers to tail.
With `message_format="ecs"` each line is the Elastic Common Schema document of the event instead."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import BinaryIO, Literal, Sequence

from pacsguard.events.model import Event
from pacsguard.sinks.formats import formatter

JsonLinesFormat = Literal["json", "ecs"]

StrPath = str | os.PathLike[str]


class JsonLinesSink:
    """Appends `Event.to_json()` lines to `path`.

    The file is opened in append mode (O_APPEND: every write lands at the current end, so after
    a copytruncate rotation or next to a second writer no line is overwritten) and created with
    mode 0640: readable by the log shipper's group, not by everyone, since events carry patient
    identifiers. Each batch is handed to the kernel before emit() returns (nothing waits in a
    user-space buffer, so a tailing reader sees whole batches and a process crash loses none);
    `fsync=True` also forces it to disk.

    Rotation: before each batch the path is checked (one stat(2)); when it no longer names the open
    file (logrotate's `create` mode renamed it, or it was removed) the path is opened anew, so no
    event goes on into a renamed or deleted file. A write cut short (a full disk: POSIX write()
    may take part of a buffer) leaves half a line; the next batch then starts on a new line, so
    the half line never swallows a whole event. Events not written are counted in `lost` (the
    store has them) and the error names how many.
    """

    def __init__(self, path: StrPath, *, fsync: bool = False, message_format: JsonLinesFormat = "json") -> None:
        if message_format not in ("json", "ecs"):  # CEF and LEEF are not JSON lines
            raise ValueError(f"a JSON-lines file takes format 'json' or 'ecs', not {message_format!r}")
        self._format = formatter(message_format)
        self.message_format = message_format
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()  # emit() may be called from several threads
        self._file: BinaryIO | None = self._open(self.path)
        self._torn = False  # the last write stopped inside a line
        self.lost = 0  # events not written (a full disk, an unwritable new file after rotation)
        self.reopened = 0  # times the path was opened anew after a rotation or a removal

    @staticmethod
    def _open(path: Path) -> BinaryIO:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags | os.O_EXCL, 0o640)
            # The umask may have removed bits from 0640; the mode is a policy, so set it exactly.
            os.fchmod(fd, 0o640)
        except FileExistsError:
            fd = os.open(path, flags)  # an existing file keeps the mode its owner gave it
        # Unbuffered: a batch goes to the kernel in as few write() calls as possible, so lines
        # of concurrent appenders do not interleave mid-line.
        return os.fdopen(fd, "ab", buffering=0)

    def emit(self, events: Sequence[Event]) -> None:
        if not events:
            return
        data = "".join(self._format(event) + "\n" for event in events).encode("utf-8")
        with self._lock:
            if self._file is None:
                raise ValueError(f"JsonLinesSink({self.path}) is closed")
            try:
                self._follow_path()
            except OSError as exc:
                self.lost += len(events)
                raise OSError(exc.errno, f"{self.path}: moved or removed and cannot be opened again "
                                         f"({exc.strerror}); {len(events)} event(s) not written") from None
            lead = b"\n" if self._torn and self._holds_text() else b""
            data = lead + data
            view = memoryview(data)
            try:
                while view:
                    written = self._file.write(view)
                    view = view[written:]
            except OSError as exc:
                done = len(data) - len(view)
                if done:
                    self._torn = data[done - 1] != 0x0A
                whole = max(0, data[:done].count(b"\n") - len(lead))  # the lead is no event
                self.lost += len(events) - whole
                raise OSError(exc.errno, f"{self.path}: {len(events) - whole} of {len(events)} event(s) not "
                                         f"written ({exc.strerror})") from None
            self._torn = False
            if self._fsync:
                os.fsync(self._file.fileno())

    def _holds_text(self) -> bool:
        """Whether the open file still holds the half line: logrotate's copytruncate (or an
        administrator freeing a full disk) may have emptied it, and a file that then began with
        an empty line would fail a strict JSON-lines reader on its first line."""
        assert self._file is not None
        return os.fstat(self._file.fileno()).st_size > 0

    def _follow_path(self) -> None:
        """Open the path anew when it no longer names the open file (call with the lock held)."""
        assert self._file is not None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            st = None
        except OSError:
            return  # the path cannot be looked at now (its folder's permissions): keep the open file
        now = os.fstat(self._file.fileno())
        if st is not None and (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
            return
        fresh = self._open(self.path)
        self._file.close()
        self._file, self._torn = fresh, False
        self.reopened += 1

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> "JsonLinesSink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
