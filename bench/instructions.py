"""Instructions per SPOE decision, measured with callgrind: repeatable whatever else the machine is doing.

``bench/callgrind`` runs this module. For each variant it starts the agent process under
``valgrind --tool=callgrind`` twice, sends N1 then (in the second run) N2 NOTIFY frames from a client in this
(the parent) process, and prints ``Ir per decision = (Ir(N2) - Ir(N1)) / (N2 - N1)``: start-up, the first
(cold-cache) decisions and shutdown cancel out.

Variants (the agent is always idgate's own ``SpoaAgent`` on uvloop, as ``idgate serve`` runs it):

- ``null``: the handler of ``bench/ibench/null_agent.py`` (a fixed allow, no work): the protocol ceiling;
- ``warm``: the shipped handler (``idgate.runtime`` builds the engine, the agent, the audit log and metrics as
  ``idgate serve`` does; JSON log lines to /dev/null), one token, every request the same except its request id;
- ``cold``: the same with ``server.token_cache_entries: 0`` and ``decision_memo.max_entries: 0`` when that key
  exists, so every request is a full RS256 verification;
- ``decide`` (not run by default): the verified-token cache on, the memo off: every request is decided in full from
  a cached verification (what ``warm`` was before the memo).

The token is an RS256 ``at+jwt`` access token for the unit tests' issuer (``tests/support/fake_issuer``'s ``iss``
and ``aud``) with the claims of the test IdP's tokens, signed by a 2048-bit key made for the run (its JWKS is served
to the agent by an ``httpx.MockTransport``), about 800 characters (the test IdP's are 849).
To measure another tree (say, the commit before a change), put its ``src`` first: ``PYTHONPATH=/other/src``.
One NOTIFY at a time, each carrying the arguments of ``haproxy/spoe-idgate.conf``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
ISS = "https://idp.test"  # tests/support/fake_issuer's issuer and audience; that module is not imported here: it
AUD = "https://api.test"  # makes an RSA key at import, whose random prime search would swamp the counts

VARIANTS = ("null", "warm", "cold", "decide")


def _key() -> Any:
    """The signing key: one per run, handed to the agent process as PEM in ``IDGATE_BENCH_KEY``."""
    from cryptography.hazmat.primitives import serialization

    pem = os.environ["IDGATE_BENCH_KEY"].encode()
    return serialization.load_pem_private_key(pem, password=None)


def _token() -> str:
    import jwt

    now = int(time.time())
    claims = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "exp": now + 3600,
        "iat": now,
        "jti": "dVbY0r3Zg1m4q3Xk8wz5nQ",
        "client_id": "idgate-demo",
        "scope": "openid email profile",
        "email": "alice@example.test",
        "email_verified": True,
        "preferred_username": "alice",
        "name": "Alice",
        "groups": ["staff"],
    }
    return jwt.encode(claims, _key(), algorithm="RS256", headers={"kid": "k1", "typ": "at+jwt"})


def _idp() -> Any:
    """The issuer's JWKS (the public key only, from ``IDGATE_BENCH_JWK``: loading the private key would run
    OpenSSL's randomised key checks inside the measured process)."""
    import httpx

    jwk = json.loads(os.environ["IDGATE_BENCH_JWK"])

    async def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"keys": [jwk]}, headers={"cache-control": "max-age=3600"})

    return httpx.MockTransport(handler)


def _config(variant: str, port: int) -> Any:
    from idgate.config_load import parse_config

    server: dict[str, Any] = {}
    if variant == "cold":
        server["token_cache_entries"] = 0
    raw: dict[str, Any] = {
        "server": server,
        "spoa": {"host": "127.0.0.1", "port": port},
        "issuers": [
            {
                "name": "test",
                "issuer": ISS,
                "jwks_uri": f"{ISS}/jwks",
                "discovery": False,
                "audiences": [AUD],
                "algorithms": ["RS256"],
            }
        ],
        "upstreams": {"app": {}},
        "routes": [{"name": "app", "path": "/", "upstream": "app", "allow": {"authenticated": True}}],
        "audit": {"log_allows": True},
    }
    if variant in ("cold", "decide") and os.environ.get("IDGATE_BENCH_MEMO_KEY", "1") == "1":
        with contextlib.suppress(Exception):
            parse_config({**raw, "decision_memo": {"max_entries": 0}}, environ={})
            raw["decision_memo"] = {"max_entries": 0}
    return parse_config(raw, environ={})


# --- the agent process (runs under valgrind) ---------------------------------------------------------------------


async def _serve(variant: str, port: int) -> None:
    import httpx

    from idgate.spoe.agent import SpoaAgent

    stop = asyncio.Event()
    asyncio.get_running_loop().add_reader(sys.stdin.fileno(), stop.set)
    if variant == "null":
        from ibench.null_agent import allow_everything

        agent = SpoaAgent(handler=allow_everything)
        await agent.start("127.0.0.1", port)
        client = None
    else:
        from idgate import runtime

        config = _config(variant, port)
        client = httpx.AsyncClient(transport=_idp())
        services = runtime._services(config, {None: client})
        for cache in services.caches:
            assert await cache.refresh(), "keys"
        made = runtime._agent(config, services)
        assert made is not None
        agent = made
        await agent.start("127.0.0.1", port)
    print("listening", flush=True)
    await stop.wait()
    await agent.close()
    if client is not None:
        await client.aclose()


