"""The TLS part: commands only (a private CA and certificates); routes and sinks use pacsguard.tls directly."""

from __future__ import annotations

from pacsguard.runtime.part import Dependency, Part

PART = Part("tls", "Private CA and certificates for TLS (RFC 9325 profile).", commands="pacsguard.cli.tls:app",
            requires=(Dependency("cryptography", "pip install cryptography"),))
