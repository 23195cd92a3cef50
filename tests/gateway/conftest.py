"""Fixtures of the gateway tests (see gateway_under_test.py)."""

from gateway_under_test import gateway  # noqa: F401  (the fixture)
