"""The /.idgate/ endpoints' parameter rule: every name at most once (RFC 6749 §3.1), whatever the order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.datastructures import QueryParams

from idgate.errors import RequestError
from idgate.sso.params import MAX_FORM_BYTES, MAX_FORM_FIELDS, form_params, unique_params


def query(text: str) -> dict[str, str]:
    """What the handlers read: Starlette's decoded pairs through the rule."""
    return unique_params(QueryParams(text).multi_items())


def test_single_parameters_pass_unchanged() -> None:
    assert query("code=c1&state=s1&iss=https%3A%2F%2Fidp.test") == {
        "code": "c1",
        "state": "s1",
        "iss": "https://idp.test",
    }
    assert query("") == {}
    assert query("rd=") == {"rd": ""}
    assert query("State=x&state=y") == {"State": "x", "state": "y"}  # names are case-sensitive


@pytest.mark.parametrize(
    "text",
    [
        "state=evil&code=c1&state=s1",  # the copy placed first is the one Starlette alone would ignore
        "code=c1&state=s1&state=evil",
        "code=evil&state=s1&code=c1",
        "state=s1&code=c1&code=evil",
        "state=s1&state=s1&code=c1",  # even two equal copies: the response is malformed
        "st%61te=evil&state=s1&code=c1",  # percent-encoded name
        "state=&state=s1",  # an empty copy counts
        "iss=https%3A%2F%2Fevil.test&iss=https%3A%2F%2Fidp.test",
        "error=access_denied&error=x",
        "rd=%2Fapp%2F&rd=%2F%2Fevil.example",
        "rd=//evil.example&rd=/app/",
    ],
)
def test_a_repeated_name_is_refused_whatever_the_order(text: str) -> None:
    with pytest.raises(RequestError) as caught:
        query(text)
    assert caught.value.reason == "duplicate_parameter"


def test_form_fields_follow_the_same_rule() -> None:
    assert form_params(b"csrf=abc&x=1") == {"csrf": "abc", "x": "1"}
    assert form_params(b"") == {}
    for body in (b"csrf=a&csrf=b", b"logout_token=a.b.c&logout_token=d.e.f", b"csrf=&csrf=t"):
        with pytest.raises(RequestError) as caught:
            form_params(body)
        assert caught.value.reason == "duplicate_parameter"


@pytest.mark.parametrize(
    "body",
    [
        b"csrf=" + b"a" * MAX_FORM_BYTES,
        "csrf=z\u00fcrich".encode(),
        b"\xff=1",
        b"&".join(b"f%d=1" % i for i in range(MAX_FORM_FIELDS + 1)),
    ],
)
def test_malformed_forms_are_refused(body: bytes) -> None:
    with pytest.raises(RequestError) as caught:
        form_params(body)
    assert caught.value.reason == "malformed_form"


@given(st.lists(st.tuples(st.sampled_from(["state", "code", "iss", "rd", "x"]), st.text(max_size=5)), max_size=6))
def test_accepted_exactly_when_no_name_repeats(pairs: list[tuple[str, str]]) -> None:
    names = [name for name, _ in pairs]
    if len(set(names)) == len(names):
        assert unique_params(pairs) == dict(pairs)
    else:
        with pytest.raises(RequestError):
            unique_params(pairs)
