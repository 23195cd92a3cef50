"""Fixture for the real orthanc peer (being written)."""
