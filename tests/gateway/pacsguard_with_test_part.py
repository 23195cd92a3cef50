"""`pacsguard` with the store-and-forward tests' part registered (saf_test_part), for a gateway
under test whose route names its object check. Run as a script: python pacsguard_with_test_part.py ARGS."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from pacsguard.runtime import registry  # noqa: E402

registry.PART_MODULES = (*registry.PART_MODULES, "saf_test_part")

from pacsguard.cli.main import main  # noqa: E402

main()
