"""Witnesses: copies of the store's signed checkpoints held outside the host (RFC 9162 8.2's
"witnesses" of a transparency log). Delivery to a file, a syslog/SIEM or a second pacsguard, the
witness service itself, and reading what a witness holds for `audit verify --witness`."""
