"""Witnesses as a part: the `witness:` section (this pacsguard as a witness service), the service
`serve` runs (which also delivers the store's checkpoints to `store.witnesses`), `pacsguard witness ...`."""

from __future__ import annotations

from pacsguard.runtime.part import Part

PART = Part("witness", "Checkpoints held outside the host: deliver them, or be a witness for other logs.",
            section="witness", config="pacsguard.witness.config:WitnessServiceConfig",
            service="pacsguard.witness.service:make_service", commands="pacsguard.cli.witness:app",
            kinds="pacsguard.witness.kinds:KINDS")
