"""The audit record repository (IHE ITI-20 Record Audit Event): syslog receivers for PS3.15 A.5,
RFC 3881 and FHIR AuditEvent messages, each stored as one sealed Event with its raw bytes."""
