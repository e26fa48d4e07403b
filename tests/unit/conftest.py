"""Shared unit-test fixtures: the anyio backend, signing keys, a fake monotonic clock and a fake IdP.

The fake IdP sits behind ``httpx.MockTransport``: it answers GETs from a URL table the test mutates (as it was when
the request arrived), records every request it receives, can be taken down (``httpx.ConnectError``) and can be made
slow (``asyncio.sleep``).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def rsa_key_2() -> rsa.RSAPrivateKey:
    """A second RSA key, for rotation and wrong-key cases."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


class FakeClock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FakeIdP:
    """An IdP answering from ``table`` (absolute URL → :class:`Reply`); unknown URLs answer 404."""

    table: dict[str, Reply] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    down: bool = False
    delay: float = 0.0

    def publish(self, url: str, document: object, *, cache_control: str | None = "max-age=300") -> None:
        headers = {"content-type": "application/json"}
        if cache_control is not None:
            headers["cache-control"] = cache_control
        self.table[url] = Reply(body=json.dumps(document).encode(), headers=headers)

    def hits(self, url: str) -> int:
        return sum(1 for r in self.requests if str(r.url) == url)

    async def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        reply = self.table.get(str(request.url))  # what was published when the request arrived
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if reply is None:
            return httpx.Response(404, content=b"not found")
        return httpx.Response(reply.status, headers=reply.headers, content=reply.body)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))


@pytest.fixture
def fake_idp() -> FakeIdP:
    return FakeIdP()
