"""Event sinks besides the store: a JSON-lines file and RFC 5424 syslog over TCP/TLS.

Names are re-exported lazily (PEP 562): the syslog sink loads the TLS stack only when used."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacsguard._lazy import lazy_exports

if TYPE_CHECKING:
    from pacsguard.sinks.jsonl import JsonLinesSink
    from pacsguard.sinks.syslog import SD_ID, SyslogSink, escape_param_value, format_rfc5424, frame_octet_counted

__all__ = [
    "JsonLinesSink",
    "SD_ID",
    "SyslogSink",
    "escape_param_value",
    "format_rfc5424",
    "frame_octet_counted",
]

__getattr__ = lazy_exports(__name__, {"JsonLinesSink": "pacsguard.sinks.jsonl", **dict.fromkeys(
    ("SD_ID", "SyslogSink", "escape_param_value", "format_rfc5424", "frame_octet_counted"), "pacsguard.sinks.syslog")})
