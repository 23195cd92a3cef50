"""Errors of witness delivery and reading, each naming the witness and what went wrong.

They are OSErrors (an exchange with something outside this process failed), so every command
reports them as one line, exit 2, like an unreadable file or an unreachable database."""


class WitnessError(OSError):
    """A witness could not be reached, refused a checkpoint, or holds something unreadable."""


class WitnessRefused(WitnessError):
    """The witness answered and refused the checkpoint (HTTP 4xx): retrying the same one will not help."""
