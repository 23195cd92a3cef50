"""Rewriting the Retrieve AE Title (0008,0054) of C-FIND responses (PS3.4 C.4.1.1.3.2, C.3.4): on a
route that maps AE titles the hidden PACS's own title would send a workstation around the gateway,
so the gateway names itself. Only C-FIND response identifiers are touched; each is held whole
(they are small), rewritten and re-fragmented for the client's Maximum Length (PS3.8 D.1)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from pacsguard.config.schema import Route
from pacsguard.dicom import dimse
from pacsguard.dicom.dataset import MAX_IDENTIFIER_LENGTH
from pacsguard.dicom.rewrite import replace_top_level_value

RETRIEVE_AE_TITLE: Final = 0x00080054
KEYWORD: Final = "RetrieveAETitle"
#: Largest response identifier held for rewriting; a larger one passes unchanged.
MAX_HELD: Final = MAX_IDENTIFIER_LENGTH


@dataclass(slots=True)
class HeldResponse:
    """The data set of one C-FIND response while it is collected for rewriting."""

    message_id: int
    context_id: int
    transfer_syntax: str | None
    ae_title: str
    data: bytearray = field(default_factory=bytearray)

    def rewritten(self) -> bytes | None:
        """The data set naming the gateway as Retrieve AE, or None if it names none (or is unreadable)."""
        return replace_top_level_value(self.data, RETRIEVE_AE_TITLE, self.ae_title.encode("ascii"),
                                       self.transfer_syntax)


def hold_response(route: Route, command: dimse.CommandSet, context_id: int,
                  transfer_syntax: str | None) -> HeldResponse | None:
    """A HeldResponse for *command* if it is a C-FIND response with an identifier on a route that
    rewrites the Retrieve AE Title, else None."""
    if command.command_field != dimse.C_FIND_RSP or not command.has_dataset or not route.rewrites_retrieve_ae_title:
        return None
    return HeldResponse(command.message_id_being_responded_to or 0, context_id, transfer_syntax, route.listen.ae_title)
