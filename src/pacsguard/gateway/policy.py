"""A route's policy as small, pure checks. Each returns a `Verdict` carrying the DICOM answer the
gateway gives when it refuses: A-ASSOCIATE-RJ result/source/reason (PS3.8 9.3.4, Table 9-21),
presentation context result (PS3.8 9.3.3.2, Table 9-18), or a DIMSE status (PS3.7 Annex C).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from ipaddress import ip_address

from pydicom.uid import UID

from pacsguard.config.schema import Policy, Route
from pacsguard.dicom import dimse

# A-ASSOCIATE-RJ fields (PS3.8 Table 9-21)
RJ_PERMANENT, RJ_TRANSIENT = 1, 2
SRC_SERVICE_USER, SRC_PROVIDER_ACSE, SRC_PROVIDER_PRESENTATION = 1, 2, 3
REASON_NO_REASON = 1
REASON_CALLING_AE_NOT_RECOGNIZED = 3
REASON_CALLED_AE_NOT_RECOGNIZED = 7
REASON_TEMPORARY_CONGESTION = 1  # with source 3
REASON_LOCAL_LIMIT_EXCEEDED = 2  # with source 3

# Presentation context results (PS3.8 Table 9-18)
PC_USER_REJECTION = 1
PC_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3

VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str = ""
    rule: str = ""  # which policy key decided: for the event and the administrator
    rj: tuple[int, int, int] | None = None  # result, source, reason
    status: int | None = None  # DIMSE status for a refused request

    @property
    def refused(self) -> bool:
        return not self.allowed


ALLOW = Verdict(True)


def check_source(policy: Policy, host: str) -> Verdict:
    if policy.hosts is None:
        return ALLOW
    try:
        addr = ip_address(host.split("%", 1)[0])
    except ValueError:
        return Verdict(False, f"source {host} is not an IP address", "policy.hosts",
                       rj=(RJ_PERMANENT, SRC_SERVICE_USER, REASON_NO_REASON))
    if any(addr in net for net in policy.hosts):
        return ALLOW
    return Verdict(False, f"source host {host} is not in the route's allowed hosts", "policy.hosts",
                   rj=(RJ_PERMANENT, SRC_SERVICE_USER, REASON_NO_REASON))


def check_association(route: Route, calling_ae: str, called_ae: str, cert_subject: str | None,
                      cert_cn: str | None) -> Verdict:
    """Called AE title, calling AE title and client certificate, in that order (PS3.8 7.1.1)."""
    if called_ae != route.listen.ae_title:
        return Verdict(False, f"called AE title {called_ae!r} is not this gateway's ({route.listen.ae_title!r})",
                       "listen.ae_title", rj=(RJ_PERMANENT, SRC_SERVICE_USER, REASON_CALLED_AE_NOT_RECOGNIZED))
    allowed = route.policy.calling_ae_titles
    if allowed is not None and calling_ae not in allowed:
        return Verdict(False, f"calling AE title {calling_ae!r} is not allowed", "policy.calling_ae_titles",
                       rj=(RJ_PERMANENT, SRC_SERVICE_USER, REASON_CALLING_AE_NOT_RECOGNIZED))
    subjects = route.policy.cert_subjects
    if subjects is not None and not ({cert_subject, cert_cn} & set(subjects)):
        who = cert_subject or "no client certificate"
        return Verdict(False, f"client certificate subject ({who}) is not allowed", "policy.cert_subjects",
                       rj=(RJ_PERMANENT, SRC_SERVICE_USER, REASON_NO_REASON))
    return ALLOW


@lru_cache(maxsize=4096)
def service_of_abstract_syntax(uid: str) -> str:
    """The policy service class that a presentation context's abstract syntax serves."""
    if uid == VERIFICATION:
        return "C-ECHO"
    if uid == STORAGE_COMMITMENT_PUSH:
        return "storage-commitment"
    name = UID(uid).name if UID(uid).is_valid else uid
    upper = name.upper()
    for suffix, service in (("- FIND", "C-FIND"), ("- MOVE", "C-MOVE"), ("- GET", "C-GET")):
        if upper.endswith(suffix):
            return service
    if uid == "1.2.840.10008.5.1.4.31" or "WORKLIST" in upper:
        return "C-FIND"
    if uid.startswith("1.2.840.10008.5.1.4.1.1.") or (upper.endswith("STORAGE") and "COMMITMENT" not in upper):
        return "C-STORE"
    return "N-*"


def check_context(policy: Policy, abstract_syntax: str) -> Verdict:
    """Whether a proposed presentation context may be accepted (else user-rejection)."""
    service = service_of_abstract_syntax(abstract_syntax)
    # C-GET retrieves over storage contexts the requestor proposes in the SCP role.
    needed = {service}
    if service == "C-STORE" and "C-STORE" not in policy.services and "C-GET" in policy.services:
        needed = {"C-GET"}
    if not needed & set(policy.services):
        return Verdict(False, f"service {service} ({_name(abstract_syntax)}) is not allowed", "policy.services",
                       status=dimse.STATUS_SOP_CLASS_NOT_SUPPORTED)
    if policy.sop_classes is not None and abstract_syntax not in policy.sop_classes and abstract_syntax != VERIFICATION:
        return Verdict(False, f"SOP class {_name(abstract_syntax)} is not allowed", "policy.sop_classes",
                       status=dimse.STATUS_SOP_CLASS_NOT_SUPPORTED)
    return ALLOW


def service_of_command(command_field: int, abstract_syntax: str | None) -> str | None:
    """The policy service of a DIMSE request; None for responses and C-CANCEL (follows its request)."""
    base = command_field & 0x7FFF
    if command_field & 0x8000 or base == dimse.C_CANCEL_RQ:
        return None
    if base in (dimse.C_ECHO_RQ, dimse.C_STORE_RQ, dimse.C_FIND_RQ, dimse.C_MOVE_RQ, dimse.C_GET_RQ):
        return {dimse.C_ECHO_RQ: "C-ECHO", dimse.C_STORE_RQ: "C-STORE", dimse.C_FIND_RQ: "C-FIND",
                dimse.C_MOVE_RQ: "C-MOVE", dimse.C_GET_RQ: "C-GET"}[base]
    if abstract_syntax == STORAGE_COMMITMENT_PUSH:
        return "storage-commitment"
    return "N-*"


def check_request(policy: Policy, command: dimse.CommandSet, abstract_syntax: str | None) -> Verdict:
    """A DIMSE request on an accepted context: its service and, for C-MOVE, its destination."""
    service = service_of_command(command.command_field, abstract_syntax)
    if service is None:
        return ALLOW
    if service not in policy.services:
        return Verdict(False, f"{service} is not allowed on this route", "policy.services",
                       status=dimse.STATUS_NOT_AUTHORIZED)
    if service == "C-MOVE":
        dest = (command.move_destination or "").strip()
        if dest not in policy.move_destinations:
            return Verdict(False, f"C-MOVE destination {dest!r} is not allowed", "policy.move_destinations",
                           status=dimse.STATUS_MOVE_DESTINATION_UNKNOWN)
    return ALLOW


def _name(uid: str) -> str:
    try:
        name = UID(uid).name
    except Exception:  # noqa: BLE001 - a hostile UID string must not break the message
        return uid
    return f"{name} [{uid}]" if name != uid else uid
