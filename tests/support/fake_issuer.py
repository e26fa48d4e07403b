"""A fake issuer for unit tests: a config with one issuer and four routes, signed access tokens, and an
``httpx.MockTransport`` serving the issuer's JWKS (optionally late)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from idgate.config import Config
from idgate.config_load import parse_config

ISS = "https://idp.test"
AUD = "https://api.test"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
JWK = jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True) | {"kid": "k1", "use": "sig", "alg": "RS256"}


def config(**server: Any) -> Config:
    return parse_config(
        {
            "server": server,
            "issuers": [
                {
                    "name": "test",
                    "issuer": ISS,
                    "jwks_uri": f"{ISS}/jwks",
                    "discovery": False,
                    "audiences": [AUD],
                    "jwks": {"refetch_cooldown_seconds": 0},
                }
            ],
            "role_sets": {
                "grafana": {"roles": ["Viewer", "Admin"], "from_groups": {"staff": ["Viewer"], "ops": ["Admin"]}}
            },
            "upstreams": {"app": {}, "grafana": {"profile": "grafana", "role_set": "grafana"}},
            "routes": [
                {"name": "pub", "path": "/public", "upstream": "app", "public": True},
                {"name": "graf", "path": "/grafana", "upstream": "grafana", "allow": {"roles": ["Viewer", "Admin"]}},
                {"name": "admin", "path": "/admin", "upstream": "app", "allow": {"groups": ["ops"]}},
                {"name": "app", "path": "/app", "upstream": "app", "allow": {"authenticated": True}},
            ],
        },
        environ={},
    )


def token(**claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISS,
        "aud": AUD,
        "sub": "alice",
        "exp": now + 300,
        "iat": now,
        "email": "alice@example.test",
        "email_verified": True,
        "preferred_username": "alice",
        "name": "Alice",
        "groups": ["staff"],
    } | claims
    return jwt.encode(body, KEY, algorithm="RS256", headers={"kid": "k1", "typ": "at+jwt"})


def idp(delay: float = 0.0) -> httpx.MockTransport:
    async def handler(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(delay)
        return httpx.Response(200, json={"keys": [JWK]}, headers={"cache-control": "max-age=300"})

    return httpx.MockTransport(handler)
