"""Write the hand-made seed files of ``tests/fuzz/corpus/<target>/`` (``seed-*``); safe to run again.

``.venv/bin/python tests/fuzz/make_seeds.py`` rewrites every ``seed-*`` file from the hostile inputs of the unit
tests (tests/unit/spoe/test_spop.py, tests/unit/test_verifier.py, tests/unit/sso/test_cookies.py,
tests/unit/sso/test_redirects.py, tests/unit/test_config.py, tests/unit/test_policy.py), the recorded SPOP frames
(tests/data/spop/*.bin) and the shipped configs. Files not named ``seed-*`` are inputs the fuzzer found and
``scripts/fuzz merge`` kept; this script leaves them alone. Cookie seeds are sealed with the fuzz-only
``target_browser.COOKIE_KEY``; token seeds in the ``{header}\\n{payload}`` form are signed by the target itself.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from unittest import mock

from idgate.spoe import spop
from idgate.spoe.spop import (
    Ack,
    AgentDisconnect,
    AgentHello,
    DataType,
    FrameType,
    HaproxyDisconnect,
    HaproxyHello,
    InvalidString,
    Message,
    Notify,
    Scope,
    SetVar,
    TypedInt,
    UnsetVar,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import target_browser  # noqa: E402  (needs HERE on sys.path)
import target_wire  # noqa: E402


def _raw(kind: int, payload: bytes, *, flags: int = spop.FLAG_FIN, stream_id: int = 0, frame_id: int = 0) -> bytes:
    body = bytes((kind,)) + flags.to_bytes(4, "big") + spop.encode_varint(stream_id) + spop.encode_varint(frame_id)
    return len(body + payload).to_bytes(4, "big") + body + payload


def spop_seeds() -> dict[str, bytes]:
    seeds = {f"recorded-{p.stem}": p.read_bytes() for p in sorted((REPO / "tests" / "data" / "spop").glob("*.bin"))}
    args: tuple[tuple[str, spop.Value], ...] = (
        ("method", "GET"),
        ("host", "app.example:8443"),
        ("path", "/grafana/d/x"),
        ("query", "a=1"),
        ("src", IPv6Address("::1")),
        ("authorization", "Bearer a.b.c"),
        ("authorization_count", 2),
        ("cookie", "__Host-idgate_0=v1.x; theme=dark"),
        ("accept", "text/html"),
        ("requested_with", None),
        ("fetch_mode", "navigate"),
        ("content_type", "application/grpc"),
    )
    frames = {
        "notify-idgate-check": Notify(stream_id=7, frame_id=1, messages=(Message(name="idgate-check", args=args),)),
        "notify-every-type": Notify(
            stream_id=1,
            frame_id=2,
            messages=(
                Message(
                    name="idgate-check",
                    args=(
                        ("method", "GET"),
                        ("host", "a"),
                        ("path", "/%2e%2e/x"),
                        ("src", IPv4Address("10.0.0.1")),
                        ("n", None),
                        ("b", True),
                        ("i32", TypedInt(DataType.INT32, -5)),
                        ("u32", TypedInt(DataType.UINT32, 7)),
                        ("i64", -(1 << 63)),
                        ("u64", (1 << 64) - 1),
                        ("bin", b"\x00\xff"),
                        ("bad", InvalidString(b"\xc3")),
                    ),
                ),
                Message(name="other", args=()),
            ),
        ),
        "notify-duplicate-arg": Notify(
            stream_id=1, frame_id=3, messages=(Message(name="idgate-check", args=(("host", "a"), ("host", "b"))),)
        ),
        "hello": HaproxyHello(
            supported_versions="2.0,1.0", max_frame_size=16380, capabilities="pipelining,async", engine_id="e"
        ),
        "hello-healthcheck": HaproxyHello(
            supported_versions="2.0", max_frame_size=256, capabilities="", healthcheck=True
        ),
        "agent-hello": AgentHello(version="2.0", max_frame_size=16380, capabilities="pipelining"),
        "haproxy-disconnect": HaproxyDisconnect(status_code=2, message="a timeout occurred"),
        "agent-disconnect": AgentDisconnect(status_code=99, message="x"),
        "ack": Ack(
            stream_id=3,
            frame_id=4,
            actions=(
                SetVar(scope=Scope.TRANSACTION, name="decision", value="allow"),
                UnsetVar(scope=Scope.REQUEST, name="x"),
            ),
        ),
    }
    seeds.update({name: spop.encode_frame(frame) for name, frame in frames.items()})
    notify = FrameType.NOTIFY
    hostile = {
        "empty": b"",
        "short-header": b"\x03\x00\x00\x00",
        "truncated-frame-id": b"\x03\x00\x00\x00\x01\x00\xf0",
        "too-big-length": b"\xff\xff\xff\xff" + b"\x03\x00\x00\x00\x01\x00\x00",
        "varint-11-bytes": b"\x03\x00\x00\x00\x01" + b"\xff" * 10 + b"\x00\x00",
        "notify-no-nbargs": _raw(notify, b"\x04name"),
        "notify-nbargs-short": _raw(notify, b"\x01m\x02\x01a\x00"),
        "notify-truncated-string": _raw(notify, b"\x01m\x01\x01a\x08\xf0"),
        "notify-4gb-string": _raw(notify, b"\x01m\x01\x01a\x08\xff\xff\xff\xff\x0f"),
        "notify-unknown-type": _raw(notify, b"\x01m\x01\x01a\x0a"),
        "notify-no-fin": _raw(notify, b"\x01m\x00", flags=0),
        "unset-type": _raw(FrameType.UNSET, b""),
        "type-50": _raw(50, b""),
        "ack-scope-7": _raw(FrameType.ACK, b"\x01\x03\x07\x01v\x00"),
        "ack-set-var-2-args": _raw(FrameType.ACK, b"\x01\x02\x02\x01v"),
        "hello-version-superscript": spop.encode_frame(
            HaproxyHello(supported_versions="\u00b2.0", max_frame_size=16380, capabilities="")
        ),
        "hello-negative-size": _raw(
            FrameType.HAPROXY_HELLO,
            spop.encode_kv_list(
                [("supported-versions", "2.0"), ("max-frame-size", TypedInt(DataType.INT32, -1)), ("capabilities", "")]
            ),
        ),
        "hello-with-stream-id": _raw(FrameType.HAPROXY_HELLO, b"", stream_id=1),
    }
    seeds.update(hostile)
    return seeds


def jws_seeds() -> dict[str, bytes]:
    iss, aud = target_wire.JWS_ISSUER, target_wire.JWS_AUDIENCE
    good = {"iss": iss, "sub": "user-1", "aud": aud, "exp": 4102444800, "iat": 1700000000, "groups": ["a", "b"]}
    header = {"alg": "ES256", "typ": "at+jwt", "kid": "k1"}

    def signed(h: dict[str, object], p: dict[str, object]) -> bytes:
        return json.dumps(h).encode() + b"\n" + json.dumps(p).encode()

    seeds = {
        "signed-good": signed(header, good),
        "signed-groups-hostile": signed(header, {**good, "groups": ["viewers,admin", "a\r\nb", 7, None, "", "a", "a"]}),
        "signed-groups-string": signed(header, {**good, "groups": "admin"}),
        "signed-exp-string": signed(header, {**good, "exp": "tomorrow"}),
        "signed-exp-huge": signed(header, {**good, "exp": 10**400}),
        "signed-exp-float": signed(header, {**good, "exp": 4102444800.5, "nbf": 1e308}),
        "signed-aud-list": signed(header, {**good, "aud": ["x", aud]}),
        "signed-aud-object": signed(header, {**good, "aud": {"a": 1}}),
        "signed-iss-list": signed(header, {**good, "iss": [iss]}),
        "signed-sub-long": signed(header, {**good, "sub": "x" * 300}),
        "signed-nested-claims": signed(header, {**good, "realm_access": {"roles": ["r"]}, "nonce": "n"}),
        "signed-id-token": signed(header, {**good, "at_hash": "x"}),
        "signed-alg-none": signed({"alg": "none"}, good),
        "signed-jku": signed({**header, "jku": "https://evil"}, good),
        "signed-crit": signed({**header, "crit": ["exp"]}, good),
        "signed-typ-number": signed({**header, "typ": 1}, good),
        "signed-kid-gone": signed({**header, "kid": "gone"}, good),
        "signed-kid-long": signed({**header, "kid": "k" * 300}, good),
        "signed-duplicate-keys": b'{"alg":"none","alg":"ES256"}\n{"iss":"x","iss":"' + iss.encode() + b'","sub":"s"}',
        "signed-nan": b'{"alg":"ES256"}\n{"iss":"' + iss.encode() + b'","sub":"s","aud":"' + aud.encode() + b'",'
        b'"exp":NaN,"iat":Infinity}',
        "signed-deep": b'{"alg":"ES256"}\n' + b'{"a":' * 2000 + b"1" + b"}" * 2000,
        "raw-three-dots": b"a.b.c",
        "raw-jwe": b"eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d",
        "raw-json-serialisation": b'{"payload":"e30","signatures":[]}',
        "raw-empty-parts": b"..",
        "raw-newline": b"eyJhbGciOiJFUzI1NiJ9\n.e30.c2ln",
        "raw-padding": b"eyJhbGciOiJFUzI1NiJ9==.e30.c2ln",
        "raw-array-header": b"WzFd.e30.c2ln",
        "raw-too-large": b"a." * 5000,
    }
    return seeds


def cookie_seeds() -> dict[str, bytes]:
    jar = target_browser.COOKIE_JAR
    with mock.patch("os.urandom", lambda n: bytes(n)):  # fixed nonces: the same seed files on every run
        one = target_browser.cookie_header(jar.encode(b'{"sid":"s1"}', max_age=60))
        three = target_browser.cookie_header(jar.encode(b"x" * 100, max_age=60))
    pairs = three.split("; ")
    return {
        "one-chunk": one.encode(),
        "three-chunks": three.encode(),
        "three-chunks-among-others": f"theme=dark; {pairs[0]};lang=en;{pairs[1]} ;\t{pairs[2]}; x".encode(),
        "swapped-chunks": "; ".join(
            [pairs[1].replace("_1=", "_0="), pairs[0].replace("_0=", "_1="), pairs[2]]
        ).encode(),
        "duplicate-chunk": f"{one}; {one}".encode(),
        "gap": "; ".join([pairs[0], pairs[2]]).encode(),
        "index-04": f"{one}; __Host-idgate_04=x".encode(),
        "index-4": f"{one}; __Host-idgate_4=x".encode(),
        "lookalike": f"__Host-idgatex_0=1; __host-idgate_0=1; {one}".encode(),
        "login-state": f"__Host-idgate-login_0={one.split('=', 1)[1]}; a=b".encode(),
        "quoted": f'__Host-idgate_0="{one.split("=", 1)[1]}"'.encode(),
        "bit-flip": (one[:-5] + ("A" if one[-5] != "A" else "B") + one[-4:]).encode(),
        "no-equals": b"__Host-idgate_0; a",
        "only-separators": b";;; ; ",
        "non-ascii": "__Host-idgate_0=v1.\u00e9\u00e9; \u2028=x".encode(),
        "too-large": b"a=" + b"x" * 16400,
    }


def _module(path: Path) -> object:
    spec = importlib.util.spec_from_file_location(f"_seed_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def redirect_seeds() -> dict[str, bytes]:
    rejected: list[str] = _module(REPO / "tests" / "unit" / "sso" / "test_redirects.py").REJECTED  # type: ignore[attr-defined]
    accepted = [
        "/",
        "/grafana/d/x?y=1#z",
        "/?next=//evil.example",
        "/%C3%A9t%C3%A9/",
        '/x?a="<b>"&c=`d`',
        "https://app.example?y=1",
        "HTTPS://APP.EXAMPLE:0443/Path",
        "https://[0:0:0:0:0:0:0:1]:8443/x",
        "http://legacy.example:8080/old",
        "https://127.0.0.1:8443/x",
        "https://app.example#@evil.example",
    ]
    values = [*accepted, *(v for v in rejected if len(v) <= 2100)]
    return {f"{index:03d}": value.encode("utf-8", "surrogatepass") for index, value in enumerate(values)}


def config_seeds() -> dict[str, bytes]:
    base = {
        "issuers": [
            {"name": "corp", "issuer": "https://idp.example.com", "audiences": ["api"], "algorithms": ["RS256"]}
        ],
        "role_sets": {"grafana": {"roles": ["Viewer", "Admin"], "from_groups": {"staff": ["Viewer"]}}},
        "upstreams": {"app": {}, "grafana": {"profile": "grafana", "role_set": "grafana"}},
        "routes": [
            {"name": "pub", "path": "/public", "upstream": "app", "public": True},
            {"name": "graf", "path": "/grafana", "upstream": "grafana", "allow": {"roles": ["Viewer"]}},
            {"name": "rpc", "grpc": "/pkg.Svc/*", "upstream": "app", "allow": {"authenticated": True}},
        ],
    }
    return {
        "demo": (REPO / "config" / "demo.yaml").read_bytes(),
        "example": (REPO / "config" / "idgate.example.yaml").read_bytes(),
        "bad-config": (REPO / "tests" / "data" / "bad-config.yaml").read_bytes(),
        "base-json": json.dumps(base).encode(),
        "secrets": b"issuers:\n- {name: a, issuer: 'https://i', audiences: [x], client_id: c,"
        b" client_secret_env: IDGATE_CLIENT_SECRET}\nsessions: {keys_env: IDGATE_SESSION_KEYS}\n"
        b"login: {issuer: a, redirect_uris: ['https://h/.idgate/callback']}\nupstreams: {app: {}}\n"
        b"routes: [{name: r, upstream: app, public: true}]\n",
        "list": b"- 1\n- 2\n",
        "broken": b"a: [\n",
        "wrong-types": b"issuers: [{name: [1]}]\nupstreams: {1: 2, app: {role_set: [x]}}\nrole_sets: {r: {roles: 5}}\n"
        b"routes: [{name: [a], upstream: app, allow: {roles: 7}}, {name: [a]}]\nlogin: {issuer: [x]}\n",
        "timestamp": b"dev_mode: 2001-13-01\n",
        "tags": b"a: !!binary 'x'\nb: !!int abc\n",
        "anchors": b"a: &a [x, x]\nb: &b [*a, *a]\nroutes: [*b, *b]\n",
        "latin1": b"issuers: [{name: caf\xe9}]\n",
    }


def identity_seeds() -> dict[str, bytes]:
    def fields(*items: str) -> bytes:
        return b"\xff".join(item.encode("utf-8") for item in items)

    return {
        "plain": fields("alice", "alice@example.test", "Alice Admin", "sub-1", "https://idp", "staff", "admins"),
        "unicode": fields("zo\u00eb", "z@example.test", "Zo\u00eb = \u00d6lund", "s", "i", "caf\u00e9", "\U0001f600"),
        "hostile-groups": fields("u", "", "", "", "", "viewers,admin", "a\r\nX-Auth-Role: admin", "ok", "\x00", "\x7f"),
        "encoding-specials": fields("a%20b", 'q"uote', "trailing ", "=3D", "", "50%", "a=b", "sp ace ", " lead"),
        "crlf-user": fields("bob\r\nx", "e\n", "n\t", "s\x1b", "i\x00"),
        "unicode-controls": fields("\u2028", "\u0085", "\u200b", "\ufeff", "", "\u2028g", "\u0085g"),
        "empty": b"",
    }


def main() -> None:
    for target, seeds in {
        "spop": spop_seeds(),
        "jws": jws_seeds(),
        "cookies": cookie_seeds(),
        "redirects": redirect_seeds(),
        "config": config_seeds(),
        "identity": identity_seeds(),
    }.items():
        folder = HERE / "corpus" / target
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("seed-*"):
            old.unlink()
        for name, data in seeds.items():
            (folder / f"seed-{name}").write_bytes(data)
        digest = hashlib.sha256(b"".join(seeds.values())).hexdigest()[:12]
        print(f"{target}: {len(seeds)} seeds ({digest})")


if __name__ == "__main__":
    main()
