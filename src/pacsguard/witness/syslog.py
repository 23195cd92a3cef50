"""A syslog/SIEM witness: each checkpoint as one RFC 5424 message whose SD-ELEMENT (6.3) carries the
signed tree head, sent by the syslog sink's sender (queue, reconnect, TLS per RFC 5425):

    <PRI>1 TIMESTAMP HOST pacsguard PROCID checkpoint [checkpoint@32473 log=".." size=".."
    root=".." signature=".." time=".."] BOM{the checkpoint statement as JSON}

A SIEM keeps what it receives out of the host's reach; `audit verify --witness FILE` reads the
statements back from an export of the MSG parts (one JSON object per line).
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import time
from datetime import timezone

from pacsguard.events.model import time_from_us
from pacsguard.sinks.syslog import BOM, SyslogSink, escape_param_value
from pacsguard.store.statement import to_statement
from pacsguard.store.store import Checkpoint
from pacsguard.witness.errors import WitnessError

SD_ID = "checkpoint@32473"  # RFC 5612's documentation PEN, as the event sink's SD-ID
SEVERITY_NOTICE = 5


def format_checkpoint(cp: Checkpoint, *, hostname: str, facility: int, procid: str) -> bytes:
    """One RFC 5424 message (6) for ``cp``, without transport framing."""
    statement = to_statement(cp)
    stamp = time_from_us(cp.time_us).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    params = [("log", cp.key_id), ("size", str(cp.tree_size)), ("root", cp.root.hex()),
              ("signature", statement["signature"]), ("time", statement["time"])]
    sd = " ".join(f'{name}="{escape_param_value(value)}"' for name, value in params)
    host = "".join(ch if 33 <= ord(ch) <= 126 else "_" for ch in hostname)[:255] or "-"
    head = f"<{facility * 8 + SEVERITY_NOTICE}>1 {stamp} {host} pacsguard {procid} checkpoint [{SD_ID} {sd}] "
    return head.encode("ascii") + BOM + json.dumps(statement, sort_keys=True).encode()


class SyslogWitness:
    """Hands each checkpoint to a SyslogSink and waits (``confirm`` seconds) until it has been written
    to the collector's connection; otherwise the checkpoint is reported unreachable, while the
    sink keeps it queued and resends it when the collector is back."""

    def __init__(self, host: str, port: int, *, transport: str = "tls", context: ssl.SSLContext | None = None,
                 facility: int = 10, confirm: float = 5.0) -> None:
        self.name = f"syslog {host}:{port}"
        self.sink = SyslogSink(host, port, transport="tls" if transport == "tls" else "tcp", ssl_context=context,
                               facility=facility)
        self.facility = facility
        self.confirm = confirm
        self._hostname = socket.gethostname()
        self._queued = 0  # the largest tree size handed to the sink

    def deliver(self, checkpoint: Checkpoint) -> None:
        if checkpoint.tree_size > self._queued:  # a retry must not queue it twice: the sink resends
            self.sink.send_messages([format_checkpoint(checkpoint, hostname=self._hostname, facility=self.facility,
                                                       procid=str(os.getpid()))])
            self._queued = checkpoint.tree_size
        end = time.monotonic() + self.confirm
        while self.sink.pending:
            if time.monotonic() >= end:
                raise WitnessError(f"witness {self.name}: the checkpoint at size {checkpoint.tree_size} is not "
                                   f"sent after {self.confirm:g} s (the collector is unreachable; still queued)")
            time.sleep(0.05)

    def close(self) -> None:
        self.sink.close()
