"""Where the store is: a SQLite path relative to the configuration's folder, or a PostgreSQL URL
with its password put in from a secret (never written inline in pacsguard.yaml)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, unquote

#: libpq's connection parameters that name a file (PostgreSQL docs, "libpq: Parameter Key Words").
#: Like every path in pacsguard.yaml, a relative one is relative to the file's folder; libpq would
#: read it from the folder `serve` runs in (/ under systemd). ``sslrootcert=system`` is not a path.
_FILE_PARAMETERS = frozenset({"sslrootcert", "sslcert", "sslkey", "sslcrl", "sslcrldir", "passfile"})


def store_target(url: str, resolve: Callable[[Path], Path], password: Callable[[], str] | None = None) -> str:
    """The path or URL to open: a path is resolved; a URL gets ``password()`` (RFC 3986 3.2.1 userinfo,
    percent-encoded) when one is configured, and its query's relative file names resolved."""
    if "://" not in url:
        return str(resolve(Path(url)))
    url = _files_resolved(url, resolve)
    if password is None:
        return url
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1) if "@" in rest else ("", rest)
    return f"{scheme}://{user}:{quote(password(), safe='')}@{host}"


def _files_resolved(url: str, resolve: Callable[[Path], Path]) -> str:
    """``url`` with each relative file of its query (`_FILE_PARAMETERS`) made absolute; every other
    parameter is left as written."""
    base, sep, query = url.partition("?")
    if not sep:
        return url
    parts = []
    for item in query.split("&"):
        name, eq, value = item.partition("=")
        path = unquote(value)
        if eq and unquote(name) in _FILE_PARAMETERS and path and path != "system" and not Path(path).is_absolute():
            item = f"{name}={quote(str(resolve(Path(path))), safe='/')}"
        parts.append(item)
    return f"{base}?{'&'.join(parts)}"
