"""The `atna:` section of pacsguard.yaml: the audit record repository's listeners (syslog over TLS,
TCP, UDP; the RESTful ATNA endpoint) and the outbound feed to another repository.

Off by default and loopback by default: a repository listens where its administrator says."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from pydantic import AfterValidator, Field, ValidationInfo, field_validator, model_validator

from pacsguard.atna.syslog.framing import DEFAULT_MAX_MESSAGE
from pacsguard.atna.zone import LOCAL, SiteZone
from pacsguard.config.schema import Host, Network, SecretRef
from pacsguard.config.strict import Strict

if TYPE_CHECKING:
    from pacsguard.config.loader import ConfigProblem
    from pacsguard.ids.audit.adapter import PrivacyLists


class Address(Strict):
    host: Host = "127.0.0.1"
    port: int = Field(..., ge=0, le=65535)  # 0: any free port (the banner shows which)


class TlsListener(Address):
    """RFC 5425 syslog over TLS; 6514 is its registered port. With ``ca_file`` client certificates are
    asked for; ``require_client_cert`` makes them mandatory (mutual TLS, IHE ITI-19)."""

    port: int = Field(6514, ge=0, le=65535)
    cert_file: Path
    key_file: Path
    ca_file: Path | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _ca_for_mtls(self) -> TlsListener:
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("require_client_cert needs ca_file (the CA client certificates must chain to)")
        return self


class HttpListener(Address):
    """The RESTful ATNA endpoint (IHE ITI-81 query, and POST /AuditEvent). Every request needs the
    bearer token, a client certificate when TLS with ``require_client_cert`` is configured, or both
    when both are (each is then required)."""

    port: int = Field(8089, ge=0, le=65535)
    token: SecretRef | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _authenticated(self) -> HttpListener:
        # HTTPS needs both halves of the server's identity (RFC 9110 4.2.2); with one of them, or a
        # ca_file alone, the endpoint would have served plain HTTP with its token in the clear.
        tls = [name for name in ("cert_file", "key_file", "ca_file") if getattr(self, name) is not None]
        if tls and (self.cert_file is None or self.key_file is None):
            missing = " and ".join(name for name in ("cert_file", "key_file") if getattr(self, name) is None)
            raise ValueError(f"{', '.join(tls)} given without {missing}: HTTPS needs cert_file and key_file "
                             "(the endpoint would otherwise serve plain HTTP); give both, or neither for "
                             "plain HTTP")
        if self.token is None and not self.require_client_cert:
            raise ValueError("the HTTP endpoint needs a token or require_client_cert (with cert_file, key_file, "
                             "ca_file)")
        if self.require_client_cert and (self.ca_file is None or self.cert_file is None or self.key_file is None):
            raise ValueError("require_client_cert needs cert_file, key_file and ca_file")
        return self


    def check_files(self, key: str, resolve: Callable[[Path], Path]) -> list[ConfigProblem]:
        """The token read as the endpoint reads it when `serve` starts it (`SecretRef.resolve`), for
        `config check` (pacsguard.cli.config.file_problems): a token file that is missing, unreadable,
        too long or not UTF-8 is named with its key. A token in an environment variable is not looked
        up: serve's environment (a systemd unit's) is not the shell config check runs in."""
        from pacsguard.config.loader import ConfigProblem

        if self.token is None or self.token.file is None:
            return []
        try:
            self.token.resolve()
        except LookupError as exc:
            return [ConfigProblem(f"{key}.token", str(exc))]
        return []


class Outbound(Strict):
    """pacsguard's own events as PS3.15 A.5 messages to another Audit Record Repository over
    RFC 5425 TLS, through a durable spool."""

    host: Host
    port: int = Field(6514, ge=1, le=65535)
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None
    source_id: str = Field("pacsguard", min_length=1, max_length=64,
                           description="AuditSourceID of the messages, and the origin the repository dedupes by")
    spool: Path = Path("var/atna-outbound.db")
    retry: float = Field(5.0, gt=0, le=3600,
                         description="seconds before reconnecting after a failed attempt (or after the repository "
                         "closed a working connection); doubled after each further failed attempt, up to retry_max, "
                         "and jittered down to half")
    retry_max: float = Field(300.0, gt=0, le=86_400,
                             description="the longest wait between two reconnection attempts, seconds")
    stall_timeout: float = Field(60.0, gt=0, le=3600,
                                 description="seconds the repository may acknowledge no byte while audit messages "
                                 "wait before it is taken for dead and the connection reopened (what it took but did "
                                 "not confirm is then sent again); a slow repository still taking bytes is waited for")
    max_spool_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024, le=1024**4,
                                 description="the most the spool holds, bytes of audit messages (at least 1 MiB); "
                                 "beyond, new messages are held back (not sent) and that is recorded, with the count, "
                                 "as atna.outbound.failed events")

    @field_validator("retry_max")
    @classmethod
    def _retry_max_not_below_retry(cls, value: float, info: ValidationInfo) -> float:
        retry = info.data.get("retry")
        if isinstance(retry, float) and value < retry:
            raise ValueError(f"retry_max ({value:g} s) is shorter than retry ({retry:g} s): the backoff starts at "
                             "retry and doubles up to retry_max")
        return value


def _duration(value: str) -> str:
    from pacsguard.ids.rules import parse_duration

    parse_duration(value)  # names what is wrong
    return value


Duration = Annotated[str, AfterValidator(_duration)]


def _zone(value: str) -> str:
    SiteZone.named(value)  # names what is expected
    return value


SiteZoneName = Annotated[str, AfterValidator(_zone)]


class Explain(Strict):
    """Explanation-based auditing (docs/audit.md): how far around an access the templates look."""

    evidence_window: Duration = Field("90d", description="an order, study or C-MOVE this close to the access "
                                      "(before or after) explains it")
    repeat_window: Duration = Field("7d", description="a repeat access is explained by an explained access of "
                                    "the same user to the same patient this long before")
    on_arrival: bool = Field(False, description="judge each received access as it arrives (rule "
                             "audit-unexplained-access): one query of the patient's events per access")
    evidence_from: list[Network] = Field(
        default_factory=list, description="addresses/CIDRs whose audit messages count as evidence (an order, "
        "procedure or instances record); empty: any sender's. pacsguard's own C-MOVE records always count")


class Baseline(Strict):
    """The per-user baseline of distinct patients per hour (rule audit-patients-above-baseline)."""

    factor: float = Field(5.0, gt=1, description="fires above this many times the user's baseline")
    min_patients: int = Field(10, ge=1, description="and only from this many distinct patients in the hour")
    min_hours: int = Field(8, ge=1, description="active hours of history before a user's baseline is trusted")
    history_hours: int = Field(168, ge=1, le=10_000, description="active hours the median is taken over")
    max_users: int = Field(10_000, ge=1, description=(
        "users with a baseline tracked (as many still learning); the least recently active is evicted first"))
    max_patients_per_hour: int = Field(256, ge=1, le=100_000,
                                       description="distinct patients counted per user and hour, at most")

    @model_validator(mode="after")
    def _can_fire(self) -> Baseline:
        """Settings under which the rule could never fire are refused, not run silent: a user keeps
        at most history_hours hours, and an hour counts at most max_patients_per_hour patients."""
        if self.min_hours > self.history_hours:
            raise ValueError(f"min_hours {self.min_hours} is more than history_hours {self.history_hours}: no "
                             "user would ever have that many hours of history, and the rule would never fire")
        if self.min_patients > self.max_patients_per_hour:
            raise ValueError(f"min_patients {self.min_patients} is more than max_patients_per_hour "
                             f"{self.max_patients_per_hour}: no hour would count that many, and the rule would "
                             "never fire")
        return self


class Privacy(Strict):
    """Privacy monitoring: the IDS rules of ``protocol: audit`` (docs/ids.md) run over every received
    audit message, with the administrator's lists joined in."""

    watch_list: Path | None = Field(None, description="patient IDs to watch (VIPs, employees), one per line")
    staff_directory: Path | None = Field(None, description="CSV with columns user, surname, address and "
                                         "(optional) department")
    rule_set: bool = Field(True, description="load the audit adapter's rule audit-patients-above-baseline with the "
                           "ids: section's rules (audit-unexplained-access comes with explain.on_arrival)")
    explain: Explain = Field(default_factory=Explain)
    baseline: Baseline = Field(default_factory=Baseline)

    def lists(self, resolve: Callable[[Path], Path], *, watch: bool = True) -> PrivacyLists:
        """The watch list (with ``watch``) and the staff directory, read; a file that cannot be read
        is a ConfigError naming its key and what is wrong where (not UTF-8, no header, a bad row)."""
        from pacsguard.config.loader import ConfigError, ConfigProblem
        from pacsguard.ids.audit.adapter import ListFileError, PrivacyLists

        files = {"watch_list": self.watch_list if watch else None, "staff_directory": self.staff_directory}
        paths = {key: resolve(path) for key, path in files.items() if path is not None}
        try:
            return PrivacyLists.load(paths.get("watch_list"), paths.get("staff_directory"))
        except ListFileError as exc:
            key = next(k for k, path in paths.items() if path == exc.path)
            raise ConfigError(str(exc.path), [ConfigProblem(f"atna.privacy.{key}", exc.problem)]) from None


    def check_files(self, key: str, resolve: Callable[[Path], Path]) -> list[ConfigProblem]:
        """The lists read as `serve` reads them, for `config check` (pacsguard.cli.config.file_problems):
        each problem keyed by the list's key and starting with the file it names, as serve's error does."""
        from pacsguard.config.loader import ConfigError, ConfigProblem

        try:
            self.lists(resolve)
        except ConfigError as exc:
            return [ConfigProblem(f"{key}.{p.key.rsplit('.', 1)[-1]}", f"{exc.source}: {p.message}")
                    for p in exc.problems]
        return []


