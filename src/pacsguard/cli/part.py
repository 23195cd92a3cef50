"""The spine's own commands, registered like parts so the command line lists them without importing them."""

from __future__ import annotations

from pacsguard.runtime.part import Part

PARTS = (
    Part("init", "Write a configuration (if none), generate the checkpoint signing key (if none) and create the store.",
         commands="pacsguard.cli.serve:init"),
    Part("serve", "Run the services the configuration names, in the foreground, until Ctrl-C, SIGTERM or a "
         "hang-up.",
         commands="pacsguard.cli.serve:serve", kinds="pacsguard.runtime.kinds:KINDS"),
    Part("config", "Validate pacsguard.yaml and show the configuration in use.", commands="pacsguard.cli.config:app"),
    Part("events", "Search and follow the event store.", commands="pacsguard.cli.events:app"),
    Part("audit", "The audit trail: verify the store, patient access reports and their proofs, received audit "
         "messages, daily summaries.", commands="pacsguard.cli.audit:app"),
    Part("store", "The store itself: schema migrations.", commands="pacsguard.cli.store:app"),
)
