"""The `witness:` section: this pacsguard as a witness service for other pacsguards' logs."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from pacsguard.config.schema import Host, ListenTLS, SecretRef
from pacsguard.config.strict import Strict


class WitnessedLog(Strict):
    name: str = Field(description="the log's name in events and answers, e.g. the site")
    public_key: Path = Field(description="the log's checkpoint public key (its .pub), pinned here")
    token: SecretRef = Field(description="the bearer token that log sends: {env: NAME} or {file: PATH}")


class WitnessServiceConfig(Strict):
    enabled: bool = False
    host: Host = Field("127.0.0.1", description="address to listen on (loopback unless you say otherwise)")
    port: int = Field(8471, ge=0, le=65535)
    storage: Path = Field(Path("var/witness"), description="folder of the checkpoints held, one file per log")
    signing_key: Path = Field(Path("var/keys/witness-signing.key"),
                              description="Ed25519 key of the countersignatures; generated if missing")
    logs: list[WitnessedLog] = Field(default_factory=list, description="the logs this witness serves")
    tls: ListenTLS | None = Field(None, description="serve HTTPS; require_client_cert for mutual TLS")
    timeout: float = Field(10.0, gt=0, le=300, description="seconds a request may take")

    @model_validator(mode="after")
    def _logs_when_enabled(self) -> "WitnessServiceConfig":
        if self.enabled and not self.logs:
            raise ValueError("an enabled witness needs logs: [{name, public_key, token}]")
        return self
