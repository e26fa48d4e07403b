"""gRPC calls carrying JWT identity, through real HAProxy (TLS, ALPN h2; and the h2c listener) to a real grpcio
service, with tokens from the real IdP; every test runs in SPOE and in auth_request mode.

The stack's policy (tests/support/stack.py): ``/demo.Echo/Admin`` needs role echo_admin (group grafana-admins:
alice), ``/demo.Echo/Ticks`` any signed-in caller with the Authorization header stripped, every other method of
``demo.Echo`` role echo_user (group staff: alice, bob). HAProxy speaks TLS to the service too.
"""

from __future__ import annotations

import queue
import ssl
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import jwt
import pytest
from stack import GRPC_AUDIENCE, HTTP_TIMEOUT_SECONDS, STREAM_TIMEOUT_SECONDS, Stack, access_claims

from idgate_devstack.grpc_client import WHOAMI, EchoStub, GrpcRecord, echo_stub, open_channel

pytestmark = pytest.mark.e2e
CALL_TIMEOUT = 10.0
IDENTITY = ("x-auth-", "x_auth", "x.auth", "x-webauth", "x-idgate", "x-jwt-assertion", "x_jwt")


def target(stack: Stack) -> str:
    return stack.url.removeprefix("https://")


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
def echo(fresh: Stack) -> Iterator[EchoStub]:
    """A demo.Echo client through HAProxy's HTTPS frontend (TLS, ALPN h2), trusting the dev CA."""
    with open_channel(target(fresh), ca_file=fresh.certs.ca) as channel:
        yield echo_stub(channel)


def metadata_of(record: GrpcRecord) -> dict[str, list[str]]:
    seen: dict[str, list[str]] = {}
    for key, value in record["metadata"]:
        seen.setdefault(key, []).append(value)
    return seen


def _complete(call: Any) -> None:
    result = call()
    if not isinstance(result, dict):  # a stream: the status arrives while iterating
        list(result)


