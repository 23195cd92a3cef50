"""Errors of witness delivery and reading, each naming the witness and what went wrong."""


class WitnessError(Exception):
    """A witness could not be reached, refused a checkpoint, or holds something unreadable."""


class WitnessRefused(WitnessError):
    """The witness answered and refused the checkpoint (HTTP 4xx): retrying the same one will not help."""
