"""pacsguard's own events to an external Audit Record Repository (IHE ITI-20, Secure Node / Secure
Application actor): mapped to PS3.15 A.5 messages, spooled durably, sent over RFC 5425 TLS."""
