"""How a listener that cannot bind its address is told: one line naming the listener, the
address, the keys that gave it and the reason, without Python's "[Errno 13]" in front.

A port below 1024 (DICOM's 104, syslog's 514 and 6514) is privileged: bound by a service that is
not root, it fails with EACCES, and the administrator needs the fix as much as the fact (the
unit's AmbientCapabilities=CAP_NET_BIND_SERVICE, docs/deployment.md).
"""

from __future__ import annotations

import errno

#: The first port an unprivileged process may bind (Linux's default net.ipv4.ip_unprivileged_port_start).
FIRST_UNPRIVILEGED_PORT = 1024


def cannot_listen(who: str, host: str, port: int, exc: OSError, keys: str = "") -> OSError:
    """The error to raise for ``exc`` (keeping its errno): ``who`` the listener ("route modalities",
    "metrics"), ``keys`` the configuration keys of its address, if any."""
    reason = exc.strerror or str(exc)
    where = f" ({keys})" if keys else ""
    text = f"{who}: cannot listen on {host}:{port}{where}: {reason}"
    if exc.errno == errno.EACCES and 0 < port < FIRST_UNPRIVILEGED_PORT:
        text += (f"; ports below {FIRST_UNPRIVILEGED_PORT} need CAP_NET_BIND_SERVICE: the unit's "
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE (docs/deployment.md), or a port of "
                 f"{FIRST_UNPRIVILEGED_PORT} or more")
    error = OSError(text)  # one argument: str() is the text alone, no "[Errno N]" in front
    error.errno = exc.errno  # kept for callers; strerror stays None, or str() would be "[Errno N] ..."
    return error
