"""The tamper-evident event store: the audit repository every part writes to and reads from."""

from pacsguard.store.errors import StoreError
from pacsguard.store.store import Checkpoint, EventQuery, EventStore, StoredEvent

__all__ = ["Checkpoint", "EventQuery", "EventStore", "StoreError", "StoredEvent"]
