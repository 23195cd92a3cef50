"""Audit message payloads: DICOM PS3.15 A.5 / RFC 3881 XML and FHIR R4 AuditEvent JSON, parsed
into one neutral form (`AuditRecord`) that becomes an Event."""
