"""Where a witness request goes: straight to the witness, or through the HTTP proxy the
environment names (http_proxy, https_proxy, no_proxy, as curl and Python's urllib read them).

Through a proxy, an https:// witness is reached by a tunnel (CONNECT, RFC 9110 9.3.6) and the
TLS session is the client's own with the witness; an http:// request is sent to the proxy in
absolute form (RFC 9112 3.2.2)."""

from __future__ import annotations

import base64
import urllib.parse
import urllib.request
from dataclasses import dataclass

from pacsguard.witness.errors import WitnessError

_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Proxy:
    host: str
    port: int
    #: The Proxy-Authorization field's value (RFC 9110 11.7.2, Basic: RFC 7617), from the
    #: proxy URL's user and password; None without them.
    authorization: str | None

    @property
    def name(self) -> str:
        return authority(self.host, self.port)


@dataclass(frozen=True, slots=True)
class Route:
    tls: bool
    host: str
    port: int
    #: The Host field (RFC 9110 7.2): the URL's host and port.
    authority: str
    #: The request line's target: /path?query, or the whole URL when sent to a proxy.
    target: str
    proxy: Proxy | None

    @property
    def tunnel(self) -> bool:
        return self.proxy is not None and self.tls

    @property
    def hop(self) -> tuple[str, int]:
        """Where the TCP connection goes: the proxy, or the witness."""
        return (self.proxy.host, self.proxy.port) if self.proxy else (self.host, self.port)


def authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def route(url: str, name: str) -> Route:
    """The route of a request for ``url`` (http:// or https://), on witness ``name`` (its base URL,
    as configured). WitnessError names a URL a request cannot be made of."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        host, port = parts.hostname, parts.port or _PORTS.get(scheme)
    except ValueError:  # a port that is no number, or out of range
        raise WitnessError(f"witness {name}: the URL's port is not a port number") from None
    if scheme not in _PORTS or not host or port is None:
        raise WitnessError(f"witness {name}: not an http:// or https:// URL with a host")
    try:
        # an internationalized name goes on the wire in its A-label form (RFC 5890 2.3.2.1)
        host = host if host.isascii() else host.encode("idna").decode("ascii")
    except UnicodeError:
        raise WitnessError(f"witness {name}: its host name is not a valid internationalized name") from None
    if any(not 0x20 < ord(ch) < 0x7F for ch in host + parts.path + parts.query):
        # RFC 3986 2: a URL is visible ASCII; a space or a line break would end the request line
        raise WitnessError(f"witness {name}: the URL holds spaces or characters outside ASCII; "
                           "percent-encode them in its path (RFC 3986 2.1)")
    given = authority(host, port) if parts.port else (f"[{host}]" if ":" in host else host)
    path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
    proxy = _proxy(scheme, host, port, name)
    target = path if proxy is None or scheme == "https" else f"{scheme}://{given}{path}"
    return Route(scheme == "https", host, port, given, target, proxy)


def _proxy(scheme: str, host: str, port: int, url: str) -> Proxy | None:
    """The proxy the environment names for ``scheme`` (urllib.request.getproxies), unless
    no_proxy exempts ``host``."""
    proxies = urllib.request.getproxies()
    given = proxies.get(scheme)
    if not given or _exempt(host, port, proxies.get("no", "")):
        return None
    parts = urllib.parse.urlsplit(given if "://" in given else f"http://{given}")
    kind = parts.scheme.lower()
    try:
        proxy_host, proxy_port = parts.hostname, parts.port or _PORTS.get(kind)
    except ValueError:
        proxy_host = proxy_port = None
    # An https:// proxy is spoken to in TLS; only a tunnel's CONNECT (plain text to the proxy, as
    # urllib has it) can be sent without that, so only the tunnel takes one.
    if not proxy_host or proxy_port is None or kind not in _PORTS or (kind == "https" and scheme == "http"):
        raise WitnessError(f"witness {url}: the proxy {scheme}_proxy names ({given}) is not one this "
                           "client can use: give it as http://HOST:PORT")
    auth = None
    if parts.username is not None and parts.password is not None:
        pair = f"{urllib.parse.unquote(parts.username)}:{urllib.parse.unquote(parts.password)}"
        auth = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    return Proxy(proxy_host, proxy_port, auth)


def _exempt(host: str, port: int, no_proxy: str) -> bool:
    """Whether no_proxy (comma-separated names, each matching itself and the names under it, with
    or without a :port; `*` all) exempts ``host``."""
    if no_proxy.strip() == "*":
        return True
    host = host.lower()
    with_port = authority(host, port)
    for item in no_proxy.split(","):
        name = item.strip().lstrip(".").lower()
        if name and any(given == name or given.endswith("." + name) for given in (host, with_port)):
            return True
    return False
