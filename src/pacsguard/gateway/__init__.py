"""The DICOM security gateway: the single, hospital-managed entry point to the PACS."""

from pacsguard.gateway.server import Gateway, Listener

__all__ = ["Gateway", "Listener"]
