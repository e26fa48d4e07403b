"""The verified-token cache: never past exp, bounded, purged of a withdrawn key's tokens, and wired into the
verifier."""

from __future__ import annotations

import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from idgate.config import IssuerConfig, JwksSettings
from idgate.errors import TokenError
from idgate.jwks import JwksCache
from idgate.principal import Principal
from idgate.token_cache import TokenCache
from idgate.verifier import TrustedIssuer, Verifier


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def principal(exp: float, sub: str = "alice") -> Principal:
    return Principal(
        issuer="https://idp.test", subject=sub, username=None, email=None, name=None, groups=(), expires_at=exp
    )


def test_served_until_exp_never_after() -> None:
    clock = Clock(1000.0)
    cache = TokenCache(clock=clock)
    cache.put("t1", principal(exp=1010))
    assert cache.get("t1") == principal(exp=1010)
    clock.now = 1009.999
    assert cache.get("t1") is not None
    clock.now = 1010
    assert cache.get("t1") is None and len(cache) == 0
    assert (cache.hits, cache.misses) == (2, 1)


def test_expired_tokens_are_not_stored_and_unknown_tokens_miss() -> None:
    cache = TokenCache(clock=Clock(1000.0))
    cache.put("old", principal(exp=999))
    assert cache.get("old") is None and cache.get("never") is None
    assert (len(cache), cache.misses) == (0, 2)


def test_bounded_lru() -> None:
    cache = TokenCache(max_entries=2, clock=Clock(0.0))
    cache.put("a", principal(exp=10, sub="a"))
    cache.put("b", principal(exp=10, sub="b"))
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("c", principal(exp=10, sub="c"))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    cache.clear()
    assert len(cache) == 0
    with pytest.raises(ValueError, match="max_entries"):
        TokenCache(max_entries=0)


def test_purge_drops_the_tokens_of_the_withdrawn_kids_of_one_issuer_only() -> None:
    cache = TokenCache(clock=Clock(0.0))
    other = Principal(
        issuer="https://other.test", subject="o", username=None, email=None, name=None, groups=(), expires_at=10
    )
    cache.put("k1-a", principal(exp=10, sub="a"), kid="k1")
    cache.put("k1-b", principal(exp=10, sub="b"), kid="k1")
    cache.put("k2", principal(exp=10, sub="c"), kid="k2")
    cache.put("no-kid", principal(exp=10, sub="d"), kid=None)
    cache.put("other-k1", other, kid="k1")
    assert cache.purge(issuer="https://idp.test", kids={"k1", None}) == 3
    assert [t for t in ("k1-a", "k1-b", "k2", "no-kid", "other-k1") if cache.get(t)] == ["k2", "other-k1"]
    assert cache.purge(issuer="https://idp.test", kids={"k1"}) == 0


@pytest.mark.anyio
async def test_verifier_uses_the_cache_and_drops_it_when_a_key_disappears() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"kid": "k1", "alg": "RS256"}
    published = {"keys": [jwk]}
    fetches = []

    def handler(request: httpx.Request) -> httpx.Response:
        fetches.append(request.url)
        return httpx.Response(200, json=published)

    config = IssuerConfig(
        name="t",
        issuer="https://idp.test",
        discovery=False,
        jwks_uri="https://idp.test/jwks",
        audiences=("api",),
        jwks=JwksSettings(refetch_cooldown_seconds=0, unknown_kid_cooldown_seconds=0),
    )
    keys = JwksCache(config=config, client=httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    cache = TokenCache()
    keys.on_keys_withdrawn = lambda issuer, kids: cache.purge(issuer=issuer, kids=kids)
    verifier = Verifier(issuers={config.issuer: TrustedIssuer(config=config, keys=keys)}, cache=cache)
    now = int(time.time())
    claims = {"iss": config.issuer, "aud": "api", "sub": "alice", "exp": now + 60, "iat": now}
    token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1", "typ": "at+jwt"})
    assert (await verifier.verify(token)).subject == "alice"
    assert (await verifier.verify(token)).subject == "alice"
    assert (cache.hits, cache.misses, len(fetches)) == (1, 1, 1)
    # The issuer withdraws k1 (publishes k2 only); a k2 token forces a refetch, which clears the cache.
    key2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    published["keys"] = [jwt.algorithms.RSAAlgorithm.to_jwk(key2.public_key(), as_dict=True) | {"kid": "k2"}]
    other = jwt.encode(claims, key2, algorithm="RS256", headers={"kid": "k2", "typ": "at+jwt"})
    assert (await verifier.verify(other)).subject == "alice"
    with pytest.raises(TokenError) as info:
        await verifier.verify(token)
    assert info.value.reason == "unknown_kid"
