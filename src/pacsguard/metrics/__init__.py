"""The metrics part: a Prometheus text endpoint and /healthz for the hospital's monitoring (docs/metrics.md).

Nothing is re-exported here, so importing the part's registration (metrics.part) stays cheap."""
