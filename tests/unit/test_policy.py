"""Route matching, path/host canonicalisation, role mapping, and identity rendering."""

from __future__ import annotations

import quopri
import urllib.parse

import pytest

from idgate.config import ClaimPaths, UpstreamConfig
from idgate.config_load import parse_config
from idgate.facts import IDENTITY_SLOTS
from idgate.identity import percent_encode, quoted_printable, render_identity
from idgate.policy import Policy
from idgate.principal import Principal, claim_at, principal_from_claims

CONFIG = parse_config(
    {
        "issuers": [{"name": "i", "issuer": "https://idp.test", "audiences": ["a"]}],
        "role_sets": {
            "grafana": {
                "roles": ["Viewer", "Editor", "Admin"],
                "from_groups": {"staff": ["Viewer"], "eng": ["Editor", "Viewer"], "admins": ["Admin"]},
            }
        },
        "upstreams": {"app": {}, "grafana": {"profile": "grafana", "role_set": "grafana", "user_from": "email"}},
        "routes": [
            {"name": "pub", "path": "/public", "upstream": "app", "public": True},
            {"name": "exact", "path": "/only", "match": "exact", "upstream": "app", "public": True},
            {
                "name": "graf",
                "host": "grafana.test",
                "path": "/",
                "upstream": "grafana",
                "allow": {"roles": ["Editor"]},
            },
            {"name": "admin", "path": "/admin", "upstream": "app", "allow": {"groups": ["admins"]}},
            {"name": "rest", "path": "/app/", "upstream": "app", "allow": {"authenticated": True}},
        ],
    },
    environ={},
)
POLICY = Policy(config=CONFIG)
GRPC_POLICY = Policy(
    config=parse_config(
        {
            "issuers": [{"name": "i", "issuer": "https://idp.test", "audiences": ["a"]}],
            "upstreams": {"grpc": {}, "app": {}},
            "routes": [
                {"name": "reset", "grpc": "/demo.Echo/Reset", "upstream": "grpc", "allow": {"groups": ["admins"]}},
                {"name": "echo", "grpc": "/demo.Echo/*", "upstream": "grpc", "allow": {"authenticated": True}},
                {"name": "bare", "grpc": "/Health/Check", "upstream": "grpc", "public": True},
                {"name": "web", "path": "/", "upstream": "app", "allow": {"groups": ["staff"]}},
            ],
        },
        environ={},
    )
)


def principal(groups: tuple[str, ...] = (), *, email_verified: bool = True, **kw: str | None) -> Principal:
    fields: dict[str, str | None] = {"username": "alice", "email": "alice@example.test", "name": "Alice"} | kw
    return Principal(
        issuer="https://idp.test",
        subject="sub-1",
        groups=groups,
        expires_at=0.0,
        username=fields["username"],
        email=fields["email"],
        name=fields["name"],
        email_verified=email_verified,
    )


@pytest.mark.parametrize(
    ("host", "path", "route"),
    [
        ("any.test", "/public", "pub"),
        ("any.test", "/public/x/y", "pub"),
        ("any.test", "/publicity", None),
        ("any.test", "/only", "exact"),
        ("any.test", "/only/x", None),
        ("grafana.test", "/admin", "graf"),  # host-specific route comes first
        ("any.test", "/admin", "admin"),
        ("any.test", "/admin/users", "admin"),
        ("any.test", "/administrator", None),
        ("any.test", "/app", "rest"),
        ("any.test", "/app/x", "rest"),
        ("any.test", "/ADMIN", None),  # case-sensitive: no route, so a deny
        ("any.test", "/", None),
    ],
)
def test_first_match_wins_and_no_match_is_none(host: str, path: str, route: str | None) -> None:
    matched = POLICY.match(host, path)
    assert (matched.name if matched else None) == route


