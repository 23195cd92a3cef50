"""Demo peers for ``make run``: an embedded upstream PACS, so the demo needs no external archive.

`DemoPACS` is re-exported lazily (PEP 562): it needs pydicom and pynetdicom."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacsguard._lazy import lazy_exports

if TYPE_CHECKING:
    from pacsguard.demo.scp import DemoPACS

__all__ = ["DemoPACS"]

__getattr__ = lazy_exports(__name__, {"DemoPACS": "pacsguard.demo.scp"})
