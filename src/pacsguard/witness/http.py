"""The HTTP(S) API of a pacsguard witness (witness/server.py), as a client speaks it.

    GET  /v1/logs/{log}/checkpoints   every checkpoint the witness holds for the log (JSON);
         with ?from=SIZE a page of them from that tree size on, and "next": SIZE while more remain
    POST /v1/logs/{log}/checkpoints   {"checkpoint": statement, "consistency": {"from": m, "proof": [hex]}}
         with "Authorization: Bearer TOKEN" (RFC 6750 2.1), answered with the witness's
         countersignature, or 409 {"held": m} when a consistency proof from m is needed.

`log` is the fingerprint of the log's signing key. JSON bodies (RFC 8259), at most 1 MiB.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass, field
from typing import Any

from pacsguard.tls import explain_tls_error
from pacsguard.witness.deadline import Deadline
from pacsguard.witness.errors import WitnessError, WitnessRefused
from pacsguard.witness.exchange import AnswerError, Steps, exchange, request_bytes
from pacsguard.witness.jsontext import loads
from pacsguard.witness.lookup import Lookups
from pacsguard.witness.route import route

API = "/v1/logs"
MAX_BODY = 1 << 20


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WitnessClient:
    """One witness service: its base URL, the bearer token of this log (None to read only) and the
    TLS context for https:// (None: the system's trust store). Its host-name lookups (``lookups``)
    are kept across requests, so that retries behind a resolver that does not answer share one."""

    url: str
    token: str | None = None
    context: ssl.SSLContext | None = None
    timeout: float = 10.0
    lookups: Lookups = field(default_factory=Lookups, compare=False, repr=False)

    def checkpoints_url(self, log: str) -> str:
        return f"{self.url.rstrip('/')}{API}/{log}/checkpoints"

    def request(self, method: str, log: str, body: dict[str, Any] | None = None, query: str = "") -> Reply:
        """One request (exchange.py); a Reply for any status it answers (a redirect is not
        followed: the token stays with this witness), WitnessError when the witness is away, too
        slow or answers no HTTP. One deadline, ``timeout`` from now, bounds every step."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            if not self.token or not all(32 <= ord(ch) <= 126 for ch in self.token):
                # RFC 6750 2.1: a bearer token is visible ASCII; anything else cannot go in the header,
                # and this witness could never take it.
                raise WitnessError(f"witness {self.url}: the token holds characters a bearer token cannot "
                                   "(RFC 6750 2.1: printable ASCII only, no line breaks); check the "
                                   "token this log was given")
            headers["Authorization"] = f"Bearer {self.token}"
        way = route(self.checkpoints_url(log) + query, self.url)
        message = request_bytes(way, method, headers, data)
        try:
            answer = exchange(way, message, self.context, self._steps(), MAX_BODY)
        except WitnessError:
            raise  # too slow (_steps), said as such
        except AnswerError as exc:
            raise WitnessError(f"witness {self.url}: {exc}") from None
        except ssl.SSLError as exc:  # the handshake: said in words (whose certificate, what to check)
            raise WitnessError(f"witness {self.url}: {explain_tls_error(exc)}") from None
        except (OSError, UnicodeError) as exc:  # UnicodeError: a bad host name
            raise WitnessError(f"witness {self.url}: unreachable ({exc})") from None
        if 300 <= answer.status < 400 and "location" in answer.fields:
            # Not followed: the request (and its token) goes only to the URL configured.
            moved = "".join(ch if " " <= ch <= "~" else "?" for ch in answer.fields["location"][:200])
            return Reply(answer.status, {"error": f"it redirects to {moved}; a redirect is not followed: "
                                                  "give the witness's URL as it is now"})
        return Reply(answer.status, _json(answer.body, self.url, strict=200 <= answer.status < 300))

    def _steps(self) -> Steps:
        """The request's deadline, from now, and how its passing is said."""
        def expired(count: int) -> Exception:
            return WitnessError(f"witness {self.url}: too slow: no whole answer within {self.timeout:g} s "
                                f"({count} bytes of it came)")

        def late(what: str) -> Exception:
            return WitnessError(f"witness {self.url}: too slow: {what} within {self.timeout:g} s")

        return Steps(Deadline(self.timeout), late, expired, self.lookups)

    def held(self, log: str) -> list[dict[str, Any]]:
        """Every checkpoint statement the witness holds for ``log`` (empty if it knows no such log),
        read page by page (`?from=SIZE`), so no answer outgrows MAX_BODY however many it holds."""
        out: list[dict[str, Any]] = []
        start = 0
        while True:
            reply = self.request("GET", log, query=f"?from={start}")
            if reply.status == 404:
                return out
            if reply.status != 200:
                raise WitnessRefused(f"witness {self.url}: GET answered {reply.status} ({_error(reply)})")
            items = reply.body.get("checkpoints")
            if not isinstance(items, list):
                raise WitnessError(f"witness {self.url}: the answer holds no list of checkpoints")
            out += items
            following = reply.body.get("next")
            if following is None:  # the last page (or a witness that answers all at once)
                return out
            if type(following) is not int or following <= start or not items:  # a bool is no size
                raise WitnessError(f"witness {self.url}: its answer names next page {following!r} after "
                                   f"page {start}: not a larger tree size")
            start = following


def _json(data: bytes, url: str, strict: bool = True) -> dict[str, Any]:
    if len(data) > MAX_BODY:
        raise WitnessError(f"witness {url}: answer larger than {MAX_BODY} bytes")
    try:
        value = loads(data) if data else {}
    except ValueError:
        if not strict:
            return {"error": data[:200].decode("utf-8", "replace")}
        raise WitnessError(f"witness {url}: the answer is not JSON") from None
    return value if isinstance(value, dict) else {"value": value}


def _error(reply: Reply) -> str:
    return str(reply.body.get("error", "no reason given"))
