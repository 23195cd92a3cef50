"""The repository as a service of `serve` (and of `pacsguard atna listen`): the listeners the `atna:`
section names, each publishing the Events of what it receives to the bus."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pacsguard.atna.syslog.listeners import DatagramListener, Limits, Publish, StreamListener

if TYPE_CHECKING:
    from pathlib import Path

    from pacsguard.atna.config import AtnaConfig
    from pacsguard.runtime.part import BannerRow, ServiceContext
    from pacsguard.store import EventStore


class AtnaService:
    needs_asyncio_loop = False

    def __init__(self, config: AtnaConfig, publish: Publish, store: EventStore | None = None,
                 resolve: Any = None) -> None:
        self.config = config
        self.publish = publish
        self.store = store
        self.resolve: Any = resolve or (lambda p: p)
        self.listeners: list[Any] = []
        #: Where each listener is bound, by name (tls, tcp, udp, http), once started.
        self.addresses: dict[str, tuple[str, int]] = {}

    async def start(self) -> list[BannerRow]:
        from pacsguard.tls.contexts import server_context

        cfg = self.config
        limits = Limits(cfg.max_message, cfg.idle_timeout)
        rows: list[BannerRow] = []
        try:
            if cfg.tls is not None:
                t = cfg.tls
                context = server_context(self._path(t.cert_file), self._path(t.key_file),
                                         ca_file=self._path(t.ca_file) if t.ca_file else None,
                                         require_client_cert=t.require_client_cert)
                await self._listen("tls", StreamListener(self.publish, limits, context), t.host, t.port)
                rows.append(("ATNA syslog (RFC 5425 TLS)", self._where("tls"),
                             "mutual TLS" if t.require_client_cert else "server TLS"))
            if cfg.tcp is not None:
                await self._listen("tcp", StreamListener(self.publish, limits), cfg.tcp.host, cfg.tcp.port)
                rows.append(("ATNA syslog (RFC 6587 TCP)", self._where("tcp"), "octet counting or LF"))
            if cfg.udp is not None:
                await self._listen("udp", DatagramListener(self.publish), cfg.udp.host, cfg.udp.port)
                rows.append(("ATNA syslog (RFC 5426 UDP)", self._where("udp"), ""))
            if cfg.http is not None:
                from pacsguard.atna.http import RestfulAtna

                if self.store is None:
                    raise LookupError("the RESTful ATNA endpoint needs the store")
                http = RestfulAtna(cfg.http, self.publish, self.store, self.resolve, cfg.max_message)
                await self._listen("http", http, cfg.http.host, cfg.http.port)
                rows.append(("ATNA RESTful (ITI-81)", f"{http.scheme}://{self._where('http')}/AuditEvent",
                             "token" if cfg.http.token else "mutual TLS"))
        except BaseException:
            await self.stop()
            raise
        return rows

    async def _listen(self, name: str, listener: Any, host: str, port: int) -> None:
        try:
            self.addresses[name] = await listener.start(host, port)
        except OSError as exc:
            raise OSError(exc.errno, f"atna {name} listener cannot listen on {host}:{port}: {exc.strerror}") from None
        self.listeners.append(listener)

    def _where(self, name: str) -> str:
        host, port = self.addresses[name]
        return f"{host}:{port}"

    def _path(self, path: Path) -> Path:
        resolved: Path = self.resolve(path)
        return resolved

    async def stop(self) -> None:
        for listener in reversed(self.listeners):
            await listener.close()
        self.listeners.clear()


def make_service(ctx: ServiceContext) -> AtnaService | None:
    config: AtnaConfig = ctx.section
    if not config.enabled:
        return None
    return AtnaService(config, ctx.bus.publish, ctx.store, ctx.resolve)
