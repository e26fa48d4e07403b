"""Looker contract stub: checks signed embed URLs and serves the cookieless embed API the way Looker's documentation
says, and reports which embed user it would create.

This is NOT Looker. Looker cannot run here; the stub implements only the contract idgate must satisfy as Looker's
embedding application (Looker docs "Signed embedding", "Cookieless embedding", API 4.0 ``login``,
``acquire_embed_cookieless_session``, ``generate_tokens_for_cookieless_session``). It is written apart from
``idgate.looker`` (it imports nothing from idgate), so a test passing through it checks idgate against the documented
algorithm, not against itself.

Run it as::

    python -m idgate_devstack.looker_stub --port N [--host H] [--name NAME] [--public-host HOST[:PORT]]
        [--embed-secret-file PATH] [--client-id ID --client-secret-file PATH]

Once listening it prints ``looker-stub NAME listening on HOST:PORT`` and flushes.

Signed embedding, ``GET /login/embed/<percent-encoded target>?…``: every parameter at most once; ``nonce``,
``time``, ``session_length``, ``external_user_id``, ``permissions``, ``models`` and ``signature`` required; each
value must be JSON of the documented type (``time``/``session_length`` integers, lists of strings, ``group_ids``
integers, ``user_attributes`` a string map, ``force_logout_login`` a boolean); every permission must be one of
Looker's embed permissions and ``models`` non-empty; ``session_length`` at most 30 days. The signature is recomputed
as ``base64(HMAC-SHA1(secret, lines))``, the lines being the host (``--public-host``, else the request's ``Host``),
the raw (still percent-encoded) path, then the raw JSON text of ``nonce``, ``time``, ``session_length``,
``external_user_id``, ``permissions``, ``models``, ``group_ids``, ``external_group_id``, ``user_attributes``,
``access_filters`` — each optional one only when present — joined by ``\\n``. ``time`` must be within 5 minutes of
the stub's clock; a nonce is accepted once. A refusal is 401 JSON ``{"error": <reason>}``: ``duplicate_parameter``,
``missing_parameter``, ``bad_json``, ``bad_type``, ``unknown_permission``, ``no_models``, ``bad_session_length``,
``bad_signature``, ``time_out_of_window``, ``nonce_replayed``, ``embed_disabled``. Success records the embed user
(by ``external_user_id``, replacing its access as Looker does) and a login, sets a stub session cookie and
redirects (302) to the target, which renders ``<h1>Looker (contract stub)</h1>`` with the user's facts in elements
``id="external-user-id"``, ``first-name``, ``last-name``, ``permissions``, ``models``, ``group-ids``,
``user-attributes`` and ``target`` (JSON text, HTML-escaped). ``/embed/…`` without the stub's cookie → 401.

Cookieless embedding (API 4.0, JSON):

    POST /api/4.0/login                 form client_id, client_secret → {access_token, token_type, expires_in};
                                        wrong credentials → 404 {"message": "Not found"} (as Looker answers)
    POST /api/4.0/embed/cookieless_session/acquire       Authorization: token <access_token>; the embed user's
                                        fields (permissions and models checked as above); an existing
                                        ``session_reference_token`` joins that session → {authentication_token,
                                        authentication_token_ttl, navigation_token, navigation_token_ttl, api_token,
                                        api_token_ttl, session_reference_token, session_reference_token_ttl}
    PUT  /api/4.0/embed/cookieless_session/generate_tokens   {session_reference_token, navigation_token,
                                        api_token} (the current ones) → new navigation and API tokens; else 400

Inspection (tests, the demo; never checked against anything)::

    GET  /__looker/users     -> {"users": {external_user_id: {...}}, "logins": [{"external_user_id", "via"}]}
    GET  /__echo/requests    -> the logins so far (the ReadyLineServer contract)
    POST /__echo/reset       -> forget users, logins, nonces and sessions

What it cannot check: that Looker accepts these permissions for the models in a real instance, group ids that
exist, user attribute names defined in Looker, the content of the target, and Looker's own clock skew handling
beyond the documented 5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import html
import json
import re
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from idgate_devstack.process import ReadyLineServer

READY_RE = re.compile(r"^looker-stub (?P<name>\S+) listening on (?P<host>\S+):(?P<port>\d+)$")
EMBED_PERMISSIONS = frozenset(
    [
        "access_data",
        "see_lookml_dashboards",
        "see_looks",
        "see_user_dashboards",
        "explore",
        "create_table_calculations",
        "create_custom_fields",
        "can_create_forecast",
        "save_content",
        "create_public_looks",
        "download_with_limit",
        "download_without_limit",
        "schedule_look_emails",
        "schedule_external_look_emails",
        "create_alerts",
        "follow_alerts",
        "send_to_s3",
        "send_to_sftp",
        "send_outgoing_webhook",
        "send_to_integration",
        "see_sql",
        "see_lookml",
        "develop",
        "deploy",
        "support_access_toggle",
        "use_sql_runner",
        "clear_cache_refresh",
        "see_drill_overlay",
        "embed_browse_spaces",
        "embed_save_shared_space",
    ]
)
"""Looker's signed embedding permissions (its "Signed embedding" page)."""
SIGNED = (
    "nonce",
    "time",
    "session_length",
    "external_user_id",
    "permissions",
    "models",
    "group_ids",
    "external_group_id",
    "user_attributes",
    "access_filters",
)
REQUIRED = ("nonce", "time", "session_length", "external_user_id", "permissions", "models", "signature")
TIME_WINDOW_SECONDS = 300
MAX_SESSION_LENGTH = 2_592_000
COOKIE = "looker_stub_session"