def rpc_error(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        _complete(call)
    return info.value


def status_of(call: Any) -> grpc.StatusCode:
    try:
        _complete(call)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        return code
    return grpc.StatusCode.OK


def test_unary_server_streaming_and_bidi_calls_reach_the_service_with_identity(fresh: Stack, echo: EchoStub) -> None:
    token = fresh.login("alice").access_token
    record = echo.whoami({"hello": 1}, metadata=bearer(token), timeout=CALL_TIMEOUT)
    assert record["method"] == "/demo.Echo/Whoami"
    assert record["authority"] == target(fresh)  # :authority and :path pass unchanged
    seen = metadata_of(record)
    assert {k: v for k, v in seen.items() if k.startswith(IDENTITY)} == {
        "x-auth-user": ["alice"],
        "x-auth-email": ["alice@example.test"],
        "x-auth-name": ["Alice Admin"],
        "x-auth-groups": ["grafana-admins,staff,looker-analysts"],
        "x-auth-roles": ["echo_user,echo_admin"],
        "x-auth-subject": ["alice"],
        "x-auth-issuer": [fresh.idp.issuer],
        "x-jwt-assertion": seen["x-jwt-assertion"],
    }
    assert seen["authorization"] == [f"Bearer {token}"]  # this route passes the token on
    assert seen["x-forwarded-proto"] == ["https"]
    # the signed assertion verifies against idgate's published keys, for this upstream's audience
    with fresh.client() as client:
        jwks = jwt.PyJWKSet.from_dict(client.get(fresh.url + "/.idgate/jwks.json").json())
    [assertion] = seen["x-jwt-assertion"]
    key = next(k for k in jwks.keys if k.key_id == jwt.get_unverified_header(assertion)["kid"])
    claims = jwt.decode(assertion, key.key, algorithms=["ES256"], audience=GRPC_AUDIENCE)
    assert (claims["sub"], claims["role"]) == ("alice", "echo_admin")

    assert list(echo.ticks(3, 0.05, metadata=bearer(token), timeout=CALL_TIMEOUT)) == [{"tick": i} for i in range(3)]
    said = [{"say": f"m{i}"} for i in range(4)]
    replies = echo.chat(said, metadata=bearer(token), timeout=CALL_TIMEOUT)
    assert list(replies) == [{"echo": f"m{i}"} for i in range(4)]
    assert [r["method"] for r in fresh.grpc.requests()] == ["/demo.Echo/Whoami", "/demo.Echo/Ticks", "/demo.Echo/Chat"]


def _bad_tokens(stack: Stack) -> dict[str, tuple[tuple[tuple[str, str], ...], str]]:
    """name → (metadata, the reason code grpc-message must carry)."""
    now = int(time.time())

    def forged(**overrides: Any) -> tuple[tuple[str, str], ...]:
        return bearer(stack.idp.sign({"typ": "at+jwt"}, access_claims(stack, **overrides)))

    return {
        "missing": ((), "missing_credentials"),
        "expired": (forged(iat=now - 900, exp=now - 600), "expired"),
        "wrong_audience": (forged(aud="https://other.test"), "invalid_audience"),
        "not_bearer": ((("authorization", "Basic YWxpY2U6cHc="),), "unsupported_scheme"),
    }


def test_missing_expired_and_wrong_audience_tokens_are_unauthenticated_with_the_reason(
    fresh: Stack, echo: EchoStub
) -> None:
    for name, (metadata, reason) in _bad_tokens(fresh).items():
        for call in (
            lambda md=metadata: echo.whoami(metadata=md, timeout=CALL_TIMEOUT),
            lambda md=metadata: echo.ticks(2, metadata=md, timeout=CALL_TIMEOUT),
            lambda md=metadata: echo.chat([{"say": 1}], metadata=md, timeout=CALL_TIMEOUT),
        ):
            error = rpc_error(call)
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, (name, error)
            assert reason in error.details(), (name, error.details())
    assert fresh.grpc.requests() == []


def test_wrong_role_for_a_method_is_permission_denied_while_another_method_is_allowed(
    fresh: Stack, echo: EchoStub
) -> None:
    bob, carol = fresh.login("bob").access_token, fresh.login("carol").access_token
    error = rpc_error(lambda: echo.admin(metadata=bearer(bob), timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "missing_role_or_group"
    assert echo.whoami(metadata=bearer(bob), timeout=CALL_TIMEOUT)["method"] == "/demo.Echo/Whoami"
    # carol has no group: no echo_user role, but the Ticks route admits any signed-in caller
    assert rpc_error(lambda: echo.whoami(metadata=bearer(carol))).code() == grpc.StatusCode.PERMISSION_DENIED
    assert list(echo.ticks(1, metadata=bearer(carol), timeout=CALL_TIMEOUT)) == [{"tick": 0}]
    alice = fresh.login("alice").access_token
    assert echo.admin(metadata=bearer(alice), timeout=CALL_TIMEOUT)["method"] == "/demo.Echo/Admin"
    assert [r["method"] for r in fresh.grpc.requests()] == ["/demo.Echo/Whoami", "/demo.Echo/Ticks", "/demo.Echo/Admin"]


def test_a_method_without_a_route_is_denied_and_an_unknown_method_of_the_service_is_the_services_answer(
    fresh: Stack,
) -> None:
    token = fresh.login("alice").access_token
    with open_channel(target(fresh), ca_file=fresh.certs.ca) as channel:
        other = channel.unary_unary("/other.Service/Call")
        error = rpc_error(lambda: other(b"{}", metadata=bearer(token), timeout=CALL_TIMEOUT))
        assert (error.code(), error.details()) == (grpc.StatusCode.PERMISSION_DENIED, "no_route")
        unknown = channel.unary_unary("/demo.Echo/Nope")
        error = rpc_error(lambda: unknown(b"{}", metadata=bearer(token), timeout=CALL_TIMEOUT))
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED  # the service itself answered: the route allowed it


def test_denials_are_trailers_only_grpc_responses_never_pages_or_redirects(fresh: Stack) -> None:
    frame = b"\x00\x00\x00\x00\x02{}"  # one uncompressed length-prefixed message
    headers = {"content-type": "application/grpc", "te": "trailers", "accept": "text/html"}
    context = ssl.create_default_context(cafile=str(fresh.certs.ca))
    with httpx.Client(http2=True, verify=context, timeout=CALL_TIMEOUT) as client:
        response = client.post(fresh.url + "/demo.Echo/Whoami", headers=headers, content=frame)
        assert response.http_version == "HTTP/2"
        assert response.status_code == 200 and "location" not in response.headers
        assert response.headers["content-type"] == "application/grpc"
        assert (response.headers["grpc-status"], response.headers["grpc-message"]) == ("16", "missing_credentials")
        assert response.content == b""
        bob = fresh.login("bob").access_token
        response = client.post(
            fresh.url + "/demo.Echo/Admin", headers=headers | {"authorization": f"Bearer {bob}"}, content=frame
        )
        assert (response.status_code, response.headers["content-type"]) == (200, "application/grpc")
        assert (response.headers["grpc-status"], response.headers["grpc-message"]) == ("7", "missing_role_or_group")
        # two Authorization headers: a malformed request, INVALID_ARGUMENT
        doubled = [*headers.items(), ("authorization", f"Bearer {bob}"), ("authorization", f"Bearer {bob}")]
        response = client.post(fresh.url + "/demo.Echo/Whoami", headers=doubled, content=frame)
        assert (response.headers["grpc-status"], response.headers["grpc-message"]) == ("3", "duplicate_authorization")
        # the same refusal for a browser is a page, not a gRPC status
        page = client.get(fresh.url + "/demo.Echo/Whoami", headers={"accept": "text/html"})
        assert page.status_code == 302 and "grpc-status" not in page.headers
    assert fresh.grpc.requests() == []


def test_spoofed_identity_metadata_never_reaches_the_service(fresh: Stack, echo: EchoStub) -> None:
    token = fresh.login("bob").access_token
    spoofed = (
        ("x-auth-user", "mallory"),
        ("x-auth-roles", "echo_admin"),
        ("x-auth-user-bin", b"mallory"),
        ("x-auth-roles-bin", b"echo_admin"),
        ("x_auth_user", "mallory"),
        ("x.auth.roles", "echo_admin"),
        ("x-jwt-assertion", "forged"),
        ("x-jwt-assertion-bin", b"forged"),
        ("x-idgate-user", "mallory"),
        ("x-idgate-decision", "allow"),
        ("x-idgate-strip-authorization", "0"),
        ("x-forwarded-proto", "http"),
    )
    record = echo.whoami(metadata=bearer(token) + spoofed, timeout=CALL_TIMEOUT)
    seen = metadata_of(record)
    identity = {k: v for k, v in seen.items() if k.startswith(IDENTITY)}
    assert identity.pop("x-jwt-assertion") != ["forged"]
    assert identity == {
        "x-auth-user": ["bob"],
        "x-auth-email": ["bob@example.test"],
        "x-auth-name": ["Bob Builder"],
        "x-auth-groups": ["staff"],
        "x-auth-roles": ["echo_user"],
        "x-auth-subject": ["bob"],
        "x-auth-issuer": [fresh.idp.issuer],
    }
    assert seen["x-forwarded-proto"] == ["https"]
    # spoofing an admin role does not open the admin method
    error = rpc_error(lambda: echo.admin(metadata=bearer(token) + spoofed, timeout=CALL_TIMEOUT))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    # without a token, spoofed identity is no identity
    assert rpc_error(lambda: echo.whoami(metadata=spoofed)).code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(fresh.grpc.requests()) == 1


def test_authorization_is_stripped_or_passed_per_route(fresh: Stack, echo: EchoStub) -> None:
    token = fresh.login("alice").access_token
    echo.whoami(metadata=bearer(token), timeout=CALL_TIMEOUT)
    list(echo.ticks(1, metadata=bearer(token), timeout=CALL_TIMEOUT))
    passed, stripped = (metadata_of(r) for r in fresh.grpc.requests())
    assert passed["authorization"] == [f"Bearer {token}"]
    assert "authorization" not in stripped and stripped["x-auth-user"] == ["alice"]


def test_auth_service_down_is_unavailable_and_the_service_is_never_reached(fresh: Stack, echo: EchoStub) -> None:
    token = fresh.login("alice").access_token
    fresh.idgate.kill()
    try:
        for call in (
            lambda: echo.whoami(metadata=bearer(token), timeout=CALL_TIMEOUT),
            lambda: echo.ticks(2, metadata=bearer(token), timeout=CALL_TIMEOUT),
            lambda: echo.chat([{"say": 1}], metadata=bearer(token), timeout=CALL_TIMEOUT),
        ):
            error = rpc_error(call)
            assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, "auth_unavailable")
        assert fresh.grpc.requests() == []
    finally:
        fresh.idgate.start()
    # auth_request: the next call reconnects; SPOE: the agent is back once `option spop-check` (inter 1s) sees it
    deadline = time.monotonic() + 3.0
    while (code := status_of(lambda: echo.whoami(metadata=bearer(token), timeout=CALL_TIMEOUT))) != grpc.StatusCode.OK:
        assert code == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline
        time.sleep(0.1)
    assert len(fresh.grpc.requests()) == 1


def test_the_h2c_listener_applies_the_same_policy(fresh: Stack) -> None:
    token, bob = fresh.login("alice").access_token, fresh.login("bob").access_token
    assert fresh.settings.h2c_target is not None
    with open_channel(fresh.settings.h2c_target) as channel:
        echo = echo_stub(channel)
        record = echo.whoami(metadata=bearer(token), timeout=CALL_TIMEOUT)
        assert metadata_of(record)["x-auth-user"] == ["alice"]
        assert metadata_of(record)["x-forwarded-proto"] == ["http"]
        assert rpc_error(lambda: echo.whoami(timeout=CALL_TIMEOUT)).code() == grpc.StatusCode.UNAUTHENTICATED
        error = rpc_error(lambda: echo.admin(metadata=bearer(bob), timeout=CALL_TIMEOUT))
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        _, call = channel.unary_unary(WHOAMI).with_call(b"{}", metadata=bearer(token), timeout=CALL_TIMEOUT)
        assert "strict-transport-security" not in dict(call.initial_metadata())  # HSTS only over TLS
    with open_channel(target(fresh), ca_file=fresh.certs.ca) as channel:
        _, call = channel.unary_unary(WHOAMI).with_call(b"{}", metadata=bearer(token), timeout=CALL_TIMEOUT)
        assert dict(call.initial_metadata())["strict-transport-security"].startswith("max-age=")
    assert len(fresh.grpc.requests()) == 3


def test_a_stream_outlives_the_http_timeouts_in_both_directions(fresh: Stack, echo: EchoStub) -> None:
    """Each silence (the service's, then the client's) is longer than HAProxy's plain HTTP timeout."""
    token = fresh.login("alice").access_token
    silence = HTTP_TIMEOUT_SECONDS + 1
    assert silence < STREAM_TIMEOUT_SECONDS
    replies: queue.Queue[dict[str, Any]] = queue.Queue()

    def requests() -> Iterator[dict[str, Any]]:
        yield {"say": "first", "delay": silence}  # the service is silent for `silence` s
        replies.get(timeout=CALL_TIMEOUT + silence)
        time.sleep(silence)  # then the client is
        yield {"say": "second"}

    started = time.monotonic()
    got = []
    for reply in echo.chat(requests(), metadata=bearer(token), timeout=4 * silence + CALL_TIMEOUT):
        got.append(reply)
        replies.put(reply)
    assert got == [{"echo": "first"}, {"echo": "second"}]
    assert time.monotonic() - started >= 2 * silence


def test_a_silent_service_is_cut_after_the_stream_timeout(fresh: Stack, echo: EchoStub) -> None:
    token = fresh.login("alice").access_token
    started = time.monotonic()
    silent = [{"say": "never", "delay": STREAM_TIMEOUT_SECONDS + 5}]
    error = rpc_error(lambda: echo.chat(silent, metadata=bearer(token), timeout=STREAM_TIMEOUT_SECONDS + 20))
    elapsed = time.monotonic() - started
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # HAProxy's 504: the stream timeout, not the deadline
    assert STREAM_TIMEOUT_SECONDS - 0.5 < elapsed < STREAM_TIMEOUT_SECONDS + 3
