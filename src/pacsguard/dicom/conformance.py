"""Is a decoded A-ASSOCIATE-RQ acceptable to the service provider? (PS3.8 9.2 AE-6, 9.3.2)

:func:`~pacsguard.dicom.pdu.parse_associate_rq` accepts every request whose structure it can
follow, so that a passive observer reports what it saw.  A relay must also decide whether an
acceptor may be shown the request: the fields a parser could trip on are checked here against
the standard, and each fault names the field, its value, and the A-ASSOCIATE-RJ
(result, source, reason; PS3.8 Table 9-21) that answers it.

- Protocol version: bit 0 must be set; a receiver "shall only test that bit 0 is set"
  (PS3.8 9.3.2), so other bits are no fault.
- Called / calling AE title: not only spaces or NULs (PS3.5 6.2, VR AE: "a value consisting
  solely of spaces shall not be used"); the decoder already refuses forbidden characters.
- Application context name, abstract and transfer syntaxes, implementation class UID and the
  SOP class UIDs of the user information sub-items: UIDs as PS3.5 9.1 defines them (at most 64
  characters, digits and periods, no empty component, no leading zero in a component).
- User information item: present (PS3.8 9.3.2: it carries the mandatory Maximum Length, D.1).
- SCP/SCU Role Selection: each role value 0 or 1 (PS3.7 D.3.3.4).
- User Identity Negotiation (PS3.7 D.3.3.7.1, Table D.3-14): User-Identity-Type 1-5,
  Positive-response-requested 0 or 1, a secondary field (the passcode) only with type 2.
  Its fields are never quoted: they carry passcodes and tokens.
- User information sub-item types: 0x51-0xFF are the extension range (PS3.8 Annex D); a
  receiver ignores a type it does not know there (PS3.7 D.3.3), so such a sub-item is no
  fault.  A type below 0x51 is not a sub-item at all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from . import pdu as P

#: PS3.5 9.1: components of digits without a leading zero, separated by periods.
_UID: Final = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
#: PS3.5 9.1: "shall not exceed 64 total characters".
MAX_UID_LENGTH: Final = 64
#: PS3.8 Annex D: the first type of the user information sub-item range.
FIRST_SUB_ITEM_TYPE: Final = 0x51
#: PS3.7 Table D.3-14: username, username and passcode, Kerberos, SAML, JWT.
USER_IDENTITY_TYPES: Final = range(P.USER_IDENTITY_USERNAME, P.USER_IDENTITY_JWT + 1)

_USER = (P.RJ_RESULT_PERMANENT, P.RJ_SOURCE_SERVICE_USER)
#: Refused by the service provider for a PDU parameter it cannot accept (PS3.8 Table 9-21).
RJ_INVALID: Final = (P.RJ_RESULT_PERMANENT, P.RJ_SOURCE_SERVICE_PROVIDER_ACSE, P.RJ_REASON_ACSE_NO_REASON)
RJ_PROTOCOL_VERSION: Final = (P.RJ_RESULT_PERMANENT, P.RJ_SOURCE_SERVICE_PROVIDER_ACSE,
                              P.RJ_REASON_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED)
RJ_CALLED_AE: Final = (*_USER, P.RJ_REASON_USER_CALLED_AE_NOT_RECOGNIZED)
RJ_CALLING_AE: Final = (*_USER, P.RJ_REASON_USER_CALLING_AE_NOT_RECOGNIZED)
RJ_APPLICATION_CONTEXT: Final = (*_USER, P.RJ_REASON_USER_APPLICATION_CONTEXT_NOT_SUPPORTED)


@dataclass(frozen=True, slots=True)
class Fault:
    """One field of an A-ASSOCIATE-RQ the service provider cannot accept."""

    field: str  # e.g. "calling-ae-title", "presentation-context-3.transfer-syntax"
    value: str  # the offending value, printable
    problem: str  # what is wrong, citing the standard
    rj: tuple[int, int, int]  # the A-ASSOCIATE-RJ result, source, reason that answers it

    def __str__(self) -> str:
        return f"{self.field} {self.value}: {self.problem}"


def uid_problem(uid: str) -> str | None:
    """Why *uid* is not a UID (PS3.5 9.1), or None when it is one."""
    if len(uid) > MAX_UID_LENGTH:
        return f"is {len(uid)} characters long, more than {MAX_UID_LENGTH} (PS3.5 9.1)"
    if _UID.fullmatch(uid) is None:
        return "is not a UID: digits in components separated by periods, no leading zeros (PS3.5 9.1)"
    return None


def _uid_fault(field: str, uid: str, rj: tuple[int, int, int] = RJ_INVALID) -> Fault | None:
    problem = uid_problem(uid)
    return Fault(field, repr(uid), problem, rj) if problem else None


def associate_rq_faults(rq: P.AssociateRQ) -> list[Fault]:
    """Every field of *rq* that makes it unacceptable, in PDU order; empty when it is acceptable."""
    faults: list[Fault | None] = []
    if not rq.protocol_version & 1:
        faults.append(Fault("protocol-version", f"0x{rq.protocol_version:04X}",
                            "bit 0 (version 1) is not set (PS3.8 9.3.2)", RJ_PROTOCOL_VERSION))
    for field, title, rj in (("called-ae-title", rq.called_ae_title, RJ_CALLED_AE),
                             ("calling-ae-title", rq.calling_ae_title, RJ_CALLING_AE)):
        if not title:
            faults.append(Fault(field, "''", "is only spaces or NULs (PS3.5 6.2, VR AE)", rj))
    faults.append(_uid_fault("application-context-name", rq.application_context_name, RJ_APPLICATION_CONTEXT))
    for pc in rq.presentation_contexts:
        where = f"presentation-context-{pc.context_id}"
        faults.append(_uid_fault(f"{where}.abstract-syntax", pc.abstract_syntax))
        faults.extend(_uid_fault(f"{where}.transfer-syntax", ts) for ts in pc.transfer_syntaxes)
    faults.extend(_user_information_faults(rq.user_information))
    return [f for f in faults if f is not None]


def _user_information_faults(info: P.UserInformation | None) -> list[Fault | None]:
    if info is None:
        return [Fault("user-information", "absent", "the item is mandatory: it carries the Maximum Length "
                      "(PS3.8 9.3.2, D.1)", RJ_INVALID)]
    # A missing Maximum Length sub-item inside the item is no fault here: a relay states its own
    # (PS3.8 D.1), so the acceptor never sees the request without one.
    faults: list[Fault | None] = []
    if info.implementation_class_uid is not None:
        faults.append(_uid_fault("implementation-class-uid", info.implementation_class_uid))
    for role in info.role_selections:
        faults.append(_uid_fault("role-selection.sop-class-uid", role.sop_class_uid))
        for name, value in (("scu-role", role.scu_role), ("scp-role", role.scp_role)):
            if value not in (0, 1):
                faults.append(Fault(f"role-selection.{name}", str(value),
                                    f"for {role.sop_class_uid} is neither 0 nor 1 (PS3.7 D.3.3.4)", RJ_INVALID))
    identity = info.user_identity
    if isinstance(identity, P.UserIdentityRQ):
        faults.extend(user_identity_faults(identity))
    for ext in info.extended_negotiations:
        faults.append(_uid_fault("extended-negotiation.sop-class-uid", ext.sop_class_uid))
    for common in info.common_extended_negotiations:
        faults.append(_uid_fault("common-extended-negotiation.sop-class-uid", common.sop_class_uid))
        faults.append(_uid_fault("common-extended-negotiation.service-class-uid", common.service_class_uid))
        faults.extend(_uid_fault("common-extended-negotiation.related-sop-class-uid", uid)
                      for uid in common.related_general_sop_classes)
    for unknown in info.unknown:
        if unknown.item_type < FIRST_SUB_ITEM_TYPE:
            faults.append(Fault("user-information.sub-item-type", f"0x{unknown.item_type:02X}",
                                f"is below 0x{FIRST_SUB_ITEM_TYPE:02X}, the first user information sub-item "
                                "type (PS3.8 Annex D)", RJ_INVALID))
    return faults


def user_identity_faults(identity: P.UserIdentityRQ) -> list[Fault | None]:
    """The values of a User Identity Negotiation sub-item (RQ) that PS3.7 D.3.3.7.1 (Table D.3-14)
    does not define; an acceptor cannot act on them (pynetdicom's association thread dies on an
    unknown type, leaving the requestor waiting)."""
    faults: list[Fault | None] = []
    kind = identity.identity_type
    if kind not in USER_IDENTITY_TYPES:
        faults.append(Fault("user-identity.type", str(kind),
                            "is not a User-Identity-Type: 1 username, 2 username and passcode, 3 Kerberos, "
                            "4 SAML, 5 JWT (PS3.7 D.3.3.7.1, Table D.3-14)", RJ_INVALID))
    if identity.positive_response_requested not in (0, 1):
        faults.append(Fault("user-identity.positive-response-requested", str(int(identity.positive_response_requested)),
                            "is neither 0 nor 1 (PS3.7 D.3.3.7.1, Table D.3-14)", RJ_INVALID))
    if identity.secondary_field and kind != P.USER_IDENTITY_USERNAME_AND_PASSCODE:
        faults.append(Fault("user-identity.secondary-field", f"<{len(identity.secondary_field)} bytes>",
                            f"with User-Identity-Type {kind}: only type 2 (username and passcode) has a secondary "
                            "field (PS3.7 D.3.3.7.1, Table D.3-14)", RJ_INVALID))
    return faults
