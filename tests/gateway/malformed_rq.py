"""A-ASSOCIATE-RQs with one field a PACS parser could trip on (issue #16, section 3), built with the
project's encoders and patched where the encoders refuse to write such a value; each with the field
the gateway must name and the A-ASSOCIATE-RJ (result, source, reason; PS3.8 Table 9-21) it answers."""

from __future__ import annotations

from dataclasses import dataclass

from pacsguard.dicom import pdu as P
from pacsguard.dicom.conformance import (
    RJ_APPLICATION_CONTEXT,
    RJ_CALLED_AE,
    RJ_CALLING_AE,
    RJ_INVALID,
    RJ_PROTOCOL_VERSION,
)

VERIFICATION = "1.2.840.10008.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


@dataclass(frozen=True)
class Malformed:
    name: str
    raw: bytes
    field: str  # what the refusal's rule names: conformance.<field>
    value: str  # what its reason quotes
    rj: tuple[int, int, int]


def build(calling: str, called: str = "PACSGUARD", *, version: int = 1, app: str = P.DICOM_APPLICATION_CONTEXT,
          abstract: str = VERIFICATION, transfer: str = IMPLICIT_LE,
          info: P.UserInformation | None | bool = True) -> bytes:
    user = P.UserInformation.build(max_length=16384, implementation_class_uid="1.2.3.4") if info is True else info
    return P.encode_associate_rq(P.AssociateRQ(
        called_ae_title=called, calling_ae_title=calling, user_information=user or None,
        presentation_contexts=[P.PresentationContextRQ(1, abstract, [transfer])],
        application_context_name=app, protocol_version=version))


def _with_ae(raw: bytes, offset: int, field: bytes) -> bytes:
    return raw[:offset] + field + raw[offset + 16:]


def _info(*items: P.UserInfoSubItem) -> P.UserInformation:
    return P.UserInformation([P.MaximumLength(16384), P.ImplementationClassUID("1.2.3.4"), *items])


def cases(prefix: str) -> list[Malformed]:
    """One request per fault; *prefix* makes each calling AE title unique (a recording upstream
    finds a connection by it) where the calling AE title is not the fault."""
    def ae(tag: str) -> str:
        return f"{prefix}{tag}"[:16]

    return [
        Malformed("protocol-version-0", build(ae("V0"), version=0), "protocol-version", "0x0000",
                  RJ_PROTOCOL_VERSION),
        Malformed("protocol-version-2", build(ae("V2"), version=2), "protocol-version", "0x0002",
                  RJ_PROTOCOL_VERSION),
        Malformed("calling-ae-spaces", _with_ae(build("X"), P.CALLING_AE_OFFSET, b" " * 16), "calling-ae-title", "''",
                  RJ_CALLING_AE),
        Malformed("calling-ae-nuls", _with_ae(build("X"), P.CALLING_AE_OFFSET, b"\0" * 16), "calling-ae-title", "''",
                  RJ_CALLING_AE),
        Malformed("called-ae-spaces", _with_ae(build(ae("CD")), P.CALLED_AE_OFFSET, b" " * 16), "called-ae-title",
                  "''", RJ_CALLED_AE),
        Malformed("application-context", build(ae("AC"), app="1.2.840.10008.3.1.1.01"), "application-context-name",
                  "'1.2.840.10008.3.1.1.01'", RJ_APPLICATION_CONTEXT),
        Malformed("abstract-syntax", build(ae("AS"), abstract="1.2.840.10008.1.1.x"),
                  "presentation-context-1.abstract-syntax", "'1.2.840.10008.1.1.x'", RJ_INVALID),
        Malformed("transfer-syntax", build(ae("TS"), transfer="1.2..840"), "presentation-context-1.transfer-syntax",
                  "'1.2..840'", RJ_INVALID),
        Malformed("implementation-class-uid",
                  build(ae("IC"), info=P.UserInformation([P.MaximumLength(16384), P.ImplementationClassUID("1.02.3")])),
                  "implementation-class-uid", "'1.02.3'", RJ_INVALID),
        Malformed("scu-role", build(ae("RS"), info=_info(P.RoleSelection(VERIFICATION, 2, 0))),
                  "role-selection.scu-role", "2", RJ_INVALID),
        Malformed("scp-role", build(ae("RP"), info=_info(P.RoleSelection(VERIFICATION, 1, 0xFF))),
                  "role-selection.scp-role", "255", RJ_INVALID),
        Malformed("no-user-information", build(ae("NU"), info=None), "user-information", "absent", RJ_INVALID),
        Malformed("sub-item-type", build(ae("ST"), info=_info(P.UnknownSubItem(0x20, b"x"))),
                  "user-information.sub-item-type", "0x20", RJ_INVALID),
        # User Identity Negotiation values PS3.7 D.3.3.7.1 does not define (Table D.3-14)
        Malformed("identity-type-0", build(ae("T0"), info=_info(P.UserIdentityRQ(0, 0, b"alice"))),
                  "user-identity.type", "0", RJ_INVALID),
        Malformed("identity-type-9", build(ae("T9"), info=_info(P.UserIdentityRQ(9, 0, b"alice"))),
                  "user-identity.type", "9", RJ_INVALID),
        Malformed("identity-positive-response-2", build(ae("PR"), info=_info(P.UserIdentityRQ(1, 2, b"alice"))),
                  "user-identity.positive-response-requested", "2", RJ_INVALID),
        Malformed("identity-passcode-with-type-1",
                  build(ae("SF"), info=_info(P.UserIdentityRQ(1, 1, b"alice", b"secret"))),
                  "user-identity.secondary-field", "<6 bytes>", RJ_INVALID),
    ]


def undecodable(prefix: str) -> list[tuple[str, bytes, str]]:
    """Requests the decoder itself refuses (PS3.8 9.2 AA-1: an invalid PDU is aborted): name, bytes,
    and the protocol violation code the gateway records."""
    base = build(f"{prefix}UD"[:16])
    long_uid = "1." + "2" * 70  # PS3.5 9.1: at most 64 characters
    uid_at = base.index(IMPLICIT_LE.encode())
    long_ts = (base[:uid_at - 2] + len(long_uid).to_bytes(2, "big") + long_uid.encode()
               + base[uid_at + len(IMPLICIT_LE):])
    long_ts = _relength(long_ts, len(long_uid) - len(IMPLICIT_LE))
    return [
        ("calling-ae-control-character", _with_ae(base, P.CALLING_AE_OFFSET, b"AB\x01CD".ljust(16)), "bad-ae-title"),
        ("calling-ae-backslash", _with_ae(base, P.CALLING_AE_OFFSET, b"AB\\CD".ljust(16)), "bad-ae-title"),
        ("transfer-syntax-too-long", long_ts, "bad-uid"),
    ]


def _relength(raw: bytes, grown: int) -> bytes:
    """*raw* with the PDU-length and the enclosing presentation context item's length grown by *grown*."""
    pdu_length = int.from_bytes(raw[2:6], "big") + grown
    pc_at = raw.index(bytes((P.ITEM_PRESENTATION_CONTEXT_RQ, 0)), P.ASSOCIATE_ITEMS_OFFSET)
    pc_length = int.from_bytes(raw[pc_at + 2:pc_at + 4], "big") + grown
    return (raw[:2] + pdu_length.to_bytes(4, "big") + raw[6:pc_at + 2] + pc_length.to_bytes(2, "big")
            + raw[pc_at + 4:])
