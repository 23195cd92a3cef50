"""The floor of a relay written in Python: uvloop, one Protocol per leg, every read written to the
other leg as it comes, TCP_NODELAY, no decoding, no checks, no records. bench/gateway.py runs it as
the path ``python-copy`` (``--python-relay``), so that what pacsguard's inspection costs per
C-STORE is the gateway's figure minus this one, and what Python and its event loop cost is this one
minus socat's.

    .venv/bin/python bench/python_relay.py LISTEN_PORT UPSTREAM_HOST UPSTREAM_PORT
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

import uvloop


class Leg(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: Any = None  # uvloop's TCPTransport is not an asyncio.Transport subclass
        self.other: Leg | None = None
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is None or other.transport is None:
            self.early.append(data)  # the upstream leg is still connecting
        else:
            other.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.close()


async def main(listen_port: int, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()

    async def connect(client: Leg) -> None:
        try:
            _, upstream = await loop.create_connection(Leg, host, port)
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        client.other, upstream.other = upstream, client
        assert upstream.transport is not None
        for chunk in client.early:
            upstream.transport.write(chunk)
        client.early.clear()

    def accepted() -> Leg:
        client = Leg()
        loop.create_task(connect(client))
        return client

    server = await loop.create_server(accepted, "127.0.0.1", listen_port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
