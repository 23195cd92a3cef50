"""The DICOM adapter of the IDS: decoder events (:mod:`pacsguard.dicom.events`) in, observations
out (DESIGN.md "Seams": a protocol adapter feeds the engine).

* :mod:`.kinds` - the DICOM observation kinds and fields;
* :mod:`.state` - what is remembered per DICOM connection (AE pair, services, retrieves);
* :mod:`.adapter` - :class:`DicomAdapter`, used by the passive sensor and the inline gateway;
* :mod:`.sniff` - is it DICOM? (A-ASSOCIATE-RQ / acceptor PDU / P-DATA-TF plausibility).

Names are loaded on first use (PEP 562), so importing :mod:`.kinds` does not import the adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacsguard._lazy import lazy_exports

if TYPE_CHECKING:
    from .adapter import DicomAdapter
    from .sniff import looks_like_acceptor_pdu, plausible_pdata_header
    from .state import DicomFlowState

__all__ = ["DicomAdapter", "DicomFlowState", "looks_like_acceptor_pdu", "plausible_pdata_header"]

_HOMES = {
    "DicomAdapter": ".adapter",
    "DicomFlowState": ".state",
    "looks_like_acceptor_pdu": ".sniff",
    "plausible_pdata_header": ".sniff",
}


__getattr__ = lazy_exports(__name__, _HOMES)
