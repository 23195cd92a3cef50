"""The embedded demo PACS as a service of `serve` (its SCP runs on pynetdicom's own threads), seeded
with the demo patients (pacsguard.demo.seed) at its first start."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pacsguard.runtime.listening import cannot_listen

if TYPE_CHECKING:
    from pacsguard.demo.config import DemoUpstreamConfig
    from pacsguard.demo.scp import DemoPACS
    from pacsguard.runtime.part import BannerRow, ServiceContext


class DemoService:
    needs_asyncio_loop = False

    def __init__(self, config: DemoUpstreamConfig, pacs: DemoPACS, storage: str) -> None:
        self.config = config
        self.pacs = pacs
        self.storage = storage

    async def start(self) -> list[BannerRow]:
        if not self.pacs.storage_dir.exists():
            # First start: a few objects of the demo patients, so queries return something.
            from pacsguard.demo.seed import seed_storage

            await asyncio.to_thread(seed_storage, self.pacs.storage_dir)
        c = self.config
        try:
            await asyncio.to_thread(self.pacs.start)
        except OSError as exc:
            raise cannot_listen(f"demo upstream {c.ae_title}", c.host, c.port, exc, "demo_upstream") from None
        return [("demo upstream (DICOM SCP)", f"{c.ae_title}@{c.host}:{c.port}", f"storage {self.storage}")]

    async def stop(self) -> None:
        await asyncio.to_thread(self.pacs.stop)


def make_service(ctx: ServiceContext) -> DemoService | None:
    from pacsguard.demo.scp import DemoPACS

    config: DemoUpstreamConfig = ctx.section
    if not config.enabled:
        return None
    storage = ctx.resolve(config.storage)
    return DemoService(config, DemoPACS(config.ae_title, config.host, config.port, storage, {}), str(storage))
