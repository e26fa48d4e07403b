"""Claim types (idgate.claims): required claims first, then the JSON type of every registered claim idgate relies on."""

from __future__ import annotations

import json

import pytest

from idgate.claims import MAX_NUMERIC_DATE, NUMERIC_DATE_CLAIMS, STRING_CLAIMS, check_claims, is_numeric_date
from idgate.errors import TokenError

GOOD = {
    "iss": "https://idp.test",
    "sub": "u-1",
    "aud": "api",
    "exp": 1_700_000_300,
    "nbf": 1_700_000_000.5,
    "iat": 1_700_000_000,
    "jti": "j-1",
    "azp": "cli",
    "sid": "s-1",
    "client_id": "cli",
}


def reason(claims: dict[str, object], require: tuple[str, ...] = ()) -> str:
    with pytest.raises(TokenError) as excinfo:
        check_claims(claims, require=require)
    return excinfo.value.reason


def test_good_claims_pass() -> None:
    check_claims(GOOD, require=tuple(GOOD))
    check_claims(GOOD | {"aud": ["api", "other"]}, require=("aud",))
    check_claims(GOOD | {"aud": []}, require=())  # the type is right; PyJWT then refuses the empty audience
    check_claims({}, require=())


@pytest.mark.parametrize(
    "value",
    ["9999999999", "1700000300", True, False, None, [1], {"t": 1}, float("inf"), float("-inf"), float("nan")],
    ids=repr,
)
@pytest.mark.parametrize("claim", NUMERIC_DATE_CLAIMS)
def test_numeric_dates_are_json_numbers(claim: str, value: object) -> None:
    assert reason(GOOD | {claim: value}) == "invalid_claim_type"


@pytest.mark.parametrize("value", [7, 1.5, True, None, ["x"], {"x": 1}], ids=repr)
@pytest.mark.parametrize("claim", STRING_CLAIMS)
def test_string_claims_are_strings(claim: str, value: object) -> None:
    assert reason(GOOD | {claim: value}) == "invalid_claim_type"


@pytest.mark.parametrize("aud", [1, None, True, {"api": 1}, ["api", 1], [["api"]], ["api", None]], ids=repr)
def test_aud_is_a_string_or_an_array_of_strings(aud: object) -> None:
    assert reason(GOOD | {"aud": aud}) == "invalid_claim_type"


@pytest.mark.parametrize(
    ("claim", "code"), [("aud", "invalid_audience"), ("iss", "invalid_issuer"), ("exp", "invalid_claims")]
)
def test_required_claims_absent_or_null_are_missing_not_mistyped(claim: str, code: str) -> None:
    absent = {k: v for k, v in GOOD.items() if k != claim}
    assert reason(absent, require=(claim,)) == code
    assert reason(GOOD | {claim: None}, require=(claim,)) == code
    assert reason(GOOD | {claim: None}) == "invalid_claim_type"  # not required: null is a wrong type


def test_claims_outside_the_table_are_not_judged() -> None:
    check_claims(GOOD | {"groups": "admins", "email_verified": "true", "nonce": 1, "scope": ["a"]}, require=())


def test_numeric_date_range_is_i_json() -> None:
    assert is_numeric_date(MAX_NUMERIC_DATE) and is_numeric_date(-MAX_NUMERIC_DATE) and is_numeric_date(0)
    assert not is_numeric_date(MAX_NUMERIC_DATE + 1) and not is_numeric_date(1e300)
    # Python's json module reads NaN and Infinity, which are not JSON: they never pass as a time
    assert not any(is_numeric_date(v) for v in json.loads("[NaN, Infinity, -Infinity]"))
