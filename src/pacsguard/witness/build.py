"""Opening what the configuration names: the store's witnesses (`store.witnesses`) and this
pacsguard's own witness service (`witness:`). Relative paths are taken from the configuration's folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pacsguard.config.schema import WitnessTarget
from pacsguard.events.model import Event
from pacsguard.owner_only import make_private_dir
from pacsguard.store import keys
from pacsguard.witness.accept import PinnedLog, Witness
from pacsguard.witness.config import WitnessServiceConfig
from pacsguard.witness.delivery import Destination
from pacsguard.witness.ledger import Ledger
from pacsguard.witness.push import HttpWitness, Leaves
from pacsguard.witness.server import WitnessServer

Resolve = Callable[[Path], Path]


def destinations(targets: Sequence[WitnessTarget], resolve: Resolve, leaves: Leaves) -> list[Destination]:
    from pacsguard.tls.contexts import client_context

    out: list[Destination] = []
    for n, t in enumerate(targets):
        if t.file is not None:
            from pacsguard.witness.file import FileWitness

            out.append(FileWitness(resolve(t.file)))
        elif t.syslog is not None:
            from pacsguard.witness.syslog import SyslogWitness

            s = t.syslog
            context = client_context(ca_file=s.ca_file and resolve(s.ca_file),
                                     cert_file=s.cert_file and resolve(s.cert_file),
                                     key_file=s.key_file and resolve(s.key_file)) if s.transport == "tls" else None
            out.append(SyslogWitness(s.host, s.port, transport=s.transport, context=context, facility=s.facility))
        elif t.url is not None and t.token is not None:
            from pacsguard.witness.http import WitnessClient

            context = client_context(ca_file=t.ca_file and resolve(t.ca_file),
                                     cert_file=t.cert_file and resolve(t.cert_file),
                                     key_file=t.key_file and resolve(t.key_file)) \
                if t.url.startswith("https://") else None
            out.append(HttpWitness(WitnessClient(t.url, t.token.resolve(f"store.witnesses.{n}.token"), context), leaves,
                                   t.witness_key and resolve(t.witness_key), f"store.witnesses.{n}.witness_key"))
    return out


def witness_server(cfg: WitnessServiceConfig, resolve: Resolve, publish: Callable[[Event], None]) -> WitnessServer:
    """The witness service of the `witness:` section; its countersigning key is made on first start."""
    from pacsguard.tls.contexts import server_context

    key_path = resolve(cfg.signing_key)
    if not key_path.exists():
        keys.generate_key(key_path)
    pinned: dict[str, PinnedLog] = {}
    for n, log in enumerate(cfg.logs):
        public = keys.load_public_key(resolve(log.public_key), role=f"witness.logs.{n}.public_key")
        pinned[keys.key_id(public)] = PinnedLog(public, log.token.resolve(f"witness.logs.{n}.token"), log.name)
    signing = keys.load_private_key(key_path, role="witness.signing_key")
    witness = Witness(Ledger(make_private_dir(resolve(cfg.storage))), signing, pinned,
                      publish)
    context = None
    if cfg.tls is not None:
        tls = cfg.tls
        context = server_context(resolve(tls.cert_file), resolve(tls.key_file),
                                 ca_file=tls.ca_file and resolve(tls.ca_file),
                                 require_client_cert=tls.require_client_cert)
    return WitnessServer(witness, cfg.host, cfg.port, context=context, timeout=cfg.timeout)
