"""Where the store is: a SQLite path relative to the configuration's folder, or a PostgreSQL URL
with its password put in from a secret (never written inline in pacsguard.yaml)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote


def store_target(url: str, resolve: Callable[[Path], Path], password: Callable[[], str] | None = None) -> str:
    """The path or URL to open: a path is resolved; a URL gets ``password()`` (RFC 3986 3.2.1 userinfo,
    percent-encoded) when one is configured."""
    if "://" not in url:
        return str(resolve(Path(url)))
    if password is None:
        return url
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1) if "@" in rest else ("", rest)
    return f"{scheme}://{user}:{quote(password(), safe='')}@{host}"
