"""What `serve` runs for witnesses: delivery of this store's checkpoints to `store.witnesses`, and
the witness service of the `witness:` section. Delivery is the store's checkpoint listener, so it
outlives the services: the store's final checkpoint, signed when it closes, is delivered too."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pacsguard.witness.build import destinations, witness_server
from pacsguard.witness.delivery import WitnessDelivery

if TYPE_CHECKING:
    from pacsguard.runtime.part import BannerRow, ServiceContext
    from pacsguard.witness.config import WitnessServiceConfig
    from pacsguard.witness.server import WitnessServer


class WitnessService:
    needs_asyncio_loop = False

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.config: WitnessServiceConfig = ctx.section
        self.delivery: WitnessDelivery | None = None
        self.server: WitnessServer | None = None

    async def start(self) -> list[BannerRow]:
        ctx, rows = self.ctx, []
        targets = ctx.loaded.config.store.witnesses
        if targets:
            found = destinations(targets, ctx.resolve, ctx.store.leaves)
            self.delivery = WitnessDelivery(found, ctx.bus.publish)
            ctx.store.add_checkpoint_listener(self.delivery)
            for newest in (await asyncio.to_thread(ctx.store.checkpoints))[-1:]:
                self.delivery.signed(newest)  # one signed before serve started is witnessed too
            rows += [("witness of the store", d.name, "each signed checkpoint") for d in found]
        if self.config.enabled:
            self.server = witness_server(self.config, ctx.resolve, ctx.bus.publish)
            url = self.server.start()
            rows.append(("witness service", url, f"{len(self.config.logs)} log(s) pinned"))
        return rows

    async def stop(self) -> None:
        if self.server is not None:
            await asyncio.to_thread(self.server.close)


def make_service(ctx: ServiceContext) -> WitnessService | None:
    config: WitnessServiceConfig = ctx.section
    return WitnessService(ctx) if config.enabled or ctx.loaded.config.store.witnesses else None