def agent_main(variant: str, port: int) -> None:
    import uvloop

    from idgate.cli import configure_logging

    configure_logging("info")  # stderr is /dev/null: the lines are formatted and written, as in production
    uvloop.run(_serve(variant, port))


# --- the client (this process) -----------------------------------------------------------------------------------


def _recv_frame(sock: socket.socket) -> bytes:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise ConnectionError("agent closed")
            data += chunk
        return data

    length = int.from_bytes(exactly(4), "big")
    return exactly(length)


def drive(port: int, count: int, token: str) -> list[str]:
    """HELLO, then ``count`` NOTIFYs one at a time; returns the ``decision`` of the last ACK's actions."""
    from idgate.spoe.spop import (
        Ack,
        DataType,
        HaproxyDisconnect,
        HaproxyHello,
        Message,
        Notify,
        SetVar,
        TypedInt,
        decode_frame,
        encode_frame,
    )

    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(encode_frame(HaproxyHello(supported_versions="2.0", max_frame_size=16380, capabilities="pipelining")))
    _recv_frame(sock)
    decisions: list[str] = []
    for number in range(1, count + 1):
        args: tuple[tuple[str, Any], ...] = (
            ("method", "GET"),
            ("host", "app.idgate.test"),
            ("path", "/"),
            ("query", None),
            ("src", ipaddress.IPv4Address("127.0.0.1")),
            ("authorization", f"Bearer {token}"),
            ("authorization_count", TypedInt(DataType.INT32, 1)),
            ("cookie", None),
            ("accept", "*/*"),
            ("requested_with", None),
            ("fetch_mode", None),
            ("content_type", None),
            ("request_id", f"bench-{number:08d}"),
        )
        sock.sendall(
            encode_frame(Notify(stream_id=number, frame_id=1, messages=(Message(name="idgate-check", args=args),)))
        )
        ack = decode_frame(_recv_frame(sock))
        assert isinstance(ack, Ack) and ack.stream_id == number, ack
        decisions.append(
            next((str(a.value) for a in ack.actions if isinstance(a, SetVar) and a.name == "decision"), "")
        )
    sock.sendall(encode_frame(HaproxyDisconnect(status_code=0, message="bye")))
    with contextlib.suppress(OSError):
        _recv_frame(sock)
    sock.close()
    return decisions


def measure(variant: str, count: int, token: str, outdir: Path) -> int:
    """Total Ir of one agent process that answered ``count`` decisions."""
    from idgate_devstack.process import free_tcp_port

    port = free_tcp_port()
    out = outdir / f"{variant}-{count}.out"
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(Path(__file__).resolve()),
        "agent",
        variant,
        str(port),
    ]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    with subprocess.Popen(  # noqa: S603 (our own interpreter and script)
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        if "listening" not in line:
            raise SystemExit(f"{variant}: agent did not start ({line!r})")
        decisions = drive(port, count, token)
        expected = "allow"
        if any(d != expected for d in decisions):
            raise SystemExit(f"{variant}: not every decision was allow: {sorted(set(decisions))}")
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        proc.wait(timeout=600)
    text = out.read_text()
    match = re.search(r"^(?:summary|totals):\s+(\d+)", text, re.MULTILINE)
    if match is None:
        raise SystemExit(f"{variant}: no totals in {out}")
    return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")
    agent = sub.add_parser("agent")
    agent.add_argument("variant", choices=VARIANTS)
    agent.add_argument("port", type=int)
    parser.add_argument("--n1", type=int, default=100)
    parser.add_argument("--n2", type=int, default=500)
    parser.add_argument("--only", default="null,warm,cold")
    args = parser.parse_args()
    if args.command == "agent":
        agent_main(args.variant, args.port)
        return
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    os.environ["IDGATE_BENCH_KEY"] = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    import compileall

    import idgate
    import idgate_devstack

    for package in (idgate, idgate_devstack):  # byte-compile first: a run that compiles would count it
        compileall.compile_dir(str(Path(package.__file__).parent), quiet=1)
    for folder in (ROOT / "bench", ROOT / "tests" / "support"):
        compileall.compile_dir(str(folder), quiet=1)
    import jwt

    public = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": "k1", "use": "sig"}
    os.environ["IDGATE_BENCH_JWK"] = json.dumps(public)
    token = _token()
    print(f"token: RS256 at+jwt, {len(token)} characters; N1={args.n1} N2={args.n2}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="idgate-callgrind-") as tmp:
        for variant in args.only.split(","):
            first = measure(variant, args.n1, token, Path(tmp))
            second = measure(variant, args.n2, token, Path(tmp))
            per = (second - first) / (args.n2 - args.n1)
            rows.append((variant, per))
            print(f"{variant:5s} {per / 1000:9.0f}k Ir per decision", flush=True)
    base = dict(rows).get("null")
    if base:
        print("\n| variant | Ir per decision | x null agent |\n|---|---:|---:|")
        for variant, per in rows:
            print(f"| {variant} | {per / 1000:.0f}k | {per / base:.2f} |")


if __name__ == "__main__":
    main()
