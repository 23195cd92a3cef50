"""`pacsguard ids read` without a pacsguard.yaml starts without the configuration machinery
(docs/PERFORMANCE.md, "CLI start-up"): pydantic, the configuration models and typer's pydantic
coercion are each ~100 ms of a ~250 ms run, and tshark reads the same capture in ~250 ms."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from capture_craft import Flow, eth_frames, pcap_bytes

from module_probe import run_listing_modules
from pacsguard.dicom import pdu as P

READ_HEAVY = ("pydantic", "pydantic_core", "typer._adapters", "pacsguard.config.loader", "pacsguard.config.schema",
              "pacsguard.ids.settings", "sqlalchemy", "alembic", "pacsguard.store.database")



def _capture(path: Path) -> None:
    rq = P.encode_associate_rq(P.AssociateRQ(
        called_ae_title="PACS", calling_ae_title="STORESCU",
        presentation_contexts=[P.PresentationContextRQ(1, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])],
        user_information=P.UserInformation.build(max_length=16384, implementation_class_uid="1.2.3")))
    flow = Flow()
    path.write_bytes(pcap_bytes(eth_frames(flow.handshake() + flow.send(True, rq, 1000) + flow.fin())))


def test_ids_read_without_a_config_loads_no_configuration_machinery(tmp_path: Path) -> None:
    capture = tmp_path / "c.pcap"
    _capture(capture)
    env = {k: v for k, v in os.environ.items() if k != "PACSGUARD_CONFIG"}
    proc, loaded = run_listing_modules(["ids", "read", "--max-flows", "64", str(capture)],
                                       {**env, "COLUMNS": "200"}, cwd=tmp_path)
    # The run went through (the option values were coerced): the association and the tool's AE title were seen.
    assert "A-ASSOCIATE-RQ STORESCU -> PACS" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "alert.dicom-tool-default-ae-title" in proc.stdout, proc.stdout[-2000:]
    assert not sorted(m for m in loaded if m in READ_HEAVY or m.split(".")[0] in READ_HEAVY[:2]), proc.stdout[-3000:]


def test_a_bad_option_value_is_still_worded_by_typer(tmp_path: Path) -> None:
    capture = tmp_path / "c.pcap"
    _capture(capture)
    proc = subprocess.run([sys.executable, "-m", "pacsguard.cli", "ids", "read", "--max-flows", "0", str(capture)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "--max-flows" in proc.stderr and "greater than or equal to 1" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "pacsguard.cli", "ids", "read", "--max-flows", "ten", str(capture)],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 2 and "valid integer" in proc.stderr, proc.stderr
