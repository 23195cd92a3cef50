"""The IDS adapter for audit events (privacy monitoring): each received audit message (an
``atna.audit.*`` Event) as one observation of kind ``access``, so rules in the IDS language watch
who accesses which patient's data."""
