"""Sanity checks before a variant is measured: the real token gets a 200, and what each variant refuses.

The hostile tokens are signed with the IdP's real private key (its test-only ``/test/sign``), so only the altered
claim or header is wrong. A variant that lets one through is not failed -- it is reported (the README's "refuses"
matrix) -- but one that does not answer the real token with 200 is not measured at all.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx

from ibench.stack import Env

VALID_RETRY_S = 10.0


def _b64(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(token: str) -> dict[str, Any]:
    part = token.split(".")[1]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return value


def _tamper_signature(token: str) -> str:
    head, payload, sig = token.split(".")
    middle = len(sig) // 2
    swapped = "A" if sig[middle] != "A" else "B"
    return f"{head}.{payload}.{sig[:middle]}{swapped}{sig[middle + 1 :]}"


def hostile_tokens(env: Env) -> dict[str, str | None]:
    """Name -> token (None: no Authorization header) that a validator must refuse."""
    claims = _claims(env.token)
    now = int(time.time())
    at_jwt = {"typ": "at+jwt"}
    return {
        "no token": None,
        "bad signature": _tamper_signature(env.token),
        "alg none": f"{_b64({'alg': 'none', 'typ': 'at+jwt'})}.{_b64(claims)}.",
        "expired": env.idp.sign(at_jwt, {**claims, "iat": now - 7200, "exp": now - 600}),
        "wrong aud": env.idp.sign(at_jwt, {**claims, "aud": "https://other.idgate.test"}),
        "wrong iss": env.idp.sign(at_jwt, {**claims, "iss": "https://evil.idgate.test"}),
        "typ JWT": env.idp.sign({"typ": "JWT"}, claims),
        "nbf in 1 h": env.idp.sign(at_jwt, {**claims, "nbf": now + 3600}),
    }


def status(client: httpx.Client, url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.get(url, headers=headers).status_code


def check_valid(env: Env, url: str) -> str:
    """Empty when the real token gets 200 (retried for ``VALID_RETRY_S``: a first JWKS fetch), else why not."""
    deadline = time.monotonic() + VALID_RETRY_S
    last = ""
    with httpx.Client(verify=env.tls_context(), timeout=5.0) as client:
        while time.monotonic() < deadline:
            try:
                code = status(client, url, env.token)
            except httpx.HTTPError as exc:
                last = f"request failed: {exc!r}"
            else:
                if code == 200:
                    return ""
                last = f"the real token got HTTP {code}"
            time.sleep(0.2)
    return last


def refusals(env: Env, url: str, tokens: dict[str, str | None]) -> dict[str, int]:
    """Hostile token name -> the HTTP status the variant answered."""
    with httpx.Client(verify=env.tls_context(), timeout=5.0) as client:
        return {name: status(client, url, token) for name, token in tokens.items()}
