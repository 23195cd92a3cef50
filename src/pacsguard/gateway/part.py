"""The gateway as a part: the `gateway:` section, the service `serve` runs, `pacsguard gateway ...`,
and `pacsguard spool ...` for its store-and-forward routes."""

from __future__ import annotations

from pacsguard.runtime.part import Dependency, Part

PARTS = (
    Part("gateway", "The DICOM security gateway.", section="gateway",
         config="pacsguard.config.schema:GatewayConfig", service="pacsguard.gateway.service:make_service",
         commands="pacsguard.cli.gateway:app", kinds="pacsguard.gateway.kinds:KINDS",
         requires=(Dependency("uvloop", "pip install uvloop"),)),
    Part("spool", "The store-and-forward spool: what waits, retry, purge.", commands="pacsguard.cli.spool:app"),
)
