"""`sinks.syslog.max_message_size` (coordinator, round 7): the syslog sink's message limit, which
outside round 7 found only the constructor could set, is a configuration key with the sink's own
bounds, and the sink built from the configuration uses it."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from pacsguard.config.schema import SinksConfig, SyslogConfig
from pacsguard.sinks.build import build_sinks
from pacsguard.sinks.syslog import MAX_MESSAGE, MIN_MESSAGE, SyslogSink


def test_the_configuration_bounds_are_the_sinks() -> None:
    field = SyslogConfig.model_fields["max_message_size"]
    assert field.default == MAX_MESSAGE
    assert any(getattr(m, "ge", None) == MIN_MESSAGE for m in field.metadata)


def test_the_sink_built_from_the_configuration_uses_the_limit() -> None:
    cfg = SinksConfig.model_validate({"syslog": {"host": "127.0.70.1", "port": 9, "transport": "tcp",
                                                 "max_message_size": 2000}})
    sinks = build_sinks(cfg, lambda p: Path(p))
    try:
        assert len(sinks) == 1 and isinstance(sinks[0], SyslogSink)
        assert sinks[0]._max_message == 2000
    finally:
        for sink in sinks:
            sink.close()


def test_a_limit_below_rfc5424s_minimum_is_a_configuration_error() -> None:
    with pytest.raises(ValidationError, match="max_message_size"):
        SinksConfig.model_validate({"syslog": {"host": "127.0.70.1", "max_message_size": 100}})
