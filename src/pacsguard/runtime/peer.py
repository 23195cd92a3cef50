"""Whether a connection kept open between uses is still there: one look, without waiting, before
something is sent on it (the syslog sink, the outbound ATNA sender, a store-and-forward
destination's kept association)."""

from __future__ import annotations

import re
import select
import socket
import ssl
from dataclasses import dataclass
from typing import Literal

Probe = Literal["quiet", "data", "eof", "reset"]

#: OpenSSL's reason for a TLS alert received from the peer (RFC 8446 6.2, RFC 5246 7.2):
#: SSLV3_ALERT_BAD_CERTIFICATE, TLSV1_ALERT_UNKNOWN_CA, TLSV13_ALERT_CERTIFICATE_REQUIRED, ...
_ALERT = re.compile(r"(?:SSLV3|TLSV1|TLSV13)_ALERT_(\w+)")


@dataclass(frozen=True, slots=True)
class Look:
    """What one look at an idle connection saw: ``state`` as :func:`probe` returns it, and for
    "reset" the error that ended the connection (None when the descriptor was already closed), so
    that a caller can say why: the TLS alert the peer sent (:func:`tls_alert` names it), or the
    socket's error."""

    state: Probe
    error: OSError | None = None


def tls_alert(exc: BaseException) -> str | None:
    """The name of the TLS alert the peer sent, as RFC 8446 6.2 spells it ("unknown ca",
    "certificate required", "bad certificate", "protocol version"), when ``exc`` reports one;
    None for any other error (a reset, a local TLS failure)."""
    if not isinstance(exc, ssl.SSLError):
        return None
    alert = _ALERT.fullmatch(exc.reason or "")
    return alert.group(1).lower().replace("_", " ") if alert else None


def look(sock: socket.socket) -> Look:
    """What the peer sent while the connection was idle, and the error when it ended it: nothing
    ("quiet"), application data ("data", read and dropped: the caller decides what it means), its
    end ("eof"), or a reset or TLS error ("reset", with ``error``: a TLS alert received in TLS 1.3
    after the client's handshake completed is the peer refusing the client's certificate). TLS
    records that carry no data (TLS 1.3 session tickets, RFC 8446 4.6.1) are consumed and count
    as quiet. The socket's timeout is as it was after the look."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except ValueError:  # a closed descriptor (fileno -1): nothing to tell
        return Look("reset")
    except OSError as exc:  # a descriptor select cannot take
        return Look("reset", exc)
    if not readable and not (isinstance(sock, ssl.SSLSocket) and sock.pending()):  # decrypted, not yet read
        return Look("quiet")
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        return Look("data" if sock.recv(65536) else "eof")
    except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
        return Look("quiet")
    except OSError as exc:  # ssl.SSLError included: the alert's name is in its reason
        return Look("reset", exc)
    finally:
        try:
            sock.settimeout(timeout)
        except OSError:
            pass


def probe(sock: socket.socket) -> Probe:
    """What the peer sent while the connection was idle: nothing ("quiet"), application data
    ("data"), its end ("eof"), or a reset or TLS error ("reset"); :func:`look` keeps the error
    that says why."""
    return look(sock).state
