"""pacsguard: a hospital-managed security gateway, IDS and tamper-evident audit trail for PACS networks."""

__version__ = "0.1.0"
