"""The principal from verified claims (idgate.principal): only a JSON ``true`` makes an email verified."""

from __future__ import annotations

import pytest

from idgate.config import ClaimPaths
from idgate.principal import principal_from_claims

CLAIMS = {"iss": "https://idp.test", "sub": "u-1", "exp": 2_000_000_000, "email": "alice@example.test"}


@pytest.mark.parametrize(
    ("value", "verified"),
    [(True, True), (False, False), ("true", False), ("True", False), (1, False), ([True], False), (None, False)],
    ids=repr,
)
def test_email_verified_is_the_json_boolean_true_only(value: object, verified: bool) -> None:
    principal = principal_from_claims(CLAIMS | {"email_verified": value}, paths=ClaimPaths())
    assert principal.email_verified is verified
    assert principal.email == "alice@example.test"  # kept: the identity rules decide where it may go


def test_email_verified_absent_is_not_verified() -> None:
    assert principal_from_claims(CLAIMS, paths=ClaimPaths()).email_verified is False


def test_email_verified_is_the_top_level_claim_whatever_the_email_path() -> None:
    claims = CLAIMS | {"attributes": {"mail": "a@example.test", "email_verified": True}}
    principal = principal_from_claims(claims, paths=ClaimPaths(email="attributes.mail"))
    assert principal.email == "a@example.test" and principal.email_verified is False
    assert principal_from_claims(
        claims | {"email_verified": True}, paths=ClaimPaths(email="attributes.mail")
    ).email_verified
