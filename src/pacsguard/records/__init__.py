"""Records of protocol exchanges: the Events one exchange produces, written once for every part
that sees it (the gateway relaying it, the passive sensor capturing it)."""
