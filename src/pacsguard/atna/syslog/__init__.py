"""Syslog transport for audit messages: framing (RFC 6587, RFC 5425), headers (RFC 5424, RFC 3164)
and the asyncio listeners (TLS, TCP, UDP)."""