class AtnaConfig(Strict):
    enabled: bool = False
    tls: TlsListener | None = None
    tcp: Address | None = None
    udp: Address | None = None
    http: HttpListener | None = None
    max_message: int = Field(DEFAULT_MAX_MESSAGE, ge=65_536, le=64 * 1024 * 1024,
                             description="largest message accepted, octets (at least 64 KiB)")
    idle_timeout: float = Field(300.0, gt=0, le=86_400,
                                description="seconds a connection may stay silent before it is closed")
    frame_timeout: float = Field(60.0, gt=0, le=3600,
                                 description="seconds from the first octet of a syslog frame to its last, and from "
                                             "a TLS connection's start to the end of its handshake; a connection "
                                             "slower than that is closed and recorded (too-slow, "
                                             "tls-handshake-failed)")
    max_connections: int = Field(1000, ge=1, le=100_000,
                                 description="TLS, TCP or HTTP connections open at once on one listener, in each "
                                             "process that accepts them (the main one, or each reading process); "
                                             "more are closed at once and recorded, counted (atna.frame.rejected "
                                             "or atna.http.rejected, too-many-connections)")
    readers: int = Field(0, ge=0, le=64,
                         description="processes that read the TLS and TCP listeners' connections, each on its "
                         "own core (0: read in the service's own event loop); see docs/audit.md")
    max_backlog: int = Field(50_000, ge=100, le=200_000,
                             description="events waiting to be stored at which the TLS and TCP listeners stop "
                             "reading their senders (TCP holds them back) until half of it is left; see "
                             "docs/audit.md, \"When the store falls behind\"")
    outbound: Outbound | None = None
    privacy: Privacy | None = None
    time_zone: SiteZoneName = Field(LOCAL, description="the site's time zone, in which the privacy rules' hour "
                                    "and weekday and audit report's day and working hours are told: an IANA name "
                                    "(Europe/Berlin) or local (this host's); stored times stay UTC")

    @model_validator(mode="after")
    def _listeners_apart(self) -> AtnaConfig:
        """No two of the TLS, TCP and HTTP listeners take one port on one address: `serve` would fail
        at bind ("address already in use"). Compared as the gateway's routes are
        (pacsguard.config.schema.GatewayConfig): hosts by the addresses they resolve to as a listener
        binds them (`listen_addresses`), a wildcard (0.0.0.0, ::) meeting every address. The UDP
        listener shares a port number with a TCP one freely; port 0 is a free port each."""
        from pacsguard.config.schema import WILDCARDS, listen_addresses

        listeners = [(name, block) for name in ("tls", "tcp", "http")
                     if (block := getattr(self, name)) is not None and block.port != 0]
        ports = [block.port for _, block in listeners]
        seen: list[tuple[str, Address, frozenset[str]]] = []
        for name, block in listeners:
            if ports.count(block.port) < 2:  # alone on its port: no name looked up (a resolver may be slow)
                continue
            mine = listen_addresses(block.host, block.port)
            for other, first, theirs in seen:
                if first.port == block.port and (mine & theirs or (mine | theirs) & WILDCARDS):
                    why = ("a wildcard address (0.0.0.0, ::) takes its port on every interface" if not mine & theirs
                           else "the same host" if first.host == block.host
                           else f"both are {', '.join(sorted(mine & theirs))}")
                    raise ValueError(f"atna.{other} and atna.{name} both listen on port {block.port}: "
                                     f"atna.{other}.host is {first.host}, atna.{name}.host is {block.host} ({why}); "
                                     "`serve` could not bind the second; give one another port or address")
            seen.append((name, block, mine))
        return self

    def site_zone(self) -> SiteZone:
        """The zone ``time_zone`` names (validated when the file was read)."""
        return SiteZone.named(self.time_zone)
