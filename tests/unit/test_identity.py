"""Identity from the email (idgate.identity): an unverified email never becomes the upstream's user or its email
header, unless the issuer opted in (``trust_unverified_email``); the user slot never silently falls back."""

from __future__ import annotations

import pytest

from idgate.config import UpstreamConfig
from idgate.identity import render_identity, usable_email
from idgate.principal import Principal

GRAFANA = UpstreamConfig(profile="grafana", role_set="grafana", user_from="email")
APP = UpstreamConfig()


def principal(*, email: str | None = "alice@example.test", verified: bool = False) -> Principal:
    """Trudy's principal: her own subject and username, and an email that may name someone else."""
    return Principal(
        issuer="https://idp.test",
        subject="trudy-sub",
        username="trudy",
        email=email,
        name="Trudy",
        groups=("staff",),
        expires_at=0.0,
        email_verified=verified,
    )


def test_usable_email() -> None:
    assert usable_email(principal(verified=True), trust_unverified=False) == "alice@example.test"
    assert usable_email(principal(verified=False), trust_unverified=False) is None
    assert usable_email(principal(verified=False), trust_unverified=True) == "alice@example.test"
    assert usable_email(principal(email=None, verified=True), trust_unverified=True) is None


@pytest.mark.parametrize("email", ["alice@example.test", None], ids=["unverified", "absent"])
def test_user_from_email_without_a_verified_email_is_refused_not_replaced(email: str | None) -> None:
    identity = render_identity(principal(email=email), GRAFANA, ("Viewer",))
    assert identity.refused == "unverified_email"
    assert "user" not in identity.values and "email" not in identity.values


def test_user_from_email_with_a_verified_email() -> None:
    identity = render_identity(principal(verified=True), GRAFANA, ("Viewer",))
    assert identity.refused is None and identity.notes == ()
    assert identity.values["user"] == identity.values["email"] == "alice@example.test"


def test_issuer_opt_in_trusts_an_unverified_email() -> None:
    identity = render_identity(principal(), GRAFANA, ("Viewer",), trust_unverified_email=True)
    assert identity.refused is None and identity.values["user"] == "alice@example.test"
    assert identity.values["email"] == "alice@example.test"


def test_the_email_slot_carries_only_a_usable_email() -> None:
    unverified = render_identity(principal(), APP, ())
    assert unverified.refused is None and unverified.values["user"] == "trudy"
    assert "email" not in unverified.values and unverified.notes == ("email_dropped_unverified",)
    verified = render_identity(principal(verified=True), APP, ())
    assert verified.values["email"] == "alice@example.test" and verified.notes == ()
    absent = render_identity(principal(email=None), APP, ())
    assert "email" not in absent.values and absent.notes == ()  # nothing was dropped


def test_username_and_subject_upstreams_are_unchanged() -> None:
    no_username = Principal(
        issuer="https://idp.test", subject="svc-1", username=None, email=None, name=None, groups=(), expires_at=0.0
    )
    assert render_identity(no_username, APP, ()).values["user"] == "svc-1"  # a machine client's token
    by_subject = render_identity(principal(), UpstreamConfig(user_from="subject"), ())
    assert by_subject.values["user"] == "trudy-sub" and by_subject.refused is None


def test_a_user_value_with_control_characters_is_still_unsafe_identity() -> None:
    hostile = Principal(
        issuer="https://idp.test", subject="a\nb", username=None, email=None, name=None, groups=(), expires_at=0.0
    )
    assert render_identity(hostile, APP, ()).refused == "unsafe_identity"
    verified_hostile = principal(email="a\r\nX-WEBAUTH-ROLE: Admin", verified=True)
    assert render_identity(verified_hostile, GRAFANA, ()).refused == "unsafe_identity"
