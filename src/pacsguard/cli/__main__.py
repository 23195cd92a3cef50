"""`python -m pacsguard.cli` is `pacsguard`."""

from pacsguard.cli.main import main

main()
