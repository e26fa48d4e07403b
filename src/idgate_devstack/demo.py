"""``idgate demo``: HAProxy + idgate + the test IdP + sample upstreams on loopback, until Ctrl-C.

Ports (fixed so the printed commands stay valid): HAProxy HTTPS 8443 (``--https-port``), HTTP 8080, h2c 8081
(cleartext HTTP/2 for gRPC), stats 8404; idgate 9180; test IdP https://localhost:9443; upstreams app 9101, looker
9102, grafana 9103, gRPC ``demo.Echo`` 9104. TLS material is generated under ``.run/demo/tls/`` and logs go to
``.run/demo/*.log`` in the repository.

``--check`` runs the same stack, sends a few requests and gRPC calls through HAProxy with real tokens, prints what
the upstreams received and exits 0 when every answer was as expected (1 otherwise).
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import ssl
import threading
from pathlib import Path
from typing import Literal

import grpc  # type: ignore[import-untyped,unused-ignore]
import httpx

from idgate_devstack.certs import generate_dev_certs
from idgate_devstack.echo import EchoUpstream
from idgate_devstack.grafana_stub import GrafanaStub
from idgate_devstack.grpc_client import EchoStub, echo_stub, open_channel
from idgate_devstack.grpc_echo import GrpcUpstream
from idgate_devstack.haproxy import Haproxy, HaproxySettings, haproxy_dir
from idgate_devstack.idp import IdpConfig, TestIdp
from idgate_devstack.login import login
from idgate_devstack.navigate import browser_login
from idgate_devstack.service import IdgateService

AUDIENCE = "https://api.idgate.test"
CLIENT_SECRET = "idgate-test-secret-0123456789abcdef"  # noqa: S105 - the test IdP's static demo client
IDP_PORT, IDGATE_PORT, SPOA_PORT = 9443, 9180, 9181
UPSTREAM_PORTS = {"app": 9101, "looker": 9102, "grafana": 9103, "grpc": 9104}
H2C_PORT = 8081
Upstream = EchoUpstream | GrafanaStub | GrpcUpstream


def _write_secrets(run: Path) -> None:
    secrets_dir = run / "secrets"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    (secrets_dir / "client_secret").write_text(CLIENT_SECRET)
    keys = secrets_dir / "session_keys"
    if not keys.exists():  # kept across demo runs, so browser sessions survive a restart
        keys.write_text(base64.b64encode(os.urandom(32)).decode())
    for path in secrets_dir.iterdir():
        path.chmod(0o600)


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


def _check_grpc(settings: HaproxySettings, ca_file: Path, tokens: dict[str, str]) -> bool:
    https_target = settings.https_url.removeprefix("https://")
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
        with open_channel(target, ca_file=None if h2c else ca_file) as channel:
            metadata = (("authorization", f"Bearer {tokens[user]}"),) if user else ()
            status = _grpc_status(echo_stub(channel), method, metadata)
        ok &= status == expected
        where = "h2c" if h2c else "TLS"
        print(
            f"  {'ok ' if status == expected else 'BAD'} {user or 'anonymous':9} gRPC {method:7} ({where}) → {status}"
        )
    return ok


def _check(
    base: str, ca: ssl.SSLContext, tokens: dict[str, str], upstreams: dict[str, Upstream], grpc_ok: bool
) -> bool:
    cases = [
        ("alice", "/grafana/", 200),
        ("bob", "/grafana/", 200),
        ("bob", "/admin/", 403),
        (None, "/app/", 401),
        (None, "/public/", 200),
        ("alice", "/looker/", 200),
    ]
    ok = grpc_ok
    with httpx.Client(verify=ca, timeout=10) as client:
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
    for name, upstream in upstreams.items():
        if isinstance(upstream, GrpcUpstream):
            seen = [(r["method"], r["metadata"]) for r in upstream.requests()]
        else:
            seen = [(r["path"], r["headers"]) for r in upstream.requests()]
        for what, fields in seen:
            ident = {n: v for n, v in fields if n.lower().startswith(("x-auth-", "x-webauth-"))}
            print(f"  upstream {name} got {what} with {ident}")
    return ok


def run_demo(*, https_port: int = 8443, check: bool = False, mode: Literal["spoe", "auth_request"] = "spoe") -> int:
    """Run the demo stack; ``https_port`` must stay 8443 for browser login (config/demo.yaml's redirect URI)."""
    repo = haproxy_dir().parent
    run = repo / ".run" / "demo"
    certs = generate_dev_certs(run / "tls")
    _write_secrets(run)
    site = f"https://127.0.0.1:{https_port}"
    redirect_uri = f"{site}/.idgate/callback"
    ca = ssl.create_default_context(cafile=str(certs.ca))
    with contextlib.ExitStack() as stack:
        idp = stack.enter_context(
            TestIdp(
                IdpConfig(
                    port=IDP_PORT,
                    tls_cert=certs.cert,
                    tls_key=certs.key,
                    ca_file=certs.ca,
                    redirect_uris=(redirect_uri,),
                    resources=(AUDIENCE,),
                    access_token_ttl=3600,
                    log_file=run / "idp.log",
                )
            )
        )
        upstreams: dict[str, Upstream] = {
            "app": stack.enter_context(EchoUpstream("app", port=UPSTREAM_PORTS["app"])),
            "looker": stack.enter_context(EchoUpstream("looker", port=UPSTREAM_PORTS["looker"])),
            "grafana": stack.enter_context(
                GrafanaStub(
                    port=UPSTREAM_PORTS["grafana"],
                    jwks_url=f"{site}/.idgate/jwks.json",
                    ca_file=str(certs.ca),
                    expect_iss="https://idgate.demo",
                    expect_aud="grafana",
                    headers_encoded=True,
                )
            ),
            "grpc": stack.enter_context(GrpcUpstream("grpc", port=UPSTREAM_PORTS["grpc"])),
        }
        stack.enter_context(
            IdgateService(config=repo / "config" / "demo.yaml", port=IDGATE_PORT, log_path=run / "idgate.log")
        )
        settings = HaproxySettings(
            tls_pem=certs.pem,
            mode=mode,
            spoa_addr=f"127.0.0.1:{SPOA_PORT}",
            https_bind=f"127.0.0.1:{https_port}",
            auth_url=f"http://127.0.0.1:{IDGATE_PORT}/auth",
            upstream_app=upstreams["app"].address,
            upstream_grafana=upstreams["grafana"].address,
            upstream_looker=upstreams["looker"].address,
            upstream_grpc=upstreams["grpc"].address,
            h2c_bind=f"127.0.0.1:{H2C_PORT}",
            stats_socket=run / "haproxy.sock",
        )
        stack.enter_context(Haproxy(settings, log_path=run / "haproxy.log"))
        tokens = {
            user: login(
                issuer=idp.issuer,
                client_id="idgate",
                client_secret="idgate-test-secret-0123456789abcdef",  # noqa: S106
                redirect_uri=redirect_uri,
                username=user,
                resource=AUDIENCE,
                verify=ca,
            ).access_token
            for user in ("alice", "bob")
        }
        base = settings.https_url
        if check:
            print(f"idgate demo --check against {base} ({mode} mode)")
            grpc_ok = _check_grpc(settings, certs.ca, tokens)
            return 0 if _check(base, ca, tokens, upstreams, grpc_ok) else 1
        _print_banner(repo, run, base, settings, idp.issuer, tokens)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):  # explicit: a shell may start us with SIGINT ignored
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        print("stopping…", flush=True)
    return 0


