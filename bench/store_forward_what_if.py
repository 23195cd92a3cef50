"""What bounds a store-and-forward route's throughput: run its ``pacsguard serve`` with one part of
the route taken away, through ``bench/gateway.py --store-forward-launcher
bench/store_forward_what_if.py``, and compare with the route as it is.

What-if tooling only: both modes break the route's guarantees and are never used for the
reference figures. The mode is the environment variable ``PACSGUARD_WHAT_IF``:

- ``no-sync``: nothing in the receiving path is synced (no fdatasync of the object, no fsync of
  its ID.json or of objects/): the ceiling of any cheaper commit protocol;
- ``no-forwarding``: a committed object is dropped at once instead of handed to the forwarding
  process (so neither the forwarder nor the destination spends CPU meanwhile): the ceiling of
  receiving alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from pacsguard.gateway.store_forward import receiver, route, spool, syncing
from pacsguard.gateway.store_forward.spool import SpooledMeta


def _no_sync() -> None:
    def write_unsynced(path: Path, *chunks: bytes | memoryview) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for chunk in chunks:
                os.write(fd, chunk)
        finally:
            os.close(fd)

    def shorten_only(fd: int, length: int) -> None:
        if os.fstat(fd).st_size > length:
            os.ftruncate(fd, length)

    # Each module's own name is patched: spool and receiver imported these functions by name.
    for module, name, stand_in in ((syncing, "fsync_dir", lambda path: None), (spool, "fsync_dir", lambda path: None),
                                   (spool, "write_synced", write_unsynced), (spool, "sync_object", shorten_only),
                                   (receiver, "sync_object", shorten_only)):
        setattr(module, name, stand_in)


def _no_forwarding() -> None:
    def dropped(self: route.StoreForwardRoute, meta: SpooledMeta) -> None:
        spent = self.spool.objects / f"{meta.id}.dcm"
        if not self.spool.spend(spent):
            spent.unlink(missing_ok=True)
        (self.spool.objects / f"{meta.id}.json").unlink(missing_ok=True)

    route.StoreForwardRoute._queued = dropped  # type: ignore[method-assign]


MODES = {"no-sync": _no_sync, "no-forwarding": _no_forwarding}

if __name__ == "__main__":
    mode = os.environ.get("PACSGUARD_WHAT_IF", "")
    if mode not in MODES:
        sys.exit(f"PACSGUARD_WHAT_IF must be one of {', '.join(MODES)}, not {mode!r}")
    MODES[mode]()
    from pacsguard.cli.main import main

    main()
