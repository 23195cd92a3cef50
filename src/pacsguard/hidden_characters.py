"""Characters a reader does not see, or that reorder the text around them.

A user name, host or AE title comes from whoever sent the message. Shown as it is, "\\u202enimda"
reads "admin" and "j\\u200bsmith" reads as another user's "jsmith" ("Trojan Source",
CVE-2021-42574). The terminal tables, the CSV and the HTML pages show each such character as a
visible mark; the JSON forms keep the value exact.
"""

from __future__ import annotations

import re

#: The directional formatting characters (UAX #9 section 2: embeddings, overrides, isolates,
#: marks), zero-width and other invisible format characters (general category Cf: U+200B, U+2060,
#: U+FEFF, the soft hyphen, the tag characters, variation selectors, Hangul fillers), the line and
#: paragraph separators, and the C0 and C1 controls but tab, LF and CR.
HIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5"
                    "\u180b-\u180f\u200b-\u200f\u2028-\u202e\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0"
                    "\ufff0-\ufffb\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")


def visible(text: str) -> str:
    """``text`` with each HIDDEN character as ``<U+XXXX>`` (for a page or a CSV cell; still to be
    escaped for HTML)."""
    return HIDDEN.sub(lambda m: f"<U+{ord(m.group()):04X}>", text)
