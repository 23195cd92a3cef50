"""The secondary sinks a configuration's `sinks:` section names: JSON lines and RFC 5424 syslog."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pacsguard.config.schema import SinksConfig
    from pacsguard.events.sink import EventSink


def build_sinks(cfg: SinksConfig, resolve: Callable[[Path], Path]) -> list[EventSink]:
    """Open every configured sink; relative paths are resolved with ``resolve``. The caller closes them."""
    sinks: list[EventSink] = []
    if cfg.jsonl is not None:
        from pacsguard.sinks.jsonl import JsonLinesSink

        path = resolve(cfg.jsonl.path)
        try:
            sinks.append(JsonLinesSink(path, message_format=cfg.jsonl.format))
        except OSError as exc:  # say which setting names the file: the administrator fixes that line
            raise OSError(f"sinks.jsonl.path: cannot open {path} for appending ({exc.strerror or exc})") from None
    if cfg.syslog is not None:
        from pacsguard.sinks.syslog import SyslogSink
        from pacsguard.tls.contexts import client_context

        s = cfg.syslog
        context = None
        if s.transport == "tls":
            context = client_context(ca_file=s.ca_file and resolve(s.ca_file),
                                     cert_file=s.cert_file and resolve(s.cert_file),
                                     key_file=s.key_file and resolve(s.key_file))
        sinks.append(SyslogSink(s.host, s.port, transport=s.transport, ssl_context=context, facility=s.facility,
                                message_format=s.format, max_message_size=s.max_message_size))
    return sinks
