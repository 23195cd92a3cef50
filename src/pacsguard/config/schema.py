"""The schema of pacsguard.yaml (pydantic). Unknown keys are errors; every section documents
its keys in docs/configuration.md. Parts read their own section; this module imports no part."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(Strict):
    """A secret is named, never written inline: `{env: NAME}` or `{file: PATH}`."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one(self) -> "SecretRef":
        if (self.env is None) == (self.file is None):
            raise ValueError("give exactly one of env (an environment variable) or file (a path)")
        return self

    def resolve(self) -> str:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise LookupError(f"environment variable {self.env} is not set")
            return value
        try:
            return self.file.read_text().strip()  # type: ignore[union-attr]
        except OSError as exc:
            raise LookupError(f"{self.file}: cannot read the secret ({exc.strerror})") from None


class StoreConfig(Strict):
    url: str = Field("var/pacsguard.db", description="SQLite path, or postgresql://USER@HOST:PORT/DB")
    password: SecretRef | None = Field(None, description="PostgreSQL password, from env or file")
    signing_key: Path = Field(Path("var/keys/store-signing.key"), description="Ed25519 checkpoint key")
    checkpoint_interval: float = Field(60.0, gt=0, le=86_400, description="seconds between signed checkpoints")

    @field_validator("url")
    @classmethod
    def _no_inline_password(cls, value: str) -> str:
        if "://" in value:
            auth = value.split("://", 1)[1].split("@", 1)
            if len(auth) == 2 and ":" in auth[0]:
                raise ValueError("the URL holds a password; put it in store.password as {env: NAME} or {file: PATH}")
        return value


class JsonLinesConfig(Strict):
    path: Path


class SyslogConfig(Strict):
    host: str
    port: int = Field(6514, ge=1, le=65535)
    transport: Literal["tcp", "tls"] = "tls"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    facility: int = Field(10, ge=0, le=23, description="RFC 5424 facility; 10 is authpriv")


class SinksConfig(Strict):
    jsonl: JsonLinesConfig | None = None
    syslog: SyslogConfig | None = None


class DemoUpstreamConfig(Strict):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(11113, ge=1, le=65535)
    ae_title: str = Field("DEMOPACS", min_length=1, max_length=16)
    storage: Path = Path("var/demo-pacs")


class PacsguardConfig(Strict):
    store: StoreConfig = StoreConfig()
    sinks: SinksConfig = SinksConfig()
    demo_upstream: DemoUpstreamConfig = DemoUpstreamConfig()
