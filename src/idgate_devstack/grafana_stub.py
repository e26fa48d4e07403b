"""Grafana contract stub: an upstream that authenticates requests the way Grafana's documented contract says.

This is NOT Grafana. Grafana itself cannot run in this environment; the stub stands in for it in tests and the
demo, and implements only the login contract idgate has to satisfy (Grafana docs "Configure auth proxy
authentication" ``[auth.proxy]`` and "Configure JWT authentication" ``[auth.jwt]``), nothing else.

Run it as::

    python -m idgate_devstack.grafana_stub --port N [--name NAME] [--host H]
        [--jwks-url URL --expect-iss ISS --expect-aud AUD [--ca-file PEM] [--cache-ttl 60] [--leeway 60]
         [--no-refetch-on-unknown-kid]]
        [--jwt-header X-JWT-Assertion] [--role-claim role] [--username-claim email] [--headers-encoded]

(``--port 0`` picks a free port). Once listening it prints ``grafana-stub NAME listening on HOST:PORT`` and flushes.

Per request (the control calls below excepted):

- ``[auth.jwt]`` mode, when ``--jwks-url`` is given and the JWT header is present. Like Grafana: keys come from
  ``jwk_set_url`` (fetched with httpx; cached for ``--cache-ttl`` seconds, or the response's ``Cache-Control:
  max-age`` when that is shorter, as Grafana's keySetHTTP does); every key published under the token's kid is tried;
  the algorithm comes from the key (its ``alg``, else its type and curve), never from the token alone;
  ``exp``/``nbf``/``iat`` are checked when present, with ``--leeway`` seconds (go-jose's default leeway is 60 s);
  ``expect_claims``: ``iss`` and ``aud`` must equal ``--expect-iss`` / ``--expect-aud``. The login is the
  ``--username-claim`` claim (a non-empty string); the role is the ``--role-claim`` claim, which must be one of
  ``Viewer|Editor|Admin|GrafanaAdmin`` — anything else, or no role, is denied (``role_attribute_strict = true``).
  ``role_attribute_path`` here is a plain claim name, not a JMESPath expression. Email is the ``email`` claim,
  name the ``name`` claim, groups the ``groups`` claim (a list of strings). An invalid token answers 401
  ``{"message": "invalid JWT", "reason": <code>}`` — no fallback to proxy headers. Reason codes: ``malformed``,
  ``unknown_kid``, ``jwks_unavailable``, ``bad_signature``, ``algorithm_mismatch``, ``expired``, ``not_yet_valid``,
  ``issued_in_future``, ``wrong_issuer``, ``wrong_audience``, ``missing_claim``, ``missing_username``,
  ``invalid_role``, ``invalid_claims``.
  Deviations from Grafana: by default an unknown kid forces an immediate refetch (no cooldown); real Grafana does
  not refetch before the cache expires, which ``--no-refetch-on-unknown-kid`` models. Grafana also insists on an
  https ``jwk_set_url`` outside its dev mode; the stub accepts http.
- ``[auth.proxy]`` mode otherwise (also when ``--jwks-url`` is not given: ``[auth.jwt]`` disabled). Login from
  ``X-WEBAUTH-USER`` (absent or empty → 401 ``{"message": "Unauthorized"}``); email, name, role and groups from
  ``X-WEBAUTH-EMAIL``, ``-NAME``, ``-ROLE``, ``-GROUPS`` (groups comma-separated, blanks dropped). With
  ``--headers-encoded`` every value is quoted-printable-decoded first (Grafana's ``headers_encoded = true``). A
  missing or unknown role becomes ``Viewer`` (Grafana ignores an invalid role header and applies
  ``auto_assign_org_role``, default Viewer). ``whitelist`` is not modelled: the stub trusts any client.

Answers: ``GET /api/user`` (also under a sub-path, as with ``serve_from_sub_path``) → 200 JSON
``{"login", "email", "name", "role", "groups", "authMode": "jwt"|"proxy"}``
(Grafana's ``/api/user``, trimmed, plus ``role``/``groups``/``authMode``); any other request → 200 HTML page
``<h1>Grafana (contract stub)</h1>`` with the same facts in elements ``id="user"``, ``email``, ``name``, ``role``,
``groups``, ``auth-mode`` and the request path in ``path`` (all HTML-escaped).

Every request except the control calls is recorded like the echo upstream does (``idgate_devstack.echo``): an
``EchoRecord`` (upstream name, method, raw path, raw query, headers in arrival order) plus ``status``, ``auth_mode``
and ``login``. Header names are recorded lower-cased (the HTTP server normalises them; HAProxy sends them lower-cased
anyway). Control calls, never recorded and never authenticated::

    GET  /__echo/requests   -> 200, JSON list of the records so far, oldest first
    POST /__echo/reset      -> 200, {"reset": <number of records dropped>}

In-process use: ``GrafanaStub`` runs it as a subprocess and mirrors ``EchoUpstream``::

    with GrafanaStub(jwks_url=..., expect_iss=..., expect_aud=...) as grafana:
        grafana.address     # "127.0.0.1:PORT", for IDGATE_UPSTREAM_GRAFANA
        grafana.requests()  # list[GrafanaRecord]
        grafana.reset()

A test tool on uvicorn + Starlette, not a production server. Sources: Grafana docs (above) and Grafana's
``pkg/services/auth/jwt`` (key_sets.go: JWKS cache; validation.go: expect_claims and go-jose claim validation).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import quopri
import re
import ssl
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import httpx
import jwt
import uvicorn
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from idgate_devstack.echo import CONTROL_REQUESTS, CONTROL_RESET, EchoRecord
from idgate_devstack.process import ReadyLineServer

__all__ = ["GrafanaRecord", "GrafanaStub", "GrafanaStubApp", "StubSettings", "StubUser", "main"]

JWT_ROLES = ("Viewer", "Editor", "Admin", "GrafanaAdmin")
"""Roles ``role_attribute_path`` may yield; anything else is denied under ``role_attribute_strict``."""
PROXY_ROLES = ("Viewer", "Editor", "Admin")
"""Roles the ``X-WEBAUTH-ROLE`` header may carry (Grafana 8.1+)."""
DEFAULT_ROLE = "Viewer"
"""Grafana's ``auto_assign_org_role`` default, used when the proxy role header is missing or invalid."""
PROXY_USER_HEADER = "X-WEBAUTH-USER"
PROXY_HEADERS = {
    "email": "X-WEBAUTH-EMAIL",
    "name": "X-WEBAUTH-NAME",
    "role": "X-WEBAUTH-ROLE",
    "groups": "X-WEBAUTH-GROUPS",
}
MAX_BODY_BYTES = 16 * 1024 * 1024
"""Largest accepted request body, in bytes (larger: 413)."""
MAX_JWKS_BYTES = 512 * 1024
"""Largest accepted JWKS document, in bytes."""
JWKS_TIMEOUT_SECONDS = 5.0
READY_RE = re.compile(r"^grafana-stub (?P<name>\S+) listening on (?P<host>\S+):(?P<port>\d+)$")


