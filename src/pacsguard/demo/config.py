"""The `demo_upstream:` section of pacsguard.yaml: the embedded demo PACS (a PS3.4 Annex B storage
and Annex C query SCP), off unless asked for."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pacsguard.config.schema import Host
from pacsguard.config.strict import Strict


class DemoUpstreamConfig(Strict):
    enabled: bool = False
    host: Host = "127.0.0.1"
    port: int = Field(11113, ge=1, le=65535)
    ae_title: str = Field("DEMOPACS", min_length=1, max_length=16)
    storage: Path = Path("var/demo-pacs")
