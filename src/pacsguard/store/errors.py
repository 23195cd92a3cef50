"""Errors of the store, each with a message that names the store or file and what is wrong."""


class StoreError(Exception):
    """The store cannot be opened or used (not a pacsguard store, unreachable server, bad key)."""
