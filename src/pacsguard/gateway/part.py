"""The gateway as a part: the `gateway:` section, the service `serve` runs, `pacsguard gateway ...`."""

from __future__ import annotations

from pacsguard.runtime.part import Dependency, Part

PART = Part("gateway", "The DICOM security gateway.", section="gateway",
            config="pacsguard.config.schema:GatewayConfig", service="pacsguard.gateway.service:make_service",
            commands="pacsguard.cli.gateway:app", kinds="pacsguard.gateway.kinds:KINDS",
            requires=(Dependency("uvloop", "pip install uvloop"),))
