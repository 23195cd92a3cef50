"""The `metrics:` section of pacsguard.yaml: where the Prometheus endpoint and /healthz listen.

Off by default: a security gateway opens no port its administrator did not ask for. Enabled, it
listens on loopback unless a host is configured, since the text exposition names routes and rules."""

from __future__ import annotations

from pydantic import Field

from pacsguard.config.schema import Host
from pacsguard.config.strict import Strict


class MetricsConfig(Strict):
    enabled: bool = False
    host: Host = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)  # 0: any free port (the banner shows which)
    timeout: float = Field(5.0, gt=0, le=60)  # seconds a client has to send its request and a probe to answer
