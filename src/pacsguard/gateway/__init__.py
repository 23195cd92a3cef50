"""The DICOM security gateway: the single, hospital-managed entry point to the PACS.

Names are re-exported lazily (PEP 562): importing the package (for its ``part`` or ``quarantine``
module) does not load the server, its relay and uvloop."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacsguard._lazy import lazy_exports

if TYPE_CHECKING:
    from pacsguard.gateway.server import Gateway, Listener

__all__ = ["Gateway", "Listener"]

__getattr__ = lazy_exports(__name__, dict.fromkeys(("Gateway", "Listener"), "pacsguard.gateway.server"))
