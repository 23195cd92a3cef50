"""The schema of pacsguard.yaml (pydantic). Unknown keys are errors; every section documents
its keys in docs/configuration.md. Parts read their own section; this module imports no part.
The gateway's models stay here until they move to pacsguard.gateway (the registry points at them)."""

from __future__ import annotations

import os
import re
import socket
from ipaddress import IPv4Network, IPv6Network, ip_address
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import unquote_plus

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo, field_validator, model_validator

from pacsguard.config.networks import parse_network
from pacsguard.config.strict import Strict

MAX_SECRET_BYTES = 64 * 1024  # a password or token, never a whole file


class SecretRef(Strict):
    """A secret is named, never written inline: `{env: NAME}` or `{file: PATH}`."""

    env: str | None = None
    file: Path | None = None

    @field_validator("file")
    @classmethod
    def _beside_the_config(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """A relative `{file: PATH}` is relative to pacsguard.yaml's folder, as every path of the file
        is (docs/configuration.md), not to the folder `serve` happens to run in (systemd's
        WorkingDirectory=/var/lib/pacsguard for a file in /etc/pacsguard)."""
        base = (info.context or {}).get("base")
        if value is not None and base is not None and not value.is_absolute():
            return Path(base) / value
        return value

    @model_validator(mode="after")
    def _one(self) -> "SecretRef":
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env (an environment variable) or file (a path)")
        if self.file is not None and self.file.exists() and not self.file.is_file():
            raise ValueError(f"{self.file} is not a regular file (a secret is read from a file holding only it)")
        return self

    def resolve(self, key: str | None = None) -> str:
        """The secret. LookupError says why not; with ``key`` (where the file names this secret,
        e.g. `atna.http.token`) the message starts with it, so the administrator knows which."""
        if key is None:
            return self._resolve()
        try:
            return self._resolve()
        except LookupError as exc:
            raise LookupError(f"{key}: {exc}") from None

    def _resolve(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise LookupError(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None
        try:
            # A regular file of bounded size only: {file: /dev/zero} must not read until memory runs out.
            if not self.file.exists():
                raise LookupError(f"{self.file}: no such secret file")
            if not self.file.is_file():
                raise LookupError(f"{self.file}: not a regular file; a secret is read from a file holding only it")
            with self.file.open("rb") as f:
                data = f.read(MAX_SECRET_BYTES + 1)
        except OSError as exc:
            raise LookupError(f"{self.file}: cannot read the secret ({exc.strerror})") from None
        if len(data) > MAX_SECRET_BYTES:
            raise LookupError(f"{self.file}: longer than {MAX_SECRET_BYTES:,} bytes; not a secret file")
        try:
            return data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise LookupError(f"{self.file}: not UTF-8 text; a secret file holds the secret as text") from None


class SyslogCollector(Strict):
    """An RFC 5424 collector: where the syslog sink sends events and a syslog witness checkpoints."""

    host: Host
    port: int = Field(6514, ge=1, le=65535)
    transport: Literal["tcp", "tls"] = "tls"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    facility: int = Field(10, ge=0, le=23, description="RFC 5424 facility; 10 is authpriv")


class WitnessTarget(Strict):
    """One witness of the store's checkpoints (docs/store.md, "Witnesses"): exactly one of `file`
    (append JSON lines), `syslog` (an RFC 5424 message per checkpoint) or `url` (a pacsguard witness
    service, with its `token` and, for https, `ca_file`/`cert_file`/`key_file`)."""

    file: Path | None = Field(None, description="a file to append each checkpoint to (JSON lines)")
    syslog: SyslogCollector | None = Field(None, description="a syslog/SIEM collector")
    url: str | None = Field(None, description="a pacsguard witness service, http(s)://HOST:PORT")
    token: SecretRef | None = Field(None, description="the bearer token the witness service gave this log")
    ca_file: Path | None = Field(None, description="CA of the witness service's certificate (https)")
    cert_file: Path | None = Field(None, description="client certificate, when the witness requires one")
    key_file: Path | None = None
    witness_key: Path | None = Field(None, description="the witness's public key: check its countersignatures")

    @field_validator("url")
    @classmethod
    def _scheme_lower(cls, url: str | None) -> str | None:
        from pacsguard.config.witness_url import lower_scheme  # it takes check_host from here

        return None if url is None else lower_scheme(url)

    @model_validator(mode="after")
    def _one_kind(self) -> "WitnessTarget":
        given = [name for name in ("file", "syslog", "url") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of file, syslog or url (found {', '.join(given) or 'none'})")
        extra = [name for name in ("token", "ca_file", "cert_file", "key_file", "witness_key")
                 if getattr(self, name) is not None]
        if self.url is None and extra:
            raise ValueError(f"{', '.join(extra)}: only a url witness takes these")
        if self.url is not None:
            self._url_usable(self.url)
            if self.token is None:
                raise ValueError("a url witness needs the token it gave this log: token: {env: NAME} or {file: PATH}")
        return self

    def _url_usable(self, url: str) -> None:
        """The URL as the witness client will use it (config/witness_url.py), checked when the file
        is read, not at the first delivery. TLS files given with http:// are refused, as `atna.http`
        refuses half a TLS block: they would be ignored, and the token sent in the clear."""
        from pacsguard.config.witness_url import witness_url_problem  # it takes check_host from here

        problem = witness_url_problem(url)
        if problem is not None:
            raise ValueError(f"url: {problem}")
        tls = [name for name in ("ca_file", "cert_file", "key_file") if getattr(self, name) is not None]
        if url.startswith("http://") and tls:
            raise ValueError(f"{', '.join(tls)}: only an https:// url uses these (an http:// witness would "
                             "ignore them, and its token would go in the clear): write https://, or remove them")


class StoreConfig(Strict):
    url: str = Field("var/pacsguard.db", description="SQLite path, or postgresql://USER@HOST:PORT/DB")
    password: SecretRef | None = Field(None, description="PostgreSQL password, from env or file")
    signing_key: Path = Field(Path("var/keys/store-signing.key"), description="Ed25519 checkpoint key")
    checkpoint_interval: float = Field(60.0, gt=0, le=86_400, description="seconds between signed checkpoints")
    journal: str = Field("auto", min_length=1,
                         description="where events are durable before the store's commit: auto (SQLite: FILE.journal "
                                     "beside it; PostgreSQL: none), none (answers wait for the store's commit), or "
                                     "a path on this host (docs/store.md)")
    witnesses: list[WitnessTarget] = Field(default_factory=list,
                                           description="where each signed checkpoint is sent, off this host")

    @field_validator("url")
    @classmethod
    def _no_inline_password(cls, value: str) -> str:
        if "://" in value:
            auth = value.split("://", 1)[1].split("@", 1)
            if len(auth) == 2 and ":" in auth[0]:
                raise ValueError("the URL holds a password; put it in store.password as {env: NAME} or {file: PATH}")
            # libpq takes connection parameters in the query too (PostgreSQL docs, 34.1.1.2,
            # "Connection URIs"): `?password=` is as inline as `user:password@`.
            query = value.split("?", 1)[1] if "?" in value else ""
            names = {unquote_plus(part.split("=", 1)[0]).strip().lower() for part in query.split("&")}
            if names & {"password", "sslpassword"}:
                raise ValueError("the URL holds a password in its query; put it in store.password as "
                                 "{env: NAME} or {file: PATH}")
        return value


class JsonLinesConfig(Strict):
    path: Path
    format: Literal["json", "ecs"] = Field(
        "json", description="line format: json (pacsguard's canonical JSON) or ecs (Elastic Common Schema)")


class SyslogConfig(SyslogCollector):
    format: Literal["json", "cef", "leef", "ecs"] = Field(
        "json", description="MSG format: json (pacsguard's own), cef (ArcSight), leef (QRadar), ecs (Elastic)")
    # pacsguard.sinks.syslog's MAX_MESSAGE and MIN_MESSAGE (a test holds them together): the most a
    # default Debian rsyslog takes, and the least RFC 5424 6.1 lets a receiver take.
    max_message_size: int = Field(8096, ge=480, le=1024 * 1024,
                                  description="octets; a longer event is sent shortened (docs/sinks.md)")


class SinksConfig(Strict):
    jsonl: JsonLinesConfig | None = None
    syslog: SyslogConfig | None = None


AETitle = str  # 1-16 characters of the default repertoire, no backslash (PS3.5 6.2)

SERVICES = ("C-ECHO", "C-STORE", "C-FIND", "C-MOVE", "C-GET", "storage-commitment", "N-*")
Service = Literal["C-ECHO", "C-STORE", "C-FIND", "C-MOVE", "C-GET", "storage-commitment", "N-*"]


#: An address or CIDR in a list of networks: an error's key names the list item (hosts.0).
Network = Annotated[IPv4Network | IPv6Network, BeforeValidator(parse_network)]


def parse_networks(value: Any) -> list[IPv4Network | IPv6Network]:
    """A YAML list of addresses/CIDRs as networks; an error names the item that is not one."""
    return [parse_network(item) for item in value or []]


def check_ae_title(value: str) -> str:
    text = value.strip()
    if not 1 <= len(text) <= 16 or "\\" in text or not all(32 <= ord(c) < 127 for c in text):
        raise ValueError(f"an AE title is 1-16 printable ASCII characters without backslash, got {value!r}")
    return text


#: A host name's label (RFC 1123 2.1): letters, digits and hyphens, not at either end.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
#: Addresses that listen on every interface (IPv4, IPv6).
WILDCARDS = frozenset({"0.0.0.0", "::"})


def check_host(value: str) -> str:
    """An IP address (IPv4 or IPv6) or a host name (RFC 1123): `999.1.1.1` and `a b c` are
    neither, and an empty host would listen on every interface (say 0.0.0.0 or :: for that)."""
    text = value.strip()
    if not text:
        raise ValueError("expected an IP address or a host name, got an empty string (for every interface "
                         "say 0.0.0.0 or ::)")
    try:
        ip_address(text)
        return text
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    if len(text) > 253 or not all(_LABEL.match(label) for label in labels) or labels[-1].isdigit():
        raise ValueError(f"expected an IP address or a host name (RFC 1123), got {value!r}")
    return text


#: A host field: an IP address or an RFC 1123 host name, never empty (check_host).
Host = Annotated[str, AfterValidator(check_host)]


class ListenTLS(Strict):
    cert_file: Path
    key_file: Path
    ca_file: Path | None = Field(None, description="CA that client certificates must chain to")
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _ca_for_mtls(self) -> "ListenTLS":
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file (the CA client certificates must chain to)")
        return self


class UpstreamTLS(Strict):
    ca_file: Path | None = Field(None, description="CA to verify the upstream; default: the system store")
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = Field(None, description="name to check in the upstream certificate; default: host")


class Listen(Strict):
    host: Host = "127.0.0.1"
    port: int = Field(..., ge=1, le=65535)
    ae_title: AETitle
    tls: ListenTLS | None = None

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))


class Upstream(Strict):
    host: Host
    port: int = Field(..., ge=1, le=65535)
    ae_title: AETitle
    tls: UpstreamTLS | None = None
    connect_timeout: float = Field(10.0, gt=0, le=300)

    _ae = field_validator("ae_title")(classmethod(lambda cls, v: check_ae_title(v)))


class Policy(Strict):
    """The allow-lists of a route. A list that is absent (null) allows all; an empty list allows none."""

    calling_ae_titles: list[AETitle] | None = Field(None, description="allowed calling AE titles")
    hosts: list[Network] | None = Field(None, description="allowed source addresses/CIDRs")
    cert_subjects: list[str] | None = Field(None, description="allowed client certificate subjects (RFC 4514) or CNs")
    services: list[Service] = Field(["C-ECHO", "C-STORE", "C-FIND", "C-MOVE", "C-GET"])
    sop_classes: list[str] | None = Field(None, description="allowed abstract syntaxes: UIDs or pydicom keywords")
    move_destinations: list[AETitle] = Field([], description="AE titles C-MOVE may send to")

    @field_validator("calling_ae_titles", "move_destinations")
    @classmethod
    def _aes(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [check_ae_title(v) for v in value]

    @field_validator("sop_classes")
    @classmethod
    def _uids(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else uids_of(value, "SOP class keyword (e.g. CTImageStorage)")


def uids_of(value: list[str], what: str, *, transfer_syntaxes: bool = False) -> list[str]:
    """UIDs, or pydicom's keywords for them (PS3.6 Table A-1), as UIDs; ``what`` names the keyword
    expected in the error. ``transfer_syntaxes``: each must be one (PS3.5 10)."""
    from pydicom._uid_dict import UID_dictionary
    from pydicom.uid import UID

    by_keyword = {entry[4]: uid for uid, entry in UID_dictionary.items() if entry[4]}
    out = []
    for item in value:
        if item and item[0].isdigit():
            if not UID(item).is_valid:
                raise ValueError(f"{item!r} is not a valid UID")
            uid = item
        elif item in by_keyword:
            uid = by_keyword[item]
        else:
            raise ValueError(f"{item!r} is neither a UID nor a known {what}")
        if transfer_syntaxes and not UID(uid).is_transfer_syntax:
            raise ValueError(f"{item!r} is not a transfer syntax (PS3.6 Table A-1)")
        out.append(uid)
    return out


class Limits(Strict):
    max_associations: int = Field(256, ge=1, description="concurrent associations on this route")
    max_associations_per_source: int = Field(16, ge=1, description="concurrent associations from one host")
    max_pdu_length: int = Field(4 * 1024 * 1024, ge=4096, le=2**32 - 1, description="largest PDU accepted, bytes")
    artim_timeout: float = Field(30.0, gt=0, le=600, description="seconds to wait for A-ASSOCIATE-RQ / release")
    idle_timeout: float = Field(300.0, gt=0, le=86_400, description="seconds without traffic before abort")
    response_timeout: float = Field(
        3600.0, gt=0, le=86_400, description="seconds without traffic before abort while a request of the client "
        "waits for the PACS's final response (idle_timeout does not apply then)")
    requests_per_minute: int | None = Field(None, ge=1, description="DIMSE requests per source per minute")
    refusals_recorded_per_minute: int = Field(
        10, ge=0, le=100_000, description="associations refused from one host by one rule recorded one by one "
        "per minute; the rest are counted in one gateway.refusals.summary event a minute")
    min_pdu_rate: float = Field(
        32.0, gt=0, le=1_048_576, description="KiB/s: a PDU must arrive whole within artim_timeout plus its "
        "length at this rate, or the association is aborted (slow senders holding a slot)")


class Destination(Upstream):
    """One upstream a store-and-forward route forwards every object to (PS3.4 B.2, as a C-STORE SCU)."""

    name: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$",
                             description="names the destination in the spool; default: AE_TITLE-HOST-PORT")
    verify_resend: Literal["find", "never"] = Field(
        "find", description="before sending again an object whose last send had no recorded answer: ask the "
        "destination with a C-FIND whether it holds it (find), or send it again without asking (never)")
    idle_release: float = Field(
        5.0, ge=0, le=3600, description="seconds an association to this destination stays open with nothing to "
        "send, so that objects arriving one at a time share it; 0: released after each batch")

    @property
    def key(self) -> str:
        """The destination's name in the spool's state files (stable across restarts)."""
        if self.name:
            return self.name
        return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{self.ae_title}-{self.host}-{self.port}")


class SpoolConfig(Strict):
    """Where a store-and-forward route keeps what it acknowledged until every destination has it."""

    directory: Path | None = Field(None, description="spool folder; default: var/spool/ROUTE")
    high_water_mib: float = Field(1024.0, gt=0, description="spool size (MiB) past which an event is raised")
    min_free_mib: float = Field(512.0, ge=0, description="free space (MiB) the file system keeps: an object "
                                "that would go below it is refused with 0xA700")
    retention: Literal["delete", "keep"] = Field(
        "delete", description="what happens to an object every destination has: delete, or keep in sent/")
    reuse_mib: float = Field(256.0, ge=0, description="spent object files (MiB) kept in free/ for new objects to "
                             "overwrite, cheaper for the disk than new files; 0: delete them")


class RetryConfig(Strict):
    """Backoff between attempts to reach a destination; objects wait in the spool meanwhile."""

    initial_delay: float = Field(1.0, gt=0, le=3600, description="seconds before the first retry")
    max_delay: float = Field(60.0, gt=0, le=86_400, description="longest wait between retries, seconds")
    batch: int = Field(64, ge=1, le=10_000, description="objects sent per association")


RouteMode = Literal["relay", "store-and-forward"]

#: The checks a route can apply (docs/gateway.md, "How a route judges traffic"), in the default order.
CheckName = Literal["quarantine", "hosts", "ae-titles", "limits", "services", "rate", "ids"]
CHECK_NAMES: tuple[CheckName, ...] = get_args(CheckName)


class Route(Strict):
    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    listen: Listen
    upstream: Upstream
    policy: Policy = Policy()
    limits: Limits = Limits()
    checks: list[CheckName] = Field(list(CHECK_NAMES), description="the checks this route applies, in order")
    mode: RouteMode = Field("relay", description="relay: cut-through; store-and-forward: spool, check, forward")
    object_checks: list[str] = Field([], description="store-and-forward: the object checks run on each object")
    spool: SpoolConfig = SpoolConfig()
    destinations: list[Destination] = Field([], description="store-and-forward: where objects go; "
                                            "default: the upstream")
    retry: RetryConfig = RetryConfig()
    quarantine_sender: bool = Field(False, description="store-and-forward: quarantine the sending host when an "
                                    "object check quarantines one of its objects")
    forward_nice: int = Field(10, ge=0, le=19, description="store-and-forward: the CPU niceness of the route's "
                              "forwarding process; above 0, receiving from modalities goes first on a busy CPU")
    accepted_transfer_syntaxes: list[str] | None = Field(
        None, min_length=1, description="store-and-forward: the transfer syntaxes a presentation context is "
        "accepted with, in order of preference (UIDs or keywords, e.g. ExplicitVRLittleEndian); a context "
        "proposing none of them is refused (result 4), so the modality sends another way (Verification takes "
        "any). List what every destination takes: an object in another syntax is acknowledged, then no "
        "destination may store it. Default: the first one proposed")

    @field_validator("accepted_transfer_syntaxes")
    @classmethod
    def _syntaxes(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else uids_of(value, "transfer syntax keyword (e.g. ExplicitVRLittleEndian)",
                                                  transfer_syntaxes=True)
    rewrite_retrieve_ae_title: bool | None = Field(
        None, description="in C-FIND responses, replace Retrieve AE Title (0008,0054) with listen.ae_title, so a "
        "workstation retrieves through the gateway; default: on when listen.ae_title differs from the upstream's")
    record_before_response: bool = Field(
        True, description="hold every answer to the client until the events recorded before it are durable in the "
        "store (docs/gateway.md, 'Nothing acknowledged without its record'); false: answer at once, record after")
    on_record_failure: Literal["refuse", "relay"] = Field(
        "refuse", description="while events cannot be made durable: refuse (transient A-ASSOCIATE-RJ for new "
        "associations, a failure status for new requests) or relay (go on, keep events in memory, record the gap)")
    record_timeout: float = Field(
        10.0, gt=0, le=600, description="seconds an answer waits for its record while the store fails; then the "
        "association is aborted (refuse) or the answer passes (relay)")

    @property
    def rewrites_retrieve_ae_title(self) -> bool:
        """Whether C-FIND responses on this route name the gateway as the Retrieve AE (PS3.4 C.4.1.1.3.2)."""
        if self.rewrite_retrieve_ae_title is not None:
            return self.rewrite_retrieve_ae_title
        return self.listen.ae_title != self.upstream.ae_title

    @model_validator(mode="before")
    @classmethod
    def _destinations(cls, data: Any) -> Any:
        """A store-and-forward route names its upstreams in ``destinations``; ``upstream`` then
        defaults to the first of them, and ``destinations`` to ``[upstream]``."""
        if not isinstance(data, dict) or data.get("mode") != "store-and-forward":
            return data
        data = dict(data)
        dests = data.get("destinations")
        if "upstream" not in data and isinstance(dests, list) and dests and isinstance(dests[0], dict):
            # Only what an upstream has: a destination's own keys (name, verify_resend) stay its own.
            data["upstream"] = {k: v for k, v in dests[0].items() if k in Upstream.model_fields}
        elif not dests and isinstance(data.get("upstream"), (dict, Upstream)):
            up = data["upstream"]
            data["destinations"] = [up.model_dump() if isinstance(up, Upstream) else up]
        return data

    @model_validator(mode="after")
    def _mode(self) -> "Route":
        if self.mode == "relay":
            for key in ("object_checks", "destinations", "quarantine_sender", "accepted_transfer_syntaxes"):
                if getattr(self, key):
                    raise ValueError(f"{key} is for store-and-forward routes (set mode: store-and-forward)")
            return self
        keys = [d.key for d in self.destinations]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise ValueError(f"destinations[{i}]: two destinations are named {key!r}; give each a name")
        return self

    @field_validator("object_checks")
    @classmethod
    def _known_object_checks(cls, value: list[str]) -> list[str]:
        if not value:
            return value
        from pacsguard.runtime.registry import Registry

        offered = Registry.default().object_checks()
        known = ", ".join(sorted(offered)) or "none: no part offers one"
        for i, name in enumerate(value):
            if name not in offered:
                raise ValueError(f"object_checks[{i}]: no part offers an object check named {name!r} "
                                 f"(known: {known})")
        return _once_each("object_checks", value, known)

    @field_validator("checks")
    @classmethod
    def _once(cls, value: list[str]) -> list[str]:
        return _once_each("checks", value, ", ".join(CHECK_NAMES))


def _once_each(key: str, value: list[str], known: str) -> list[str]:
    """``value`` when no name in it is listed twice; else the error naming the second one."""
    for i, name in enumerate(value):
        if name in value[:i]:
            raise ValueError(f"{key}[{i}]: {name!r} is listed twice (known checks: {known})")
    return value


class GatewayConfig(Strict):
    routes: list[Route] = []
    quarantine_poll_interval: float = Field(0.5, gt=0, le=10, description="seconds between quarantine checks")
    quarantine_scope: Literal["pair", "host"] = Field(
        "pair", description="what an inline rule with action quarantine cuts off: the (calling AE title, host) "
        "pair it caught, or the whole host")
    admin_hosts: list[Network] = Field(
        [], description="addresses/CIDRs an inline rule never quarantines (administrators' workstations)")

    @field_validator("admin_hosts", mode="before")
    @classmethod
    def _admin(cls, value: Any) -> Any:
        return [] if value is None else value  # each item: parse_network (Network)

    @model_validator(mode="after")
    def _unique(self) -> "GatewayConfig":
        self._listeners_apart()
        names: set[str] = set()
        for route in self.routes:
            if route.name in names:
                raise ValueError(f"two routes are named {route.name!r}")
            names.add(route.name)
        self._spools_apart()
        return self

    def _listeners_apart(self) -> None:
        """No two routes take one port on one address: `serve` would fail at bind. Hosts are compared
        by the addresses they resolve to as the listener binds them (getaddrinfo with AI_PASSIVE, as
        asyncio's create_server does), so `localhost`, `127.0.0.1` and `::1` meet where the host's
        resolver says they do. A wildcard (0.0.0.0, ::) takes its port on every interface."""
        ports = [route.listen.port for route in self.routes]
        resolved: dict[str, frozenset[str]] = {}
        seen: list[tuple[int, Route, frozenset[str]]] = []
        for n, route in enumerate(self.routes):
            host, port = route.listen.host, route.listen.port
            if ports.count(port) < 2:  # alone on its port: no name looked up (a resolver may be slow)
                continue
            if host not in resolved:
                resolved[host] = listen_addresses(host, port)
            mine = resolved[host]
            for m, other, theirs in seen:
                if other.listen.port == port and (mine & theirs or (mine | theirs) & WILDCARDS):
                    raise ValueError(_clash_message(m, other, n, route, mine & theirs))
            seen.append((n, route, mine))

    def _spools_apart(self) -> None:
        """Each store-and-forward route has a spool of its own: two routes on one folder would
        forward each other's objects, and the second could not take the folder's lock at start
        (docs/gateway.md, "Store-and-forward routes"). Paths are compared resolved, through any
        symbolic link (relative ones resolve against the same configuration folder)."""
        owners: dict[str, str] = {}
        for route in self.routes:
            if route.mode != "store-and-forward":
                continue
            folder = os.path.realpath(route.spool.directory or Path("var/spool") / route.name)
            if folder in owners:
                raise ValueError(f"routes {owners[folder]!r} and {route.name!r} share the spool folder {folder} "
                                 "(spool.directory): each store-and-forward route needs its own")
            owners[folder] = route.name


def listen_addresses(host: str, port: int) -> frozenset[str]:
    """The addresses a listener on ``host`` binds (getaddrinfo with AI_PASSIVE, RFC 3493 6.1, as
    asyncio's create_server resolves it), in canonical text form; a name that does not resolve on
    this host stands for itself (lower case, no trailing dot), so that two spellings of one name
    still meet."""
    name = host.lower().rstrip(".") or host
    try:
        found = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError: no such name here (yet)
        return frozenset({name})
    return frozenset(_canonical(str(sockaddr[0])) for _, _, _, _, sockaddr in found)


def _canonical(address: str) -> str:
    """``address`` as ipaddress writes it (`0:0:0:0:0:0:0:1` is `::1`)."""
    try:
        return str(ip_address(address))
    except ValueError:
        return address


def _clash_message(m: int, first: Route, n: int, second: Route, shared: frozenset[str]) -> str:
    """Two routes' listeners on one port: both keys, both hosts as written, and what they share."""
    port = first.listen.port
    if shared:
        why = f"both are {', '.join(sorted(shared))}" if first.listen.host != second.listen.host else "the same host"
    else:
        why = "a wildcard address (0.0.0.0, ::) takes its port on every interface"
    return (f"routes {first.name!r} and {second.name!r} both listen on port {port}: "
            f"gateway.routes.{m}.listen.host is {first.listen.host}, gateway.routes.{n}.listen.host is "
            f"{second.listen.host} ({why}); `serve` could not bind the second; give one another port or address")


class PacsguardConfig(Strict):
    """The spine's sections of pacsguard.yaml. The model a file is validated with adds every part's
    section from the registry (pacsguard.runtime.registry.Registry.config_model)."""

    store: StoreConfig = StoreConfig()
    sinks: SinksConfig = SinksConfig()
