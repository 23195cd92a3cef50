"""The engine with the DICOM adapter attached under the engine's former method names.

Transitional: the inline gateway still calls ``engine.observe_dicom`` & co. on the engine the
CLI builds.  Once the gateway holds a :class:`~.adapter.DicomAdapter` itself, this module goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from pacsguard.dicom.errors import DecodeError
from pacsguard.dicom.events import ProtocolEvent
from pacsguard.ids.engine import Alert, Engine, FlowState
from pacsguard.ids.observation import Flow
from pacsguard.ids.rules import IdsSettings, Rule

from .adapter import DicomAdapter
from .state import DicomFlowState

__all__ = ["DicomEngine"]


class DicomEngine(Engine):
    """An :class:`~pacsguard.ids.engine.Engine` whose :attr:`dicom` adapter answers the former
    ``observe_*`` calls; :meth:`flow_closed` reports every close as DICOM's."""

    def __init__(self, rules: list[Rule], settings: IdsSettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(rules, settings, clock=clock)
        self.dicom = DicomAdapter(self)

    def observe_dicom(self, flow: Flow, ev: ProtocolEvent, now: float | None = None) -> list[Alert]:
        return self.dicom.observe(flow, ev, now)

    def observe_decode_error(self, flow: Flow, from_client: bool, err: DecodeError,
                             now: float | None = None) -> list[Alert]:
        return self.dicom.decode_error(flow, from_client, err, now)

    def observe_non_dicom(self, flow: Flow, first_bytes: bytes, now: float | None = None) -> list[Alert]:
        return self.dicom.non_dicom(flow, first_bytes, now)

    def observe_association_result(self, flow: Flow, *, rejected: bool, reason: str, by: str,
                                   now: float | None = None) -> list[Alert]:
        return self.dicom.association_result(flow, rejected=rejected, reason=reason, by=by, now=now)

    def flow_closed(self, flow: Flow, now: float | None = None, *,
                    new_state: Callable[[float], FlowState] | None = None) -> list[Alert]:
        return super().flow_closed(flow, now, new_state=new_state or DicomFlowState)
