"""Fixture for the real dcmtk peer (being written)."""