class Refused(Exception):
    """A refused embed login or API call; ``reason`` is the stub's reason code."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(kw_only=True)
class StubState:
    """Everything the stub remembers (one process, one event loop)."""

    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    logins: list[dict[str, Any]] = field(default_factory=list)
    nonces: set[str] = field(default_factory=set)
    browser_sessions: dict[str, str] = field(default_factory=dict)  # cookie → external_user_id
    api_tokens: set[str] = field(default_factory=set)
    cookieless: dict[str, dict[str, str]] = field(default_factory=dict)  # reference → current tokens + user


def _typed(name: str, value: Any) -> None:
    """Raise Refused ``bad_type`` unless ``value`` (parsed JSON) has the documented type of parameter ``name``."""
    strings = isinstance(value, list) and all(isinstance(v, str) for v in value)
    ok = {
        "nonce": isinstance(value, str) and value != "",
        "time": type(value) is int,
        "session_length": type(value) is int,
        "external_user_id": isinstance(value, str) and value != "",
        "permissions": strings,
        "models": strings,
        "group_ids": isinstance(value, list) and all(type(v) is int or isinstance(v, str) for v in value),
        "external_group_id": isinstance(value, str),
        "user_attributes": isinstance(value, dict) and all(isinstance(v, str | int | float) for v in value.values()),
        "access_filters": isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()),
        "first_name": isinstance(value, str),
        "last_name": isinstance(value, str),
        "force_logout_login": isinstance(value, bool),
    }.get(name, True)
    if not ok:
        raise Refused("bad_type")


def check_access(fields: dict[str, Any]) -> None:
    """Permissions known, models non-empty, session length in range. Raises Refused."""
    if any(p not in EMBED_PERMISSIONS for p in fields.get("permissions", [])):
        raise Refused("unknown_permission")
    if not fields.get("models"):
        raise Refused("no_models")
    length = fields.get("session_length", 300)
    if not 0 < length <= MAX_SESSION_LENGTH:
        raise Refused("bad_session_length")


def verify_signed_url(
    *, raw_path: str, raw_query: str, host: str, secret: str, now: float, nonces: set[str]
) -> dict[str, Any]:
    """The embed user's fields of a signed embed URL, or Refused. Remembers the nonce once everything else holds."""
    pairs = parse_qsl(raw_query, keep_blank_values=True, strict_parsing=False)
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise Refused("duplicate_parameter")
    raw = dict(pairs)
    if any(n not in raw for n in REQUIRED):
        raise Refused("missing_parameter")
    fields: dict[str, Any] = {}
    for name, text in raw.items():
        if name == "signature":
            continue
        try:
            fields[name] = json.loads(text)
        except ValueError:
            raise Refused("bad_json") from None
        _typed(name, fields[name])
    lines = [host, raw_path, *(raw[n] for n in SIGNED if n in raw)]
    expected = base64.b64encode(hmac.new(secret.encode(), "\n".join(lines).encode(), hashlib.sha1).digest()).decode()
    if not hmac.compare_digest(expected.encode(), raw["signature"].encode()):
        raise Refused("bad_signature")
    if abs(now - fields["time"]) > TIME_WINDOW_SECONDS:
        raise Refused("time_out_of_window")
    check_access(fields)
    if fields["nonce"] in nonces:
        raise Refused("nonce_replayed")
    nonces.add(fields["nonce"])
    return fields


def _user_record(fields: dict[str, Any], via: str) -> dict[str, Any]:
    return {
        "external_user_id": fields["external_user_id"],
        "first_name": fields.get("first_name", "Embed"),
        "last_name": fields.get("last_name", "User"),
        "permissions": fields.get("permissions", []),
        "models": fields.get("models", []),
        "group_ids": fields.get("group_ids", []),
        "external_group_id": fields.get("external_group_id"),
        "user_attributes": fields.get("user_attributes", {}),
        "access_filters": fields.get("access_filters", {}),
        "via": via,
    }


