"""What the DICOM adapter remembers about one connection (PS3.8 association, PS3.7 DIMSE).

Bounded: a few small fields, and each collection capped, so a hostile peer cannot grow it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from pacsguard.ids.engine import FlowState

from .kinds import PROTOCOL

__all__ = ["MAX_FLOW_IDS", "MAX_RETRIEVES", "MAX_SERVICES", "DicomFlowState"]

#: Patient IDs / Study Instance UIDs remembered per connection (for the alerts' Event).
MAX_FLOW_IDS: Final = 16
#: Distinct DIMSE services remembered per connection.
MAX_SERVICES: Final = 32
#: Outstanding C-MOVE/C-GET message IDs remembered per connection.
MAX_RETRIEVES: Final = 64


class DicomFlowState(FlowState):
    """One DICOM connection: its association's AE titles and outcome, the services asked for,
    the last command in each direction, the retrieves waiting for their first response, and the
    C-MOVEs whose sub-associations are expected."""

    __slots__ = (
        "aborted",
        "accepted",
        "associated",
        "called_ae",
        "calling_ae",
        "cmd_ac",
        "cmd_rq",
        "moves",
        "non_echo",
        "rejected",
        "released",
        "requests",
        "result_seen",
        "retrieves",
        "services",
    )

    protocol: ClassVar[str] = PROTOCOL
    closed_kind: ClassVar[str | None] = "flow-closed"

    def __init__(self, now: float) -> None:
        super().__init__(now)
        self.calling_ae: str | None = None
        self.called_ae: str | None = None
        self.associated = False
        self.accepted = False
        self.rejected = False
        self.released = False
        self.aborted = False
        self.result_seen = False
        self.requests = 0
        self.services: dict[str, None] = {}
        self.non_echo = False
        #: (command name, service, SOP class UID) of the last command in each direction
        self.cmd_rq: tuple[str, str, str | None] | None = None
        self.cmd_ac: tuple[str, str, str | None] | None = None
        self.retrieves: set[int] = set()
        #: C-MOVE message ID -> the key of the sub-association it announced (Engine.expected)
        self.moves: dict[int, tuple[str, str]] = {}

    def ae_pair(self) -> str | None:
        if self.calling_ae is None and self.called_ae is None:
            return None
        return f"{self.calling_ae or ''}->{self.called_ae or ''}"

    def parties(self) -> tuple[str | None, str | None]:
        return self.calling_ae, self.called_ae

    def summary(self, now: float) -> dict[str, Any]:
        """The ``flow-closed`` fields: what the connection did."""
        return {
            "calling_ae": self.calling_ae, "called_ae": self.called_ae, "ae_pair": self.ae_pair(),
            "associated": self.associated, "accepted": self.accepted, "rejected": self.rejected,
            "released": self.released, "aborted": self.aborted, "dimse_requests": self.requests,
            "services": list(self.services), "probe": self.associated and not self.non_echo,
            "duration": max(0.0, now - self.started),
        }
