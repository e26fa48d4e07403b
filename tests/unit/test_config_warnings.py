"""Warnings about a valid config: public routes that cover others, group names that differ only by case/spaces."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from idgate.config_load import load_config, parse_config
from idgate.config_warnings import config_warnings

REPO = Path(__file__).resolve().parents[2]
ISSUER = {"name": "corp", "issuer": "https://idp.example.com", "audiences": ["https://api.example.com"]}
AUTHENTICATED = {"authenticated": True}


def warnings_of(routes: list[dict[str, Any]], role_sets: dict[str, Any] | None = None) -> tuple[str, ...]:
    doc = {"issuers": [ISSUER], "role_sets": role_sets or {}, "upstreams": {"app": {}}, "routes": routes}
    for route in doc["routes"]:
        route.setdefault("upstream", "app")
    return config_warnings(parse_config(copy.deepcopy(doc), environ={}))


def test_the_shipped_example_has_no_warning() -> None:
    assert config_warnings(load_config(REPO / "config" / "idgate.example.yaml")) == ()


def test_a_public_prefix_route_on_root_is_a_warning() -> None:
    assert warnings_of([{"name": "all", "path": "/", "public": True}]) == (
        "routes.0 (all): public: true on any host / (prefix) makes every path public that no earlier route matches",
    )
    (warning,) = warnings_of([{"name": "site", "host": "www.example.com", "path": "/", "public": True}])
    assert warning.startswith("routes.0 (site): public: true on www.example.com / (prefix) makes every path public")
    assert warnings_of([{"name": "home", "path": "/", "match": "exact", "public": True}]) == ()


def test_a_public_prefix_hiding_a_later_protected_route_is_a_warning() -> None:
    (warning,) = warnings_of(
        [
            {"name": "docs", "path": "/docs", "public": True},
            {"name": "docs-admin", "path": "/docs/admin", "allow": AUTHENTICATED},
            {"name": "docs-edit", "path": "/docs/edit", "match": "exact", "allow": AUTHENTICATED},
            {"name": "docsearch", "path": "/docsearch", "allow": AUTHENTICATED},  # not below /docs
            {"name": "open", "path": "/docs/open", "public": True},  # public too: nothing to hide
        ]
    )
    assert warning == (
        "routes.0 (docs): public: true on any host /docs (prefix) hides the protected routes ['docs-admin', "
        "'docs-edit'] after it: first match wins, they are never reached"
    )


def test_a_public_prefix_around_an_earlier_protected_route_is_a_warning() -> None:
    (warning,) = warnings_of(
        [
            {"name": "admin", "path": "/public/admin", "allow": AUTHENTICATED},
            {"name": "public", "path": "/public/", "public": True},
        ]
    )
    assert warning == (
        "routes.1 (public): public: true on any host /public/ (prefix) covers the protected routes ['admin'] before "
        "it: any path below it they do not match is public"
    )


@pytest.mark.parametrize(
    ("public", "protected", "covered"),
    [
        ({"host": "a.example"}, {"host": "b.example"}, False),
        ({"host": "*"}, {"host": "b.example"}, True),
        ({"host": "a.example"}, {"host": "*"}, True),  # on a.example the protected route's paths are public
        ({"grpc": "/pkg.Svc/*"}, {"grpc": "/pkg.Svc/Admin"}, True),
        ({"grpc": "/pkg.Svc/*"}, {"grpc": "/pkg.Other/Admin"}, False),
        ({"path": "/pkg.Svc"}, {"grpc": "/pkg.Svc/*"}, True),
        ({"path": "/x", "match": "exact"}, {"path": "/x", "match": "exact"}, True),
        ({"path": "/x", "match": "exact"}, {"path": "/x/y"}, False),
    ],
)
def test_what_a_public_route_covers(public: dict[str, str], protected: dict[str, str], covered: bool) -> None:
    routes = [
        {"name": "pub", "path": "/pkg.Svc/x", "public": True} | public,
        {"name": "prot", "path": "/pkg.Svc/x/y", "allow": AUTHENTICATED} | protected,
    ]
    if "grpc" in public:
        del routes[0]["path"]
    if "grpc" in protected:
        del routes[1]["path"]
    assert bool(warnings_of(routes)) is covered


def test_groups_that_differ_only_by_case_or_spaces_are_a_warning() -> None:
    role_sets = {
        "r": {"roles": ["user", "admin"], "from_groups": {"Admins": ["admin"], "admins ": ["admin"], "ops": ["user"]}},
        "s": {"roles": ["x"], "from_groups": {"OPS": ["x"], " staff": ["x"]}},
    }
    found = warnings_of([{"name": "a", "path": "/a", "allow": {"groups": ["admins", "ops"]}}], role_sets)
    assert found == (
        "groups 'Admins' and 'admins ' and 'admins' differ only by case or surrounding spaces "
        "(role_sets.r.from_groups, routes.0.allow.groups): IdP groups are compared exactly, so only the spelling "
        "the IdP sends can match",
        "groups 'ops' and 'OPS' differ only by case or surrounding spaces (role_sets.r.from_groups, "
        "role_sets.s.from_groups, routes.0.allow.groups): IdP groups are compared exactly, so only the spelling "
        "the IdP sends can match",
        "group ' staff' has surrounding spaces (role_sets.s.from_groups): IdP groups are compared exactly",
    )
    role_sets["r"]["from_groups"] = {"admins": ["admin"], "grafana-admins": ["admin"]}
    del role_sets["s"]
    assert warnings_of([{"name": "a", "path": "/a", "allow": {"groups": ["admins"]}}], role_sets) == ()
