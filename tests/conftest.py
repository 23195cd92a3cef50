"""Shared fixtures. Real peers live in tests/peers/ (one module per peer) and are loaded here."""

pytest_plugins = [
    "event_schema",
    "peers.dcmtk",
    "peers.postgres",
    "peers.orthanc",
    "store_helpers",
]
