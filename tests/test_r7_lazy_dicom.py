"""pacsguard.dicom re-exports its names lazily (coordinator, round 7): a tool that needs one module
(the scanner reads UIDs and data sets) does not pay for loading the association state machine and
the PDU codecs at start-up, and every name the package lists still resolves."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pacsguard.dicom as dicom


def test_every_listed_name_resolves_to_its_module() -> None:
    homes = {name: home for home, names in dicom._HOMES for name in names.split()}
    assert sorted(homes) == sorted(dicom.__all__)
    for name in dicom.__all__:
        module = importlib.import_module(homes[name], "pacsguard.dicom")
        assert getattr(dicom, name) is getattr(module, name), name


def test_importing_one_module_does_not_load_the_decoder() -> None:
    probe = ("import sys, pacsguard.dicom.uids; "
             "print(sorted(m for m in sys.modules if m.startswith('pacsguard.dicom.')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "['pacsguard.dicom.uids']", out.stdout


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        dicom.NoSuchThing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("an unknown name resolved")
