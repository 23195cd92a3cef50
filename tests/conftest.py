"""Shared fixtures. Real peers live in tests/peers/ (one module per peer) and are loaded here."""

pytest_plugins = [
    "event_schema",
    "peers.dcmtk",
    "peers.postgres",
    "peers.orthanc",
    "store_helpers",
]


def pytest_configure(config: object) -> None:
    """Keys that `gateway run` makes in its default folder (pacsguard.store.keys.key_dir) go to a folder
    of this run, inherited by every command a test starts, never to ~/.config or /etc."""
    import os
    import tempfile

    os.environ.setdefault("PACSGUARD_KEY_DIR", tempfile.mkdtemp(prefix="pacsguard-test-keys-"))