def _print_banner(
    repo: Path, run: Path, base: str, settings: HaproxySettings, issuer: str, tokens: dict[str, str]
) -> None:
    ca = (run / "tls" / "ca.pem").relative_to(repo)
    grpc_call = ".venv/bin/python -m idgate_devstack.grpc_echo call"
    target = base.removeprefix("https://")
    print(
        f"""
idgate demo is up — Ctrl-C stops everything.
  HAProxy (TLS, h2)   {base}   (plain HTTP {settings.http_url} redirects)
  idgate              http://127.0.0.1:{IDGATE_PORT}  (/healthz, /readyz)
  logs                {run.relative_to(repo)}/idgate.log (JSON decisions), haproxy.log, idp.log
  test IdP            {issuer}  (users alice, bob, carol, mallory, trudy; any password)
  stats / metrics     {settings.stats_url}/stats   {settings.stats_url}/metrics
  upstreams           {", ".join(f"{name} :{port}" for name, port in UPSTREAM_PORTS.items())}
                      (grafana is the Grafana-contract stub: it verifies idgate's signed assertion)
  gRPC (h2c)          127.0.0.1:{H2C_PORT}  (cleartext HTTP/2, same policy; gRPC over TLS on {base} too)
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
  {grpc_call} --target 127.0.0.1:{H2C_PORT} --token "$ALICE" Ticks '{{"count": 3, "interval": 1}}'   # h2c stream
"""
    )
