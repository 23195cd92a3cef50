"""The metrics part: the `metrics:` section and the service `serve` runs; no commands, no Events of its own."""

from __future__ import annotations

from pacsguard.runtime.part import Part

PART = Part("metrics", "Prometheus metrics and /healthz for the hospital's monitoring.", section="metrics",
            config="pacsguard.metrics.config:MetricsConfig", service="pacsguard.metrics.service:make_service")
