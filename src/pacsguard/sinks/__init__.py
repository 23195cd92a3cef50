"""Event sinks besides the store: a JSON-lines file and RFC 5424 syslog over TCP/TLS."""

from pacsguard.sinks.jsonl import JsonLinesSink
from pacsguard.sinks.syslog import (
    SD_ID,
    SyslogSink,
    escape_param_value,
    format_rfc5424,
    frame_octet_counted,
)

__all__ = [
    "JsonLinesSink",
    "SD_ID",
    "SyslogSink",
    "escape_param_value",
    "format_rfc5424",
    "frame_octet_counted",
]
