"""Shared fixtures. Real peers live in tests/peers/ (one module per peer) and are loaded here."""

import pytest

pytest_plugins = [
    "event_schema",
    "peers.dcmtk",
    "peers.postgres",
    "peers.orthanc",
    "peers.pixelmed",
    "peers.ctn",
    "store_helpers",
]

#: The key folder this run made (pytest_configure), removed when the run ends.
_KEY_DIR = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Keys that `gateway run` makes in its default folder (pacsguard.store.keys.key_dir) go to a folder
    of this run, inherited by every command a test starts, never to ~/.config or /etc."""
    import os
    import tempfile

    if "PACSGUARD_KEY_DIR" not in os.environ:
        made = tempfile.mkdtemp(prefix="pacsguard-test-keys-")
        os.environ["PACSGUARD_KEY_DIR"] = made
        config.stash[_KEY_DIR] = made


def pytest_unconfigure(config: pytest.Config) -> None:
    """The run's key folder goes with the run (only the one this run made, never a given one)."""
    import shutil

    made = config.stash.get(_KEY_DIR, None)
    if made:
        shutil.rmtree(made, ignore_errors=True)