class GrafanaRecord(EchoRecord):
    """One recorded request: the echo record plus the stub's verdict."""

    status: int
    """The HTTP status answered (200, 401 or 413)."""
    auth_mode: Literal["jwt", "proxy"]
    login: str | None
    """The authenticated login, or None when denied."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StubSettings:
    """What grafana.ini would say. Times in seconds. ``jwks_url`` None disables ``[auth.jwt]``."""

    name: str = "grafana"
    jwks_url: str | None = None
    ca_file: str | None = None
    expect_iss: str | None = None
    expect_aud: str | None = None
    jwt_header: str = "X-JWT-Assertion"
    username_claim: str = "email"
    email_claim: str = "email"
    name_claim: str = "name"
    groups_claim: str = "groups"
    role_claim: str = "role"
    cache_ttl: float = 60.0
    refetch_on_unknown_kid: bool = True
    leeway: float = 60.0
    headers_encoded: bool = False

    def __post_init__(self) -> None:
        if self.jwks_url is not None and not (self.expect_iss and self.expect_aud):
            raise ValueError("[auth.jwt] needs expect_iss and expect_aud (expect_claims)")
        if self.cache_ttl < 0 or self.leeway < 0:
            raise ValueError("cache_ttl and leeway must not be negative")


@dataclass(frozen=True, kw_only=True, slots=True)
class StubUser:
    """The signed-in user as Grafana would see it."""

    login: str
    email: str
    name: str
    role: str
    groups: tuple[str, ...]
    auth_mode: Literal["jwt", "proxy"]

    def api_user(self) -> dict[str, Any]:
        """The ``GET /api/user`` document."""
        return {
            "login": self.login,
            "email": self.email,
            "name": self.name,
            "role": self.role,
            "groups": list(self.groups),
            "authMode": self.auth_mode,
        }


class Denied(Exception):
    """Authentication failed: answered 401 with ``body``."""

    def __init__(self, body: Mapping[str, str]) -> None:
        super().__init__(body.get("reason", body["message"]))
        self.body = dict(body)


def _invalid_jwt(reason: str) -> Denied:
    return Denied({"message": "invalid JWT", "reason": reason})


def decode_qp(value: str) -> str:
    """Quoted-printable decoding of a header value (as Go's ``mime/quotedprintable`` reader), UTF-8 result."""
    return quopri.decodestring(value.encode("latin-1")).decode("utf-8", errors="replace")


def proxy_user(headers: Mapping[str, str], *, encoded: bool) -> StubUser:
    """The ``[auth.proxy]`` user from the request headers (names case-insensitive as in ``Headers``).

    Raises:
        Denied: no or empty ``X-WEBAUTH-USER``.
    """

    def value(name: str) -> str:
        raw = headers.get(name) or headers.get(name.lower()) or ""
        return decode_qp(raw) if encoded else raw

    login = value(PROXY_USER_HEADER)
    if not login:
        raise Denied({"message": "Unauthorized"})
    role = value(PROXY_HEADERS["role"])
    groups = tuple(g.strip() for g in value(PROXY_HEADERS["groups"]).split(",") if g.strip())
    return StubUser(
        login=login,
        email=value(PROXY_HEADERS["email"]),
        name=value(PROXY_HEADERS["name"]),
        role=role if role in PROXY_ROLES else DEFAULT_ROLE,
        groups=groups,
        auth_mode="proxy",
    )


def parse_jwks(document: object) -> dict[str | None, list[jwt.PyJWK]]:
    """Usable public signing keys of a JWKS by kid (None: keys without kid); private, symmetric, non-``sig`` and
    malformed keys are skipped."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("JWKS is not an object with a 'keys' array")
    keys: dict[str | None, list[jwt.PyJWK]] = {}
    for entry in document["keys"]:
        if not isinstance(entry, dict) or "d" in entry or entry.get("kty") == "oct" or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
            continue
        kid = entry.get("kid")
        keys.setdefault(kid if isinstance(kid, str) else None, []).append(key)
    return keys


class JwksKeys:
    """The ``jwk_set_url`` key cache: keys kept ``ttl`` seconds or the response's shorter ``max-age`` (monotonic
    clock), refetched on an unknown kid when ``refetch_on_unknown_kid``."""

    def __init__(
        self,
        *,
        url: str,
        client: httpx.AsyncClient,
        ttl: float,
        refetch_on_unknown_kid: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._client = client
        self._ttl = ttl
        self._refetch_on_unknown_kid = refetch_on_unknown_kid
        self._clock = clock
        self._keys: dict[str | None, list[jwt.PyJWK]] | None = None
        self._expires_at = float("-inf")
        self._lock = asyncio.Lock()

    async def keys_for(self, kid: str | None) -> list[jwt.PyJWK]:
        """Keys published under ``kid``; fetches when the cache is empty, expired, or lacks ``kid``.

        Raises:
            Denied: ``jwks_unavailable`` (no key set could be fetched) or ``unknown_kid``.
        """
        if (
            self._keys is None
            or self._clock() >= self._expires_at
            or (self._refetch_on_unknown_kid and kid not in self._keys)
        ):
            await self._refresh()
        if self._keys is None:
            raise _invalid_jwt("jwks_unavailable")
        if kid not in self._keys:
            raise _invalid_jwt("unknown_kid")
        return self._keys[kid]

    async def _refresh(self) -> None:
        async with self._lock:
            try:
                response = await self._client.get(self.url, timeout=JWKS_TIMEOUT_SECONDS)
                response.raise_for_status()
                if len(response.content) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS too large")
                self._keys = parse_jwks(response.json())
                self._expires_at = self._clock() + cache_seconds(response.headers.get("cache-control"), self._ttl)
            except (httpx.HTTPError, ValueError) as exc:
                print(f"grafana-stub: JWKS fetch from {self.url} failed: {exc}", file=sys.stderr, flush=True)


def cache_seconds(cache_control: str | None, ttl: float) -> float:
    """Grafana's JWKS cache duration: ``max-age`` from Cache-Control when it is shorter than ``ttl`` (or ttl is 0)."""
    match = re.search(r"(?:^|,)\s*max-age=(\d+)\s*(?:,|$)", cache_control or "")
    if match is None:
        return ttl
    max_age = float(match.group(1))
    return max_age if ttl == 0 or max_age < ttl else ttl


