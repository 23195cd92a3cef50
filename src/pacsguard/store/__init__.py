"""The tamper-evident event store: the audit repository every part writes to and reads from.

Names are re-exported lazily (PEP 562) so that importing the package does not load SQLAlchemy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacsguard._lazy import lazy_exports

if TYPE_CHECKING:
    from pacsguard.store.errors import StoreError
    from pacsguard.store.search import EventQuery
    from pacsguard.store.store import Checkpoint, EventStore, StoredEvent

__all__ = ["Checkpoint", "EventQuery", "EventStore", "StoreError", "StoredEvent"]

__getattr__ = lazy_exports(__name__, {"StoreError": "pacsguard.store.errors", **dict.fromkeys(
    ("Checkpoint", "EventStore", "StoredEvent"), "pacsguard.store.store"), "EventQuery": "pacsguard.store.search"})
