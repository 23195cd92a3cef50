"""The audit record repository as a part: the `atna:` section, its service in `serve`, `pacsguard atna ...`."""

from __future__ import annotations

from pacsguard.runtime.part import Dependency, Part

PART = Part("atna", "The audit record repository: IHE ATNA syslog and RESTful audit events in, sources.",
            section="atna", config="pacsguard.atna.config:AtnaConfig", service="pacsguard.atna.service:make_service",
            commands="pacsguard.cli.atna:app", kinds="pacsguard.atna.kinds:KINDS",
            requires=(Dependency("defusedxml", "pip install defusedxml"),))