_JWT_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "wrong_audience"),
    (jwt.InvalidIssuerError, "wrong_issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "algorithm_mismatch"),
    (jwt.DecodeError, "malformed"),
)


def _reason(exc: jwt.InvalidTokenError) -> str:
    if isinstance(exc, jwt.ImmatureSignatureError) and "iat" in str(exc):
        return "issued_in_future"
    return next((reason for kind, reason in _JWT_REASONS if isinstance(exc, kind)), "invalid_claims")


async def jwt_user(token: str, keys: JwksKeys, settings: StubSettings) -> StubUser:
    """The ``[auth.jwt]`` user from a token.

    Raises:
        Denied: the token is invalid (see the module docstring for the reason codes).
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise _invalid_jwt("malformed") from None
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _invalid_jwt("malformed")
    claims: dict[str, Any] | None = None
    for key in await keys.keys_for(kid):
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[key.algorithm_name],
                audience=settings.expect_aud,
                issuer=settings.expect_iss,
                leeway=settings.leeway,
            )
            break
        except jwt.InvalidSignatureError:
            continue  # Grafana tries every key published under the kid
        except jwt.InvalidTokenError as exc:
            raise _invalid_jwt(_reason(exc)) from None
    if claims is None:
        raise _invalid_jwt("bad_signature")
    login = claims.get(settings.username_claim)
    if not isinstance(login, str) or not login:
        raise _invalid_jwt("missing_username")
    role = claims.get(settings.role_claim)
    if role not in JWT_ROLES:
        raise _invalid_jwt("invalid_role")
    groups = claims.get(settings.groups_claim, [])
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise _invalid_jwt("invalid_claims")
    email, name = claims.get(settings.email_claim), claims.get(settings.name_claim)
    return StubUser(
        login=login,
        email=email if isinstance(email, str) else "",
        name=name if isinstance(name, str) else "",
        role=cast(str, role),
        groups=tuple(groups),
        auth_mode="jwt",
    )


def render_page(user: StubUser, path: str) -> str:
    """The HTML page for a signed-in user; every value HTML-escaped."""
    facts = (
        ("user", "User", user.login),
        ("email", "Email", user.email),
        ("name", "Name", user.name),
        ("role", "Role", user.role),
        ("groups", "Groups", ", ".join(user.groups)),
        ("auth-mode", "Auth mode", user.auth_mode),
        ("path", "Path", path),
    )
    rows = "\n".join(f'<dt>{label}</dt><dd id="{ident}">{html.escape(value)}</dd>' for ident, label, value in facts)
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8"><title>Grafana (contract stub)</title></head>\n'
        "<body><h1>Grafana (contract stub)</h1>\n"
        "<p>Not Grafana: a stand-in that follows Grafana's documented [auth.proxy] and [auth.jwt] contract, "
        "for idgate's tests and demo.</p>\n"
        f"<dl>\n{rows}\n</dl></body></html>\n"
    )


class GrafanaStubApp:
    """The ASGI application; holds the records and the key cache of one running instance."""

    def __init__(self, settings: StubSettings) -> None:
        self.settings = settings
        verify: ssl.SSLContext | bool = True
        if settings.ca_file:
            verify = ssl.create_default_context(cafile=settings.ca_file)
        self._client = httpx.AsyncClient(verify=verify)
        self._keys = (
            JwksKeys(
                url=settings.jwks_url,
                client=self._client,
                ttl=settings.cache_ttl,
                refetch_on_unknown_kid=settings.refetch_on_unknown_kid,
            )
            if settings.jwks_url
            else None
        )
        self._records: list[GrafanaRecord] = []

    @property
    def records(self) -> list[GrafanaRecord]:
        """A copy of the records so far, oldest first."""
        return list(self._records)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        response = await self._handle(Request(scope, receive))
        await response(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _handle(self, request: Request) -> Response:
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        path = raw_path.decode("latin-1").partition("?")[0]
        if request.method == "GET" and path == CONTROL_REQUESTS:
            return JSONResponse(self._records)
        if request.method == "POST" and path == CONTROL_RESET:
            dropped = len(self._records)
            self._records.clear()
            return JSONResponse({"reset": dropped})

        too_large = not await _drain_body(request)
        token = request.headers.get(self.settings.jwt_header) if self._keys is not None else None
        mode: Literal["jwt", "proxy"] = "jwt" if token is not None else "proxy"
        user: StubUser | None = None
        if too_large:
            response: Response = JSONResponse({"message": "request body too large"}, status_code=413)
        else:
            try:
                if token is not None and self._keys is not None:
                    user = await jwt_user(token, self._keys, self.settings)
                else:
                    user = proxy_user(request.headers, encoded=self.settings.headers_encoded)
            except Denied as exc:
                response = JSONResponse(exc.body, status_code=401)
            else:
                if request.method == "GET" and (path == "/api/user" or path.endswith("/api/user")):
                    response = JSONResponse(user.api_user())
                else:
                    response = HTMLResponse(render_page(user, path))
        self._records.append(
            {
                "upstream": self.settings.name,
                "method": request.method,
                "path": path,
                "query": request.scope.get("query_string", b"").decode("latin-1"),
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in request.headers.raw],
                "status": response.status_code,
                "auth_mode": mode,
                "login": user.login if user is not None else None,
            }
        )
        return response


async def _drain_body(request: Request) -> bool:
    """Read and discard the request body; False when it exceeds ``MAX_BODY_BYTES``."""
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return False
    return True


async def _serve(settings: StubSettings, host: str, port: int) -> None:
    config = uvicorn.Config(
        GrafanaStubApp(settings),
        host=host,
        port=port,
        lifespan="on",
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"grafana-stub {settings.name} listening on {shown}:{bound[1]}", flush=True)
    await task


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m idgate_devstack.grafana_stub",
        description="Grafana contract stub (not Grafana): [auth.proxy] and [auth.jwt] as documented.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="listen port; 0 picks a free one")
    parser.add_argument("--name", default="grafana", help='value of "upstream" in records (default grafana)')
    parser.add_argument("--jwks-url", help="[auth.jwt] jwk_set_url; without it [auth.jwt] is disabled")
    parser.add_argument("--ca-file", help="PEM CA bundle for fetching the JWKS over https")
    parser.add_argument("--expect-iss", help='expect_claims "iss"')
    parser.add_argument("--expect-aud", help='expect_claims "aud"')
    parser.add_argument("--jwt-header", default="X-JWT-Assertion", help="[auth.jwt] header_name")
    parser.add_argument("--role-claim", default="role", help="role_attribute_path (a plain claim name)")
    parser.add_argument("--username-claim", default="email", help="username_claim (default email)")
    parser.add_argument("--cache-ttl", type=float, default=60.0, help="JWKS cache_ttl in seconds (default 60)")
    parser.add_argument(
        "--no-refetch-on-unknown-kid",
        dest="refetch_on_unknown_kid",
        action="store_false",
        help="like real Grafana: an unknown kid waits for the cache to expire",
    )
    parser.add_argument("--leeway", type=float, default=60.0, help="exp/nbf/iat leeway in seconds (default 60)")
    parser.add_argument("--headers-encoded", action="store_true", help="[auth.proxy] headers_encoded = true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; runs until interrupted. Returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = StubSettings(
            name=args.name,
            jwks_url=args.jwks_url,
            ca_file=args.ca_file,
            expect_iss=args.expect_iss,
            expect_aud=args.expect_aud,
            jwt_header=args.jwt_header,
            role_claim=args.role_claim,
            username_claim=args.username_claim,
            cache_ttl=args.cache_ttl,
            refetch_on_unknown_kid=args.refetch_on_unknown_kid,
            leeway=args.leeway,
            headers_encoded=args.headers_encoded,
        )
    except ValueError as exc:
        parser.error(str(exc))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(settings, args.host, args.port))
    return 0


class GrafanaStub(ReadyLineServer[GrafanaRecord]):
    """Runs the stub as a subprocess (context manager), mirroring ``EchoUpstream``.

    ``port=0`` lets the child pick a free port; ``address`` / ``url`` tell which one once started. The keyword
    arguments are those of ``StubSettings`` (``jwks_url=None``: proxy mode only). ``startup_timeout`` is in seconds.
    The child's stderr goes to this process's stderr.
    """

    kind = "grafana stub"
    ready_re = READY_RE

    def __init__(
        self,
        name: str = "grafana",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 10.0,
        jwks_url: str | None = None,
        ca_file: str | None = None,
        expect_iss: str | None = None,
        expect_aud: str | None = None,
        jwt_header: str = "X-JWT-Assertion",
        role_claim: str = "role",
        username_claim: str = "email",
        cache_ttl: float = 60.0,
        refetch_on_unknown_kid: bool = True,
        leeway: float = 60.0,
        headers_encoded: bool = False,
    ) -> None:
        super().__init__(name, host=host, port=port, startup_timeout=startup_timeout)
        self.settings = StubSettings(
            name=name,
            jwks_url=jwks_url,
            ca_file=ca_file,
            expect_iss=expect_iss,
            expect_aud=expect_aud,
            jwt_header=jwt_header,
            role_claim=role_claim,
            username_claim=username_claim,
            cache_ttl=cache_ttl,
            refetch_on_unknown_kid=refetch_on_unknown_kid,
            leeway=leeway,
            headers_encoded=headers_encoded,
        )

    def command(self) -> list[str]:
        """The child's command line."""
        s = self.settings
        cmd = [sys.executable, "-m", "idgate_devstack.grafana_stub", "--host", self.host, "--port", str(self.port)]
        cmd += ["--name", s.name, "--jwt-header", s.jwt_header, "--role-claim", s.role_claim]
        cmd += ["--username-claim", s.username_claim, "--cache-ttl", str(s.cache_ttl), "--leeway", str(s.leeway)]
        for flag, value in (
            ("--jwks-url", s.jwks_url),
            ("--ca-file", s.ca_file),
            ("--expect-iss", s.expect_iss),
            ("--expect-aud", s.expect_aud),
        ):
            if value is not None:
                cmd += [flag, value]
        if s.headers_encoded:
            cmd.append("--headers-encoded")
        if not s.refetch_on_unknown_kid:
            cmd.append("--no-refetch-on-unknown-kid")
        return cmd


if __name__ == "__main__":
    sys.exit(main())
