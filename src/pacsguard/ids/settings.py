"""The ``ids:`` section of pacsguard.yaml as a validated model (docs/ids.md, "Settings"), and the
per-rule overrides it holds. Its defaults come from :mod:`pacsguard.ids.defaults`, which the
engine uses as they are when there is no configuration."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator

from pacsguard.config.schema import parse_networks
from pacsguard.config.strict import Strict

from .defaults import IdsDefaults as _D
from .defaults import default_dicom_ports, default_networks
from .rules import Action, parse_duration


def _checked_duration(value: str | None) -> str | None:
    """A duration such as 60s, 15m or 1h, or unset; parse_duration names what is wrong."""
    if value is not None:
        parse_duration(value)
    return value


OptionalDuration = Annotated[str | None, AfterValidator(_checked_duration)]


class ThresholdOverride(Strict):
    """Change a rule's threshold without editing the rule (docs/ids.md)."""

    count: int | None = Field(None, ge=1, description="events, distinct values or sum that fire the rule")
    within: OptionalDuration = Field(None, description="window length, e.g. 60s, 15m, 1h")
    baseline: float | None = Field(None, gt=0, description="factor over the learned per-key baseline")


class LimitOverride(ThresholdOverride):
    """Change a rule's alert limit (docs/ids.md, "Limits and suppression") without editing the rule:
    ``count`` alert events per key per ``within`` (a threshold override's fields, without baseline)."""

    baseline: None = Field(None, exclude=True, description="not used by limits")


class Suppression(Strict):
    """Silence one rule's alerts for known benign sources: no alert event is written for a match
    whose ``track`` field is one of ``values`` (an address field also takes CIDRs); the match is
    still counted (``Engine.silenced``) and inline actions still apply."""

    rule: str = Field(..., description="the rule id")
    track: str = Field("client_host", description="the observation field to compare, e.g. client_host, calling_ae")
    values: list[str] = Field(..., min_length=1, description="values (or CIDRs for an address field) to silence")
    vlan: int | list[int] | None = Field(
        None, description="only on this VLAN ([outer, inner] for 802.1ad), as details.vlan names it; unset: any")

    @field_validator("values", mode="before")
    @classmethod
    def _texts(cls, value: object) -> object:
        # YAML reads an AE title such as 1234 as a number
        return [str(v) for v in value] if isinstance(value, list) else value


class ActionOverride(Strict):
    """Change what a rule does inline (e.g. turn an alert into a quarantine)."""

    action: Action
    quarantine_for: OptionalDuration = Field(None, description="how long to quarantine, e.g. 15m")


class IdsSettings(Strict):
    """The `ids:` section of pacsguard.yaml: what the rules compare against and their bounds."""

    internal_networks: list[IPv4Network | IPv6Network] = Field(
        default_factory=default_networks, description="the hospital's own address ranges")
    dicom_ports: list[int] = Field(default_factory=default_dicom_ports, description="ports where DICOM is expected")
    known_ae_titles: list[str] | None = Field(
        None, description="every AE title of the site; unset: rules using it are off")
    move_destinations: list[str] | None = Field(None, description="AE titles C-MOVE may send to; unset: rule off")
    document_sources: list[str] | None = Field(
        None, description="AE titles allowed to store encapsulated PDF/CDA; unset: rule off")
    rules_dirs: list[Path] = Field(
        [], description="directories (or files) of site rules, loaded after the built-in set")
    builtin_rules: bool = Field(True, description="load the built-in rule set")
    disabled_rules: list[str] = Field([], description="rule ids to turn off")
    thresholds: dict[str, ThresholdOverride] = Field({}, description="per rule id: count, within, baseline")
    actions: dict[str, ActionOverride] = Field({}, description="per rule id: action (and quarantine_for)")
    limits: dict[str, LimitOverride] = Field({}, description="per rule id: alert events per key per window")
    suppress: list[Suppression] = Field([], description="rule alerts silenced for known benign sources")
    expect_for: str = Field(_D.expect_for, description="how long a C-MOVE's sub-association stays expected after "
                                                       "its last request or response")
    max_expected_connections: int = Field(
        _D.max_expected_connections, ge=1, description="announced associations remembered at most")
    max_tracked_sources: int = Field(
        _D.max_tracked_sources, ge=1, description="keys each threshold rule tracks at most")
    max_tracked_flows: int = Field(_D.max_tracked_flows, ge=1, description="connections tracked at most")
    max_alerts_per_flow: int = Field(
        _D.max_alerts_per_flow, ge=1,
        description="times an alert-only rule without threshold fires per connection at most")
    vlan_tracking: bool = Field(
        True, description="VLAN ids are part of a connection (false: a SPAN port or trunk tags one direction only)")

    @field_validator("expect_for")
    @classmethod
    def _expect_for(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("internal_networks", mode="before")
    @classmethod
    def _cidrs(cls, value: Any) -> list[IPv4Network | IPv6Network]:
        return parse_networks(value)

    @field_validator("dicom_ports")
    @classmethod
    def _ports(cls, value: list[int]) -> list[int]:
        for port in value:
            if not 1 <= port <= 65535:
                raise ValueError(f"a port is 1-65535, got {port}")
        return value

    def ref(self, name: str) -> list[Any] | None:
        """The settings list a rule names as ``$name`` (None when it is not set)."""
        value: list[Any] | None = getattr(self, name)
        return value
