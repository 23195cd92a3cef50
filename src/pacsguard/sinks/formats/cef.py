"""ArcSight Common Event Format (CEF) version 0, as one text line per Event.

    CEF:0|Device Vendor|Device Product|Device Version|Signature ID|Name|Severity|Extension

Header fields escape '\\' and '|' with a backslash and cannot hold line breaks; the Extension is
space-separated key=value pairs whose values escape '\\' and '=' with a backslash and write line
breaks as the two characters '\\n' / '\\r' (ArcSight "Implementing ArcSight CEF", "CEF header and
extension escaping"). Keys come from the CEF Extension Dictionary; what has no key of its own
(patient IDs, study UIDs, AE titles) goes into the labelled custom strings cs1-cs6. docs/sinks.md
has the whole mapping.
"""

from __future__ import annotations

from typing import Iterator

from pacsguard.events.model import Event
from pacsguard.sinks.formats import common

NAME_LIMIT = 512  # the Name header field's length limit


def escape_header(value: str) -> str:
    """A header field: backslash and pipe escaped; a line break (not allowed there) becomes a space."""
    text = common.without_controls(value).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")


def escape_extension(value: str) -> str:
    """An extension value: backslash and '=' escaped, CR and LF written as \\r and \\n, other
    control characters replaced (`common.without_controls`)."""
    return (common.without_controls(value).replace("\\", "\\\\").replace("=", "\\=")
            .replace("\r", "\\r").replace("\n", "\\n"))


def _name(event: Event) -> str:
    first_line = event.message.splitlines()[0] if event.message.strip() else ""
    return (first_line.strip() or event.kind)[:NAME_LIMIT]


def _pairs(event: Event) -> Iterator[tuple[str, str]]:
    """The extension's key/value pairs, in a fixed order; empty values are left out."""
    yield "rt", str(common.epoch_ms(event.time))
    yield from common.identity(event, "externalId", "act")
    for is_source, party, side in common.sides(event):
        addr4, addr6, host, port, user = (("src", "c6a2", "shost", "spt", "suser") if is_source
                                          else ("dst", "c6a3", "dhost", "dpt", "duser"))
        if side.ip is not None:
            if side.ip_version == 4:
                yield addr4, side.ip
            else:  # CEF's src/dst are IPv4; the dictionary's IPv6 slots are labelled custom fields
                yield addr6, side.ip
                yield f"{addr6}Label", "Source IPv6 Address" if is_source else "Destination IPv6 Address"
        if side.hostname:
            yield host, side.hostname
        if side.port is not None:
            yield port, str(side.port)
        if party.user:
            yield user, party.user
    custom = (
        ("cs1", "Patient IDs", common.joined(event.patient_ids)),
        ("cs2", "Study Instance UIDs", common.joined(event.study_uids)),
        ("cs3", "Actor AE Title", event.actor.ae_title or ""),
        ("cs4", "Target AE Title", event.target.ae_title or ""),
        ("cs5", "Component", event.component),
        ("cs6", "Details", common.details_json(event)),
    )
    for key, label, value in custom:
        if value:
            yield key, value
            yield f"{key}Label", label
    if event.sop_instance_count:
        # not `cnt`: that counts repeats of the same event, this counts DICOM objects
        yield "cn1", str(event.sop_instance_count)
        yield "cn1Label", "SOP Instances"
    if event.message:
        yield "msg", event.message


def format_cef(event: Event) -> str:
    """One CEF:0 record for `event` (no syslog header, no trailing newline)."""
    header = "|".join([
        "CEF:0",
        *(escape_header(v) for v in (common.VENDOR, common.PRODUCT, common.PRODUCT_VERSION, event.kind, _name(event))),
        str(common.severity_0_10(event.severity)),
    ])
    extension = " ".join(f"{key}={escape_extension(value)}" for key, value in _pairs(event))
    return f"{header}|{extension}"
