"""Demo peers for ``make run``: an embedded upstream PACS, so the demo needs no external archive."""

from pacsguard.demo.scp import DemoPACS

__all__ = ["DemoPACS"]
