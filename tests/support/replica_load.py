"""A load loop through HAProxy for the replica and reload tests: valid and refused requests from a few threads.

Each thread keeps its own keep-alive connections (one httpx client per kind, HTTP/1.1 over TLS, as most API
clients do) and cycles through the kinds:

- ``bearer``: a valid access token (must be 200);
- ``session``: a valid session cookie from a real login (must be 200);
- ``revoked``: a signed-out session cookie (must be 401: a 200 is a wrong allow);
- ``forged``: a bearer token signed by the IdP's key but expired (must be 401).

Every request is recorded as ``(monotonic time, kind, status)``, status 0 for a transport error (a connection closed
before an answer, a reset): for a valid kind that is a failed request just as a 503 is.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from stack import Stack, access_claims

VALID = ("bearer", "session")
REFUSED = ("revoked", "forged")
_API = {"accept": "application/json"}


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """One request: when it ended (``time.monotonic()`` seconds), its kind, its status (0: transport error) and, for
    a transport error, the exception's class name."""

    at: float
    kind: str
    status: int
    error: str = ""


class Load:
    """``threads`` threads asking ``stack.url + path`` until the ``with`` block ends, each waiting a random
    0..``pause`` seconds after each request (0: as fast as they can): with a pause, connections sit idle between
    requests, as a browser's or an API client's do."""

    def __init__(
        self,
        stack: Stack,
        *,
        session: Mapping[str, str],
        revoked: Mapping[str, str],
        threads: int = 4,
        pause: float = 0.0,
        path: str = "/app/",
    ) -> None:
        self.stack = stack
        self.url = stack.url + path
        self.session = dict(session)
        self.revoked = dict(revoked)
        self.pause = pause
        self.token = stack.idp.sign({"typ": "at+jwt"}, access_claims(stack))
        now = int(time.time())
        self.forged = stack.idp.sign({"typ": "at+jwt"}, access_claims(stack, iat=now - 600, exp=now - 300))
        self.results: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        self.started = 0.0
        self.ended = 0.0

    def _run(self) -> None:
        with (
            self.stack.client() as bearer,
            self.stack.client(cookies=self.session) as session,
            self.stack.client(cookies=self.revoked) as revoked,
            self.stack.client() as forged,
        ):
            plan = (
                ("bearer", bearer, {"authorization": f"Bearer {self.token}"} | _API),
                ("session", session, _API),
                ("revoked", revoked, _API),
                ("forged", forged, {"authorization": f"Bearer {self.forged}"} | _API),
            )
            while not self._stop.is_set():
                for kind, client, headers in plan:
                    error = ""
                    try:
                        status = client.get(self.url, headers=headers).status_code
                    except httpx.TransportError as exc:
                        status, error = 0, type(exc).__name__
                    with self._lock:
                        self.results.append(Outcome(at=time.monotonic(), kind=kind, status=status, error=error))
                    if self.pause:
                        time.sleep(random.uniform(0, self.pause))

    def __enter__(self) -> Load:
        self.started = time.monotonic()
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self.ended = time.monotonic()

    @property
    def rate(self) -> float:
        """Requests per second over the whole run."""
        return len(self.results) / max(self.ended - self.started, 1e-9)

    def wrong_allows(self) -> list[Outcome]:
        """Refused kinds that got a 200."""
        return [o for o in self.results if o.kind in REFUSED and o.status == 200]

    def wrong_answers(self) -> list[Outcome]:
        """Refused kinds that got neither 401 nor a failure (0 / 503): a 200, or another code."""
        return [o for o in self.results if o.kind in REFUSED and o.status not in (401, 0, 503)]

    def failed_valid(self, since: float = 0.0, until: float = float("inf")) -> list[Outcome]:
        """Valid kinds that did not get a 200 (a 401, a 503, a transport error), ending in ``[since, until)``."""
        return [o for o in self.results if o.kind in VALID and o.status != 200 and since <= o.at < until]

    def valid(self) -> int:
        return sum(1 for o in self.results if o.kind in VALID)

    @staticmethod
    def summary(outcomes: list[Outcome]) -> str:
        """``"503 x2, 0/RemoteProtocolError x1"``: how ``outcomes`` failed."""
        counts = Counter(f"{o.status}/{o.error}" if o.error else str(o.status) for o in outcomes)
        return ", ".join(f"{k} x{n}" for k, n in sorted(counts.items())) or "none"
