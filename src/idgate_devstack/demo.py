"""``idgate demo``: HAProxy + idgate + the test IdP + sample upstreams on loopback, until Ctrl-C.

Ports (fixed so the printed commands stay valid): HAProxy HTTPS 8443 (``--https-port``), HTTP 8080, h2c 8081
(cleartext HTTP/2 for gRPC), stats 8404; idgate 9180; test IdP https://localhost:9443; upstreams app 9101, looker
9102 (the ``gate`` profile), grafana 9103, gRPC ``demo.Echo`` 9104; the Looker contract stub (NOT Looker, the
``looker_embed`` upstream ``analytics``) http://127.0.0.1:9105. TLS material is generated under
``.run/demo/tls/`` and logs go to ``.run/demo/*.log`` in the repository.

``--check`` runs the same stack, sends a few requests and gRPC calls through HAProxy with real tokens, prints what
the upstreams received and exits 0 when every answer was as expected (1 otherwise).
"""

from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import grpc  # type: ignore[import-untyped,unused-ignore]

from idgate_devstack.grpc_client import EchoStub, echo_stub, open_channel
from idgate_devstack.grpc_echo import GrpcUpstream
from idgate_devstack.haproxy import haproxy_dir
from idgate_devstack.looker_stub import LookerStub
from idgate_devstack.navigate import browser_login
from idgate_devstack.stack import Stack, StackPlan, start_stack
from idgate_devstack.stack_config import write_looker_secrets


def _grpc_status(echo: EchoStub, method: str, metadata: tuple[tuple[str, str], ...]) -> str:
    """Call ``method`` of demo.Echo and return the status name (``OK``, ``PERMISSION_DENIED``, ...)."""
    try:
        if method == "Ticks":
            list(echo.ticks(2, metadata=metadata, timeout=10))  # a stream: the status arrives while iterating
        elif method == "Admin":
            echo.admin(metadata=metadata, timeout=10)
        else:
            echo.whoami(metadata=metadata, timeout=10)
    except grpc.RpcError as error:
        return str(error.code().name)
    return "OK"


def _check_grpc(stack: Stack, tokens: dict[str, str]) -> bool:
    settings, https_target = stack.settings, stack.url.removeprefix("https://")
    cases = [
        ("alice", "Whoami", "OK", False),
        ("alice", "Admin", "OK", False),
        ("bob", "Admin", "PERMISSION_DENIED", False),
        (None, "Whoami", "UNAUTHENTICATED", False),
        ("bob", "Ticks", "OK", True),
    ]
    ok = True
    for user, method, expected, h2c in cases:
        target = settings.h2c_target if h2c else https_target
        assert target is not None
        with open_channel(target, ca_file=None if h2c else stack.certs.ca) as channel:
            metadata = (("authorization", f"Bearer {tokens[user]}"),) if user else ()
            status = _grpc_status(echo_stub(channel), method, metadata)
        ok &= status == expected
        where = "h2c" if h2c else "TLS"
        print(
            f"  {'ok ' if status == expected else 'BAD'} {user or 'anonymous':9} gRPC {method:7} ({where}) → {status}"
        )
    return ok