def create_app(
    *, name: str, public_host: str | None, embed_secret: str | None, client: tuple[str, str] | None
) -> Starlette:
    """The stub's ASGI app."""
    state = StubState()

    def record(fields: dict[str, Any], via: str) -> dict[str, Any]:
        user = _user_record(fields, via)
        state.users[user["external_user_id"]] = user  # Looker replaces the embed user's access on each login
        state.logins.append({"external_user_id": user["external_user_id"], "via": via, "upstream": name})
        return user

    async def login_embed(request: Request) -> Response:
        raw_path = request.scope.get("raw_path", b"").decode("ascii", "replace").split("?", 1)[0]
        if embed_secret is None:
            return JSONResponse({"error": "embed_disabled"}, 401)
        try:
            fields = verify_signed_url(
                raw_path=raw_path,
                raw_query=request.scope.get("query_string", b"").decode("ascii", "replace"),
                host=public_host or request.headers.get("host", ""),
                secret=embed_secret,
                now=time.time(),
                nonces=state.nonces,
            )
        except Refused as exc:
            return JSONResponse({"error": exc.reason}, 401)
        target = unquote(raw_path.removeprefix("/login/embed/"))
        if not target.startswith("/embed/"):
            return JSONResponse({"error": "bad_target"}, 401)
        user = record(fields, "signed")
        cookie = secrets.token_urlsafe(16)
        state.browser_sessions[cookie] = user["external_user_id"]
        response = RedirectResponse(target, 302)
        response.set_cookie(COOKIE, cookie, httponly=True, samesite="lax")
        return response

    async def embedded(request: Request) -> Response:
        user_id = state.browser_sessions.get(request.cookies.get(COOKIE, ""))
        if user_id is None:
            return HTMLResponse("<h1>Looker (contract stub)</h1><p id='error'>not signed in</p>", 401)
        user = state.users[user_id]
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        items = [
            ("external-user-id", user["external_user_id"]),
            ("first-name", user["first_name"]),
            ("last-name", user["last_name"]),
            ("permissions", json.dumps(user["permissions"])),
            ("models", json.dumps(user["models"])),
            ("group-ids", json.dumps(user["group_ids"])),
            ("user-attributes", json.dumps(user["user_attributes"], ensure_ascii=False)),
            ("target", target),
        ]
        body = "".join(f"<dd id='{k}'>{html.escape(str(v))}</dd>" for k, v in items)
        page = "<!doctype html><html><head><meta charset='utf-8'><title>Looker stub</title></head><body>"
        return HTMLResponse(f"{page}<h1>Looker (contract stub)</h1><dl>{body}</dl></body></html>")

    async def api_login(request: Request) -> Response:
        form = dict(parse_qsl((await request.body()).decode("utf-8", "replace"), keep_blank_values=True))
        if client is None or (form.get("client_id"), form.get("client_secret")) != client:
            return JSONResponse({"message": "Not found"}, 404)
        token = secrets.token_urlsafe(24)
        state.api_tokens.add(token)
        return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": 3600})

    def authorized(request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() in ("token", "bearer") and token in state.api_tokens

    def tokens(reference: str, user_id: str) -> dict[str, Any]:
        current = {
            "navigation_token": secrets.token_urlsafe(16),
            "api_token": secrets.token_urlsafe(16),
            "external_user_id": user_id,
        }
        state.cookieless[reference] = current
        return {
            "navigation_token": current["navigation_token"],
            "navigation_token_ttl": 600,
            "api_token": current["api_token"],
            "api_token_ttl": 600,
            "session_reference_token_ttl": 3600,
        }

    async def acquire(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"message": "Requires authentication."}, 401)
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise Refused("bad_json")
            for key, value in body.items():
                _typed(key, value)
            if not isinstance(body.get("external_user_id"), str):
                raise Refused("missing_parameter")
            check_access(body)
        except ValueError:
            return JSONResponse({"message": "bad_json"}, 400)
        except Refused as exc:
            return JSONResponse({"message": exc.reason}, 422)
        reference = body.get("session_reference_token")
        if not (isinstance(reference, str) and reference in state.cookieless):
            reference = secrets.token_urlsafe(24)
            record(body, "cookieless")
        answer = tokens(reference, body["external_user_id"])
        return JSONResponse(
            {
                "authentication_token": secrets.token_urlsafe(16),
                "authentication_token_ttl": 30,
                "session_reference_token": reference,
                **answer,
            }
        )

    async def generate_tokens(request: Request) -> Response:
        if not authorized(request):
            return JSONResponse({"message": "Requires authentication."}, 401)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"message": "bad_json"}, 400)
        current = state.cookieless.get(body.get("session_reference_token", "") if isinstance(body, dict) else "")
        if current is None or any(body.get(k) != current[k] for k in ("navigation_token", "api_token")):
            return JSONResponse({"message": "Invalid input tokens"}, 400)
        return JSONResponse(tokens(body["session_reference_token"], current["external_user_id"]))

    async def users(request: Request) -> Response:
        return JSONResponse({"users": state.users, "logins": state.logins})

    async def logins(request: Request) -> Response:
        return JSONResponse(state.logins)

    async def reset(request: Request) -> Response:
        dropped = len(state.logins)
        state.users.clear()
        state.logins.clear()
        state.nonces.clear()
        state.browser_sessions.clear()
        state.cookieless.clear()
        return JSONResponse({"reset": dropped})

    return Starlette(
        routes=[
            Route("/login/embed/{target:path}", login_embed, methods=["GET"]),
            Route("/embed/{rest:path}", embedded, methods=["GET"]),
            Route("/api/4.0/login", api_login, methods=["POST"]),
            Route("/api/4.0/embed/cookieless_session/acquire", acquire, methods=["POST"]),
            Route("/api/4.0/embed/cookieless_session/generate_tokens", generate_tokens, methods=["PUT"]),
            Route("/__looker/users", users, methods=["GET"]),
            Route("/__echo/requests", logins, methods=["GET"]),
            Route("/__echo/reset", reset, methods=["POST"]),
        ]
    )