def test_roles_from_groups_are_ordered_and_checked() -> None:
    graf = POLICY.match("grafana.test", "/")
    assert graf is not None
    assert POLICY.roles_for(POLICY.upstream(graf), ("admins", "staff", "unknown")) == ("Viewer", "Admin")
    allowed = POLICY.check(graf, principal(("eng",)))
    assert allowed.allowed and allowed.reasons == ("role_granted",) and allowed.roles == ("Viewer", "Editor")
    denied = POLICY.check(graf, principal(("staff",)))
    assert not denied.allowed and denied.reasons == ("missing_role_or_group",)
    admin = POLICY.match("x.test", "/admin")
    assert admin is not None
    assert POLICY.check(admin, principal(("admins",))).reasons == ("group_granted",)
    assert not POLICY.check(admin, principal(("staff",))).allowed


def test_claims_nested_paths_and_hostile_groups() -> None:
    claims = {"sub": "s", "iss": "https://idp.test", "exp": 10, "realm_access": {"roles": ["a", 3, "b", "a"]}}
    assert claim_at(claims, "realm_access.roles") == ["a", 3, "b", "a"]
    p = principal_from_claims(claims, paths=ClaimPaths(groups="realm_access.roles"))
    assert p.groups == ("a", "b") and "group_not_a_string" in p.notes and p.key == ("https://idp.test", "s")
    as_string = principal_from_claims({"sub": "s", "groups": "admins"}, paths=ClaimPaths())
    assert as_string.groups == () and as_string.notes == ("groups_not_a_list",)


def test_identity_drops_header_splitting_and_role_forging_values() -> None:
    app = UpstreamConfig()
    hostile = principal(("viewers,admin", "ops\r\nX-Auth-Roles: admin", "staff"), name="Eve\r\nX-Auth-User: root")
    identity = render_identity(hostile, app, ())
    assert identity.values["groups"] == "staff"
    assert "name" not in identity.values
    assert set(identity.notes) == {"groups_entry_dropped", "name_dropped_control_char"}
    for value in identity.values.values():
        assert "\r" not in value and "\n" not in value


def test_identity_profiles_and_encodings() -> None:
    grafana = UpstreamConfig(profile="grafana", role_set="grafana", user_from="email")
    p = principal(("eng",), name="Zoë = Ölund", email="zoe@example.test")
    identity = render_identity(p, grafana, ("Viewer", "Editor"))
    assert identity.values["user"] == "zoe@example.test"
    assert identity.values["role"] == "Editor" and identity.values["roles"] == "Viewer,Editor"
    assert quopri.decodestring(identity.values["name"].encode()).decode() == "Zoë = Ölund"
    assert set(identity.values) <= set(IDENTITY_SLOTS)
    generic = render_identity(p, UpstreamConfig(), ())
    assert generic.values["user"] == "alice" and "role" not in generic.values
    assert urllib.parse.unquote(generic.values["name"]) == "Zoë = Ölund"
    assert generic.values["name"].isascii()


def test_encoders_are_ascii_and_reversible() -> None:
    for text in ["plain", "100% sure", "日本語", 'quote " mark', "a=b", "trailing ", "Alice Admin"]:
        assert urllib.parse.unquote(percent_encode(text)) == text
        assert quopri.decodestring(quoted_printable(text).encode()).decode() == text
        assert percent_encode(text).isascii() and quoted_printable(text).isascii()


def test_quoted_printable_keeps_plain_ascii_readable() -> None:
    assert quoted_printable("Alice Admin") == "Alice Admin"
    assert quoted_printable("a=b ") == "a=3Db=20"


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/demo.Echo/Reset", "reset"),  # the method's own rule comes first
        ("/demo.Echo/Whoami", "echo"),
        ("/demo.Echo/Reset2", "echo"),
        ("/demo.Echo/", "web"),  # no method: not a call of the service
        ("/demo.Echo", "web"),
        ("/demo.Echo/A/B", "web"),  # one method segment only
        ("/demo.EchoX/Whoami", "web"),
        ("/demo.echo/Whoami", "web"),  # gRPC names are case-sensitive
        ("/Health/Check", "bare"),
        ("/Health/Check/x", "web"),
    ],
)
def test_grpc_routes_match_a_method_or_any_method_of_a_service(path: str, route: str) -> None:
    matched = GRPC_POLICY.match("any.test", path)
    assert matched is not None and matched.name == route