def _check(stack: Stack, tokens: dict[str, str], grpc_ok: bool) -> bool:
    base = stack.url
    cases = [
        ("alice", "/grafana/", 200),
        ("bob", "/grafana/", 200),
        ("bob", "/admin/", 403),
        (None, "/app/", 401),
        (None, "/public/", 200),
        ("alice", "/looker/", 200),  # Looker behind the gate (profile gate): by group, X-Auth-* headers
        ("bob", "/looker/", 403),
    ]
    ok = grpc_ok
    with stack.client() as client:
        for user, path, expected in cases:
            headers = {"authorization": f"Bearer {tokens[user]}"} if user else {}
            status = client.get(base + path, headers=headers).status_code
            ok &= status == expected
            print(f"  {'ok ' if status == expected else 'BAD'} {user or 'anonymous':9} GET {path:10} → {status}")
        result = browser_login(client, "/grafana/d/home", site=base, username="alice")
        me = client.get(base + "/grafana/api/user", headers={"accept": "application/json"})
        login_ok = result.saw_login_form and me.status_code == 200 and me.json().get("authMode") == "jwt"
        ok &= login_ok
        print(f"  {'ok ' if login_ok else 'BAD'} browser login as alice → /grafana/d/home: {me.text[:120]}")
    for name, upstream in stack.upstreams.items():
        if isinstance(upstream, GrpcUpstream):
            seen = [(r["method"], r["metadata"]) for r in upstream.requests()]
        else:
            seen = [(r["path"], r["headers"]) for r in upstream.requests()]
        for what, fields in seen:
            ident = {n: v for n, v in fields if n.lower().startswith(("x-auth-", "x-webauth-"))}
            print(f"  upstream {name} got {what} with {ident}")
    return ok


LOOKER_STUB_PORT = 9105
LOOKER_CLIENT_ID = "idgate-demo"  # config/demo.yaml's upstreams.analytics.looker.client_id
LOOKER_TARGET = "/embed/dashboards/1"


def _looker_stub(secrets_dir: Path) -> LookerStub:
    """The Looker contract stub config/demo.yaml's ``analytics`` upstream points at, sharing the fresh secrets
    written where that config reads them (:func:`~idgate_devstack.stack_config.write_looker_secrets`)."""
    values = write_looker_secrets(secrets_dir)
    return LookerStub(
        "analytics",
        port=LOOKER_STUB_PORT,
        embed_secret=values["looker_embed_secret"],
        client_id=LOOKER_CLIENT_ID,
        client_secret=values["looker_client_secret"],
        secrets_dir=secrets_dir,
    )


def _check_looker(stack: Stack, looker: LookerStub) -> bool:
    """Both Looker paths: the gate (/looker/ by group, done in :func:`_check`) and the embedding application."""
    base, ok = stack.url, True
    html = {"accept": "text/html", "sec-fetch-mode": "navigate"}
    embed = f"{base}/.idgate/looker/embed?target={quote(LOOKER_TARGET, safe='')}"
    for user, expected in (("alice", 200), ("bob", 403)):
        with stack.client() as client:
            browser_login(client, "/", site=base, username=user)
            answer = client.get(embed, headers=html)
            status = answer.status_code
            if answer.status_code == 302 and answer.headers["location"].startswith(looker.url + "/login/embed/"):
                landed = client.get(answer.headers["location"], headers=html)
                if landed.status_code == 302:
                    landed = client.get(looker.url + landed.headers["location"], headers=html)
                status = landed.status_code
            if user == "alice":
                tokens = client.post(
                    f"{base}/.idgate/looker/cookieless/acquire",
                    headers={"origin": base, "x-requested-with": "idgate", "accept": "application/json"},
                )
                good = tokens.status_code == 200 and "navigation_token" in tokens.json()
                ok &= good
                print(f"  {'ok ' if good else 'BAD'} alice     Looker cookieless acquire → {tokens.status_code}")
        ok &= status == expected
        print(f"  {'ok ' if status == expected else 'BAD'} {user:9} Looker signed embed {LOOKER_TARGET} → {status}")
    for user_id, user in looker.users()["users"].items():
        shown = json.dumps({k: user[k] for k in ("via", "first_name", "permissions", "models")})
        print(f"  Looker stub would create embed user {user_id}: {shown}")
    return ok


