"""The ``ids:`` section's model (IdsSettings) and the plain defaults `ids read` runs on without a
configuration (ids/defaults.py) have the same fields with the same defaults."""

from __future__ import annotations

import dataclasses

from pacsguard.ids.defaults import IdsDefaults
from pacsguard.ids.engine import Engine
from pacsguard.ids.rules import load_rules
from pacsguard.ids.settings import IdsSettings


def test_defaults_have_the_models_fields_and_values() -> None:
    plain = IdsDefaults()
    model = IdsSettings()
    names = [f.name for f in dataclasses.fields(IdsDefaults)]
    assert names == list(IdsSettings.model_fields)
    for name in names:
        assert getattr(plain, name) == getattr(model, name), name


def test_an_engine_on_the_defaults_behaves_as_on_the_model() -> None:
    rules = load_rules([])
    on_plain, on_model = Engine(rules), Engine(rules, IdsSettings())
    assert on_plain.inactive == on_model.inactive and on_plain.inactive
    assert sorted(on_plain._compiled) == sorted(on_model._compiled)
    assert on_plain.flows.cap == on_model.flows.cap == IdsSettings().max_tracked_flows
