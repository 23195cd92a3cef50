"""Reading JSON that another party wrote: a witness file, a ledger line, a witness's answer, a
request body. RFC 8259 section 9 lets a parser limit the nesting it accepts; Python's stops where
its recursion limit is and raises RecursionError, which callers would not expect from bad input."""

from __future__ import annotations

import json
from typing import Any


def loads(text: str | bytes) -> Any:
    """`json.loads`, with nesting too deep to read reported as the ValueError any malformed text
    gives, so every caller refuses it the way it refuses text that is not JSON."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested deeper than pacsguard reads JSON") from None
