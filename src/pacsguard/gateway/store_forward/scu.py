"""The pynetdicom associations a store-and-forward route opens to a destination as an SCU (PS3.8
7.1: the route's AE title calls the destination's): the C-FIND that asks whether an object already
arrived (pacsguard.gateway.store_forward.verify). C-STOREs go on pacsguard's own SCU (sender.py)."""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

from pynetdicom import AE
from pynetdicom.presentation import PresentationContext

from pacsguard.config.schema import Destination, Route
from pacsguard.dicom.pdu import (
    RJ_REASON_USER_CALLED_AE_NOT_RECOGNIZED,
    RJ_REASON_USER_CALLING_AE_NOT_RECOGNIZED,
    RJ_RESULT_PERMANENT,
    RJ_RESULT_TRANSIENT,
    RJ_SOURCE_SERVICE_USER,
    AssociateRJ,
)
from pacsguard.dicom.reasons import rj_reason


def associate(route: Route, destination: Destination, contexts: Sequence[PresentationContext],
              ssl_context: ssl.SSLContext | None = None) -> Any:
    """Request an association with ``contexts`` proposed; the pynetdicom Association, established
    or not (the caller looks at ``is_established`` / ``is_rejected``)."""
    d = destination
    ae = AE(ae_title=route.listen.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = max(d.connect_timeout, 30.0)
    ae.connection_timeout = d.connect_timeout
    ae.maximum_pdu_size = route.limits.max_pdu_length
    tls: Any = (ssl_context, d.tls.server_name or d.host) if d.tls is not None else None
    return ae.associate(d.host, d.port, contexts=list(contexts), ae_title=d.ae_title, tls_args=tls)


def why_not(destination: Destination, *, rejected: bool, rj: AssociateRJ | None = None) -> str:
    """Why no association with ``destination`` was established; given its A-ASSOCIATE-RJ, with
    the rejection's reason and result (PS3.8 9.3.4, Table 9-21), so that an administrator tells a
    destination that no longer knows the AE title it is called by (its AE title changed) or the
    route's calling AE title from one that is busy for a moment."""
    d = destination
    if not rejected:
        return f"{d.ae_title}@{d.host}:{d.port} could not be reached"
    said = "rejected the association"
    if rj is not None:
        result = {RJ_RESULT_PERMANENT: "permanent", RJ_RESULT_TRANSIENT: "transient"}.get(rj.result,
                                                                                        f"result {rj.result}")
        said += f": {rj_reason(rj.source, rj.reason)} ({result}, PS3.8 Table 9-21)"
        if (rj.source, rj.reason) == (RJ_SOURCE_SERVICE_USER, RJ_REASON_USER_CALLED_AE_NOT_RECOGNIZED):
            said += f"; is its AE title still {d.ae_title}?"
        elif (rj.source, rj.reason) == (RJ_SOURCE_SERVICE_USER, RJ_REASON_USER_CALLING_AE_NOT_RECOGNIZED):
            said += "; it must know the route's AE title as a modality"
    return f"{d.ae_title}@{d.host}:{d.port} {said}"


def unreachable(destination: Destination, assoc: Any) -> str:
    """Why a pynetdicom association with ``destination`` was not established."""
    return why_not(destination, rejected=bool(assoc.is_rejected))
