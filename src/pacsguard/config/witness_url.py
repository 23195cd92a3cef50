"""A witness service's base URL (`store.witnesses.N.url`), checked when pacsguard.yaml is read
rather than at the first delivery: the scheme (http or https), the host (RFC 3986 3.2.2: an RFC
1123 name, an IPv4 address, or an IPv6 address in brackets), the port (RFC 3986 3.2.3: 1-65535)
and the path (RFC 3986 3.3: its characters, and each `%` followed by two hex digits).

Every URL accepted here is one the witness client (pacsguard.witness.route) can make a request
of; some the client would take are refused, because they would mislead: a user and password
(RFC 3986 3.2.1 deprecates a password there, and the URL is written in logs and errors), a query
or a fragment (the client adds `/v1/logs/LOG/checkpoints` to the path, so a query would swallow
it and a fragment would drop it), port 0 (taken as the default port), and tabs or line breaks
(which URL parsers drop without a word)."""

from __future__ import annotations

import re
from ipaddress import IPv6Address, ip_address
from urllib.parse import urlsplit

from pacsguard.config.schema import check_host

EXPECTED = "expected http://HOST:PORT or https://HOST:PORT (a base URL, optionally with a path)"
_SCHEMES = ("http", "https")

#: RFC 3986 3.3: what a path holds besides `%XX` (unreserved, sub-delims, `:`, `@` and `/`).
_PATH = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/]*")
_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: The authority once any user information is known absent: `[v6]` or a name, then `:port`.
_BRACKETED = re.compile(r"\[(?P<host>[^\]]*)\](?::(?P<port>.*))?")
_NAMED = re.compile(r"(?P<host>[^:]*)(?::(?P<port>.*))?")


def lower_scheme(url: str) -> str:
    """``url`` with an HTTP or HTTPS scheme written in lower case: a scheme is case-insensitive and
    lower case is its normal form (RFC 3986 3.1, 6.2.2.1), and every later check and the witness
    client compare it so. Anything else is returned as given, for the checks to name."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.lower()}{sep}{rest}" if sep and scheme.lower() in _SCHEMES else url


def witness_url_problem(url: str) -> str | None:
    """What is wrong with ``url`` as a witness's base URL, in the administrator's words (never
    quoting a password), or None when the witness client can use it as written."""
    bad = next((n for n, ch in enumerate(url) if ord(ch) <= 0x20 or ord(ch) == 0x7F), None)
    if bad is not None:
        # urlsplit drops tabs and line breaks (WHATWG URL), so this is looked for in the raw text.
        return (f"a URL holds no space or control character, and this one has one at position {bad + 1} "
                "(write a space in the path as %20, RFC 3986 2.1)")
    if not url.startswith(("http://", "https://")):
        return f"{EXPECTED}, got {_shown(url)!r}"
    if "@" in url.split("://", 1)[1].split("/", 1)[0]:
        return ("it holds a user name or password (USER:PASSWORD@HOST); remove it: the witness is given "
                "its bearer token by `token`, and the URL is written in logs and errors")
    if "?" in url or "#" in url:
        return (f"it holds a query (?) or fragment (#), got {url!r}; a witness's URL takes neither: "
                "the client adds /v1/logs/LOG/checkpoints to its path")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # a netloc that NFKC normalisation changes, a bracket left open
        return f"{EXPECTED}; {exc}, got {url!r}"
    return _authority_problem(parts.netloc, url) or _path_problem(parts.path, url)


def _authority_problem(netloc: str, url: str) -> str | None:
    """The host and the port (RFC 3986 3.2.2, 3.2.3), as the client connects to them."""
    if not netloc.startswith("[") and netloc.count(":") > 1:
        return f"an IPv6 address goes in brackets (https://[2001:db8::1]:8471), got {url!r}"
    shape = _BRACKETED.fullmatch(netloc) if netloc.startswith("[") else _NAMED.fullmatch(netloc)
    if shape is None or not shape["host"]:
        return f"{EXPECTED}; it names no host, got {url!r}"
    host, port = shape["host"], shape["port"]
    problem = _ipv6_problem(host) if netloc.startswith("[") else _name_problem(host)
    if problem is not None:
        return f"{problem}, in {url!r}"
    if port is not None and not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return f"the port is a number from 1 to 65535 (or left out: 80, 443), got {port!r} in {url!r}"
    return None


def _ipv6_problem(host: str) -> str | None:
    if "%" in host:
        # RFC 6874's zone (`%25eth0`) is sent to getaddrinfo undecoded by the client: it cannot connect.
        return f"the host [{host}] has a zone (%); give a global or unique local address, or a host name"
    try:
        if isinstance(ip_address(host), IPv6Address):
            return None
    except ValueError:
        pass
    return f"expected an IPv6 address between brackets, got [{host}]"


def _name_problem(host: str) -> str | None:
    """A host name (RFC 1123) or an IPv4 address; an internationalized name is checked in the
    A-label form the client sends (RFC 5890 2.3.2.1, Python's idna codec as the client uses it)."""
    try:
        ascii_host = host if host.isascii() else host.encode("idna").decode("ascii")
        check_host(ascii_host)
    except UnicodeError:
        return f"the host {host!r} is not a valid internationalized name"
    except ValueError:
        return f"the host is neither an IP address nor a host name (RFC 1123), got {host!r}"
    return None


def _path_problem(path: str, url: str) -> str | None:
    if not _PATH.fullmatch(path.replace("%", "")):
        return f"the path holds characters a URL path cannot (RFC 3986 3.3); percent-encode them, got {url!r}"
    if _PERCENT.search(path):
        return f"the path holds a % not followed by two hex digits (RFC 3986 2.1), got {url!r}"
    return None


def _shown(url: str) -> str:
    """``url`` as an error may quote it: any user information (a password) left out."""
    scheme, sep, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    if sep and "@" in authority:
        return f"{scheme}://…@{authority.rsplit('@', 1)[1]}{slash}{path}"
    return url
