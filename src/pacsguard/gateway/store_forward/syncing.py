"""The group fsync of a spool folder: one directory fsync (POSIX: it makes the names created in
the folder durable) serves every object renamed into it before that fsync began.

Objects committed while a sync runs wait for the next one, which covers them all: under
concurrent associations the folder costs one fsync per round instead of one per object, and an
object alone costs exactly what it did. `sync()` returns only once a sync that started after the
caller's rename has completed, so nothing is acknowledged before its directory entry is durable."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pacsguard.gateway.store_forward.spool import fsync_dir


class FolderSync:
    """Group fsync of one folder, for the callers on one asyncio loop."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._requested = 0  # callers so far; caller n is covered once a sync begun after it ends
        self._covered = 0
        self._running: asyncio.Task[None] | None = None

    async def sync(self) -> None:
        """Return once the folder was fsync'd after this call began; raise OSError if that fails."""
        self._requested += 1
        mine = self._requested
        while self._covered < mine:
            running = self._running
            if running is None:
                running = self._running = asyncio.get_running_loop().create_task(self._sync(self._requested))
            # Shielded: one caller cancelled (its association aborted) must not cancel the others' sync.
            await asyncio.shield(running)

    async def _sync(self, covers: int) -> None:
        try:
            await asyncio.to_thread(fsync_dir, self.folder)
            self._covered = max(self._covered, covers)
        finally:
            self._running = None
