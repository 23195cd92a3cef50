"""TLS for pacsguard: RFC 9325 (BCP 195) contexts, peer descriptions for audit, and a small CA."""

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
