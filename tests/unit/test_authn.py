"""Authentication (idgate.authn): the credential → a principal, or the refusal with its challenge."""

from __future__ import annotations

import httpx
import pytest
from fake_issuer import ISS, config, idp, token

from idgate.authn import Authenticated, Authenticator, Refused, www_authenticate
from idgate.facts import RequestFacts
from idgate.jwks import JwksCache
from idgate.verifier import TrustedIssuer, Verifier

MALFORMED = "malformed_authorization"


def authenticator() -> Authenticator:
    cfg = config()
    cache = JwksCache(config=cfg.issuers[0], client=httpx.AsyncClient(transport=idp()))
    return Authenticator(verifier=Verifier(issuers={ISS: TrustedIssuer(config=cfg.issuers[0], keys=cache)}))


def facts(*authorization: str, accept: str | None = None) -> RequestFacts:
    return RequestFacts(method="GET", host="gw.test", path="/app", authorization=authorization, accept=accept)


@pytest.mark.anyio
async def test_a_valid_bearer_token_is_the_principal_keyed_by_issuer_and_subject() -> None:
    result = await authenticator().authenticate(facts(f"Bearer {token()}"))
    assert isinstance(result, Authenticated)
    assert result.principal.key == (ISS, "alice") and result.cache_key == f"bearer:{ISS}|alice"
    assert result.set_cookies == () and result.upstream_cookie is None  # no browser login configured


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("authorization", "status", "reasons", "challenge"),
    [
        ((), 401, ("missing_credentials",), 'Bearer realm="idgate"'),
        (("Bearer a", "Bearer b"), 400, ("duplicate_authorization",), None),
        (("Basic YTpi",), 401, ("unsupported_scheme",), www_authenticate("invalid_request", "unsupported_scheme")),
        (
            ("Bearer a b",),
            401,
            ("malformed_authorization",),
            www_authenticate("invalid_request", "malformed_authorization"),
        ),
        (("Bearer x.y.z",), 401, ("invalid_token",), www_authenticate("invalid_token", "invalid_token")),
    ],
)
async def test_refusals_carry_status_reason_and_rfc6750_challenge(
    authorization: tuple[str, ...], status: int, reasons: tuple[str, ...], challenge: str | None
) -> None:
    result = await authenticator().authenticate(facts(*authorization))
    assert isinstance(result, Refused)
    assert (result.status, result.reasons, result.www_authenticate, result.location) == (
        status,
        reasons,
        challenge,
        None,
    )


@pytest.mark.anyio
async def test_without_browser_login_a_navigation_is_401_not_a_login_redirect() -> None:
    result = await authenticator().authenticate(facts(accept="text/html"))
    assert isinstance(result, Refused) and result.status == 401 and result.location is None


@pytest.mark.anyio
async def test_keys_that_cannot_be_had_are_a_503_with_retry_after_never_a_401() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    cfg = config()
    cache = JwksCache(config=cfg.issuers[0], client=httpx.AsyncClient(transport=httpx.MockTransport(down)))
    authn = Authenticator(verifier=Verifier(issuers={ISS: TrustedIssuer(config=cfg.issuers[0], keys=cache)}))
    result = await authn.authenticate(facts(f"Bearer {token()}"))
    assert isinstance(result, Refused)
    assert (result.status, result.reasons, result.www_authenticate) == (503, ("keys_unavailable",), None)
    assert result.retry_after in (1, 2)