async def _serve(app: Starlette, name: str, host: str, port: int) -> None:
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            await task
            return
        await asyncio.sleep(0.01)
    bound = server.servers[0].sockets[0].getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    print(f"looker-stub {name} listening on {shown}:{bound[1]}", flush=True)
    await task


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; runs until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m idgate_devstack.looker_stub", description="Looker contract stub (not Looker)."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="looker")
    parser.add_argument("--public-host", help="host[:port] signed as the first line (default: the Host header)")
    parser.add_argument("--embed-secret-file", help="file holding the embed secret")
    parser.add_argument("--client-id", help="API3 client id (cookieless)")
    parser.add_argument("--client-secret-file", help="file holding the API3 client secret")
    args = parser.parse_args(argv)
    secret = Path(args.embed_secret_file).read_text().strip() if args.embed_secret_file else None
    client_secret = Path(args.client_secret_file).read_text().strip() if args.client_secret_file else None
    client = (args.client_id, client_secret) if args.client_id and client_secret else None
    app = create_app(name=args.name, public_host=args.public_host, embed_secret=secret, client=client)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(app, args.name, args.host, args.port))
    return 0


class LookerStub(ReadyLineServer[dict[str, Any]]):
    """Runs the stub as a subprocess (context manager). Secrets reach the child through files in ``secrets_dir``
    (mode 0600); ``users()`` is the inspection call."""

    kind = "looker stub"
    ready_re = READY_RE

    def __init__(
        self,
        name: str = "looker",
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 10.0,
        embed_secret: str | None = None,
        client_id: str | None = None,
        client_secret: str | None = None,
        public_host: str | None = None,
        secrets_dir: Path,
    ) -> None:
        super().__init__(name, host=host, port=port, startup_timeout=startup_timeout)
        self.client_id = client_id
        self.public_host = public_host
        self.embed_secret_file = self._secret(secrets_dir / f"looker-stub-{name}-embed", embed_secret)
        self.client_secret_file = self._secret(secrets_dir / f"looker-stub-{name}-client", client_secret)

    @staticmethod
    def _secret(path: Path, value: str | None) -> Path | None:
        if value is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
        path.chmod(0o600)
        return path

    def command(self) -> list[str]:
        """The child's command line."""
        cmd = [sys.executable, "-m", "idgate_devstack.looker_stub", "--host", self.host, "--port", str(self.port)]
        cmd += ["--name", self.name]
        if self.embed_secret_file is not None:
            cmd += ["--embed-secret-file", str(self.embed_secret_file)]
        if self.client_id is not None and self.client_secret_file is not None:
            cmd += ["--client-id", self.client_id, "--client-secret-file", str(self.client_secret_file)]
        if self.public_host is not None:
            cmd += ["--public-host", self.public_host]
        return cmd

    def users(self) -> dict[str, Any]:
        """``GET /__looker/users``: the embed users the stub would have created, and the logins."""
        response = httpx.get(self.url + "/__looker/users", timeout=5)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data


if __name__ == "__main__":
    sys.exit(main())
