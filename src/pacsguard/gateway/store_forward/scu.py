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


def why_not(destination: Destination, *, rejected: bool) -> str:
    """Why no association with ``destination`` was established."""
    d = destination
    return f"{d.ae_title}@{d.host}:{d.port} {'rejected the association' if rejected else 'could not be reached'}"


def unreachable(destination: Destination, assoc: Any) -> str:
    """Why a pynetdicom association with ``destination`` was not established."""
    return why_not(destination, rejected=bool(assoc.is_rejected))
