"""TLS for pacsguard: RFC 9325 (BCP 195) contexts, peer descriptions for audit, and a small CA.

Names are re-exported lazily (PEP 562) so that importing the package does not load `cryptography`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pacsguard._lazy import lazy_exports

if TYPE_CHECKING:
    from pacsguard.tls.certs import make_ca, make_cert
    from pacsguard.tls.contexts import (
        TLS12_CIPHERS,
        TLSConfigError,
        client_context,
        describe_peer,
        explain_tls_error,
        server_context,
    )

__all__ = [
    "TLS12_CIPHERS",
    "TLSConfigError",
    "client_context",
    "describe_peer",
    "explain_tls_error",
    "make_ca",
    "make_cert",
    "server_context",
]

__getattr__ = lazy_exports(__name__, {**dict.fromkeys(("make_ca", "make_cert"), "pacsguard.tls.certs"), **dict.fromkeys(
    ("TLS12_CIPHERS", "TLSConfigError", "client_context", "describe_peer", "explain_tls_error", "server_context"),
    "pacsguard.tls.contexts")})
