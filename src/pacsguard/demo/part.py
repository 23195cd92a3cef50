"""The embedded demo PACS as a part: the `demo_upstream:` section and a service, no commands."""

from __future__ import annotations

from pacsguard.runtime.part import Dependency, Part

PART = Part("demo", "An embedded DICOM storage/query SCP, so the demo needs no PACS.", section="demo_upstream",
            config="pacsguard.demo.config:DemoUpstreamConfig", service="pacsguard.demo.service:make_service",
            requires=(Dependency("pynetdicom", "pip install pynetdicom"),))