def run_demo(*, https_port: int = 8443, check: bool = False, mode: Literal["spoe", "auth_request"] = "spoe") -> int:
    """Run the demo stack; ``https_port`` must stay 8443 for browser login (config/demo.yaml's redirect URI)."""
    repo = haproxy_dir().parent
    run = repo / ".run" / "demo"
    plan = StackPlan(
        run_dir=run,
        mode=mode,
        ports="fixed",
        https_port=https_port,
        config=repo / "config" / "demo.yaml",
        secrets_dir=run / "secrets",  # session keys kept across demo runs, so browser sessions survive a restart
        token_ttl=3600,
        id_token_ttl=300,
    )
    with contextlib.ExitStack() as running:
        looker = running.enter_context(_looker_stub(run / "secrets"))
        stack = running.enter_context(start_stack(plan))
        tokens = {user: stack.login(user).access_token for user in ("alice", "bob")}
        if check:
            print(f"idgate demo --check against {stack.url} ({mode} mode)")
            grpc_ok = _check_grpc(stack, tokens)
            looker_ok = _check_looker(stack, looker)
            return 0 if _check(stack, tokens, grpc_ok) and looker_ok else 1
        _print_banner(repo, stack, tokens)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):  # explicit: a shell may start us with SIGINT ignored
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        print("stopping…", flush=True)
    return 0


def _print_banner(repo: Path, stack: Stack, tokens: dict[str, str]) -> None:
    run, base, settings = stack.plan.run_dir, stack.url, stack.settings
    ca = stack.certs.ca.relative_to(repo)
    upstreams = ", ".join(f"{name} :{upstream.port}" for name, upstream in stack.upstreams.items())
    grpc_call = ".venv/bin/python -m idgate_devstack.grpc_echo call"
    target = base.removeprefix("https://")
    print(
        f"""
idgate demo is up — Ctrl-C stops everything.
  HAProxy (TLS, h2)   {base}   (plain HTTP {settings.http_url} redirects)
  idgate              {stack.idgate.url}  (/healthz, /readyz)
  logs                {run.relative_to(repo)}/idgate.log (JSON decisions), haproxy.log, idp.log
  test IdP            {stack.idp.issuer}  (users alice, bob, carol, mallory, trudy; any password)
  stats / metrics     {settings.stats_url}/stats   {settings.stats_url}/metrics
  upstreams           {upstreams}
                      (grafana is the Grafana-contract stub: it verifies idgate's signed assertion)
  gRPC (h2c)          {settings.h2c_target}  (cleartext HTTP/2, same policy; gRPC over TLS on {base} too)
  Looker              gate: /looker (looker-analysts; Looker signs users in itself, docs/looker.md)
                      embed: {base}/.idgate/looker/embed?target={LOOKER_TARGET} → the Looker contract stub
                      (NOT Looker) on http://127.0.0.1:{LOOKER_STUB_PORT}, which shows the embed user it would create
  routes              /public open; /grafana Viewer+; /looker looker-analysts; /admin grafana-admins; / any user;
                      gRPC demo.Echo/Admin echo_admin (alice); demo.Echo/* any user, token not passed on

In a browser: open {base}/grafana/ (accept the dev certificate, or trust {ca}), sign in as alice, bob or carol
(any password) and see the user and Grafana role the stub received; sign out at {base}/.idgate/sign_out

Ready-to-paste (run from {repo}; tokens from a real login at the IdP, valid 1 h):
  export ALICE='{tokens["alice"]}'
  export BOB='{tokens["bob"]}'
  curl --cacert {ca} -H "Authorization: Bearer $ALICE" {base}/grafana/      # 200, X-WEBAUTH-ROLE: Admin
  curl --cacert {ca} -H "Authorization: Bearer $BOB" {base}/admin/          # 403
  curl --cacert {ca} {base}/app/                                           # 401
  {grpc_call} --target {target} --ca {ca} --token "$ALICE" Whoami   # OK: x-auth-* metadata
  {grpc_call} --target {target} --ca {ca} --token "$BOB" Admin      # PERMISSION_DENIED
  {grpc_call} --target {target} --ca {ca} Whoami                    # UNAUTHENTICATED
  {grpc_call} --target {settings.h2c_target} --token "$ALICE" Ticks '{{"count": 3, "interval": 1}}'   # h2c stream
"""
    )
