"""Config validation: every problem reported at once, secrets resolved and never printed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from idgate.cli import main
from idgate.config_load import load_config, parse_config, summarize
from idgate.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "issuers": [
        {
            "name": "corp",
            "issuer": "https://idp.example.com",
            "audiences": ["https://api.example.com"],
            "algorithms": ["RS256"],
        }
    ],
    "role_sets": {"grafana": {"roles": ["Viewer", "Editor", "Admin"], "from_groups": {"staff": ["Viewer"]}}},
    "upstreams": {"app": {}, "grafana": {"profile": "grafana", "role_set": "grafana"}},
    "routes": [
        {"name": "pub", "path": "/public", "upstream": "app", "public": True},
        {"name": "graf", "path": "/grafana", "upstream": "grafana", "allow": {"roles": ["Viewer"]}},
    ],
}


def problems_of(doc: dict[str, Any], environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, environ=environ or {})
    return list(info.value.problems)


def test_base_config_is_valid() -> None:
    config = parse_config(BASE, environ={})
    assert config.issuers[0].algorithms == ("RS256",)
    assert [r.name for r in config.routes] == ["pub", "graf"]


def test_shipped_example_and_demo_configs_are_valid() -> None:
    config = load_config(REPO / "config" / "idgate.example.yaml")
    assert {u for u in config.upstreams} == {"app", "grafana", "looker", "grpc"}


def test_every_problem_is_listed_at_once() -> None:
    doc = copy.deepcopy(BASE)
    doc["issuers"][0].update(issuer="http://idp.example.com", algorithms=["none", "HS256"], audiences=[], colour="blue")
    doc["routes"].append({"name": "bare", "path": "/bare", "upstream": "app"})
    doc["routes"].append({"name": "ghost", "path": "/ghost", "upstream": "nowhere", "public": True})
    doc["extra"] = 1
    found = "\n".join(problems_of(doc))
    for expected in (
        "issuers.0.issuer: 'http://idp.example.com' is not https",
        "'none', 'HS256' not allowed",
        "issuers.0.audiences: at least one",
        "issuers.0.colour: unknown key",
        "route 'bare' has no rule",
        "unknown upstream 'nowhere'",
        "extra: unknown key",
    ):
        assert expected in found, expected


def test_dev_mode_allows_http_issuer() -> None:
    doc = copy.deepcopy(BASE) | {"dev_mode": True}
    doc["issuers"][0]["issuer"] = "http://localhost:9000"
    assert parse_config(doc, environ={}).issuers[0].issuer == "http://localhost:9000"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"algorithms": []}, "pin at least one algorithm"),
        ({"algorithms": ["HS512"]}, "'HS512' not allowed"),
        ({"issuer": "https://idp.example.com?x=1"}, "not an absolute http(s) URL"),
        ({"discovery": False}, "set jwks_uri when discovery is false"),
        ({"name": "Bad Name"}, "issuers.0.name"),
        ({"claims": {"groups": "a..b"}}, "not a claim path"),
    ],
)
def test_issuer_problems(change: dict[str, Any], expected: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["issuers"][0].update(change)
    assert any(expected in p for p in problems_of(doc)), problems_of(doc)


def test_route_roles_must_exist_in_the_upstreams_role_set() -> None:
    doc = copy.deepcopy(BASE)
    doc["routes"][1]["allow"] = {"roles": ["SuperAdmin"]}
    doc["routes"].append({"name": "r3", "path": "/x", "upstream": "app", "allow": {"roles": ["Viewer"]}})
    found = problems_of(doc)
    assert any("not in role set 'grafana'" in p for p in found)
    assert any("upstream 'app' has no role_set" in p for p in found)


def test_role_set_grants_only_known_roles_and_public_excludes_allow() -> None:
    doc = copy.deepcopy(BASE)
    doc["role_sets"]["grafana"]["from_groups"]["x"] = ["Root"]
    doc["routes"][0]["allow"] = {"authenticated": True}
    found = problems_of(doc)
    assert any("grants roles not in this role set: Root" in p for p in found)
    assert any("public and allow are exclusive" in p for p in found)


@pytest.mark.parametrize("path", ["admin", "/a?b", "/a#b", "/a/../b", "/%61", "/a\\b", "/*"])
def test_route_paths_must_be_normalised(path: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["routes"][0]["path"] = path
    assert any("routes.0.path" in p for p in problems_of(doc))


def test_no_routes_and_no_issuers() -> None:
    found = problems_of({"issuers": [], "upstreams": {}, "routes": []})
    assert any("at least one issuer" in p for p in found)
    assert any("at least one route" in p for p in found)


def test_secret_from_env_and_file(tmp_path: Path) -> None:
    doc = copy.deepcopy(BASE)
    doc["issuers"][0]["client_secret_env"] = "IDGATE_TEST_SECRET"
    config = parse_config(doc, environ={"IDGATE_TEST_SECRET": "s3cr3t-value-long-enough"})
    secret = config.issuers[0].client_secret
    assert secret is not None and secret.get_secret_value() == "s3cr3t-value-long-enough"
    assert "s3cr3t" not in summarize(config) and "s3cr3t" not in repr(config)

    (tmp_path / "secret.txt").write_text("another-long-secret-value\n")
    doc["issuers"][0] = {k: v for k, v in doc["issuers"][0].items() if k != "client_secret_env"}
    doc["issuers"][0]["client_secret_file"] = "secret.txt"  # relative to the config's directory
    config = parse_config(doc, environ={}, base_dir=tmp_path)
    assert config.issuers[0].client_secret is not None
    assert config.issuers[0].client_secret.get_secret_value() == "another-long-secret-value"


@pytest.mark.parametrize(
    ("secret_keys", "environ", "expected"),
    [
        ({"client_secret": "inline-secret-value-123"}, {}, "inline secrets are refused"),
        ({"client_secret_env": "MISSING"}, {}, "MISSING is not set"),
        ({"client_secret_env": "WEAK"}, {"WEAK": "changeme"}, "weak or placeholder secret"),
        ({"client_secret_file": "/nonexistent/idgate-secret"}, {}, "cannot read"),
        ({"client_secret_env": "A", "client_secret_file": "/x"}, {"A": "x" * 20}, "only one of"),
    ],
)
def test_secret_problems_never_print_the_value(
    secret_keys: dict[str, str], environ: dict[str, str], expected: str
) -> None:
    doc = copy.deepcopy(BASE)
    doc["issuers"][0].update(secret_keys)
    found = "\n".join(problems_of(doc, environ))
    assert expected in found
    assert "inline-secret-value-123" not in found and "changeme" not in found


def test_check_config_cli_lists_problems_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(REPO / "tests" / "data" / "bad-config.yaml")]) == 1
    err = capsys.readouterr().err
    assert "8 problem(s)" in err
    assert "hunter2" not in err
    assert main(["check-config", str(REPO / "config" / "idgate.example.yaml")]) == 0
    out = capsys.readouterr().out
    assert "routes (first match wins" in out and "grafana.example.com/" in out


def test_serve_refuses_a_bad_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", str(REPO / "tests" / "data" / "bad-config.yaml")]) == 1
    assert "refusing to start" in capsys.readouterr().err


def test_unreadable_and_non_mapping_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("a: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"issuers: [{name: caf\xe9}]\n", "not UTF-8 text (byte 0xe9 at offset 20)"),
        (b"dev_mode: 2001-13-01\n", "not valid YAML: ValueError"),
        (b"server: {port: !!int abc}\n", "not valid YAML: ValueError"),
        (b"server: {port: " + b"1" * 5000 + b"}\n", "not valid YAML: ValueError"),
        (b"[" * 5000, "not valid YAML: RecursionError"),
        (b"server: {port: !!int ''}\n", "not valid YAML: IndexError"),
        (b"dev_mode: !!bool ''\n", "not valid YAML: KeyError"),
        (b"dev_mode: !!timestamp ''\n", "not valid YAML: AttributeError"),
        (b"server: {port: !!int 0x}\n", "not valid YAML: ValueError"),
    ],
    ids=["latin-1", "bad-date", "int-tag", "5000-digits", "deep", "empty-int", "empty-bool", "empty-date", "hex"],
)
def test_files_pyyaml_cannot_construct_are_config_errors(tmp_path: Path, text: bytes, expected: str) -> None:
    """Found by the config fuzz target: these raised UnicodeDecodeError, ValueError, RecursionError, IndexError,
    KeyError or AttributeError (a traceback from check-config) instead of a ConfigError."""
    (tmp_path / "c.yaml").write_bytes(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "c.yaml")
    assert any(expected in problem for problem in info.value.problems), info.value.problems


def test_check_config_lists_an_unconstructible_file_instead_of_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "c.yaml").write_bytes(b"dev_mode: 2001-13-01\nissuers: [{name: caf\xc3\xa9}]\n")
    assert main(["check-config", str(tmp_path / "c.yaml")]) == 1
    assert "not valid YAML: ValueError: month must be in 1..12" in capsys.readouterr().err


@pytest.mark.parametrize(
    "doc",
    [
        {"issuers": 5, "upstreams": {}, "routes": 7},
        {**BASE, "routes": [{"name": ["a"], "upstream": "app", "public": True}, {"name": ["a"]}]},
        {**BASE, "upstreams": {"app": {"role_set": ["grafana"]}}},
        {
            **BASE,
            "upstreams": {"app": {"role_set": {"a": 1}}},
            "routes": [{"name": "r", "upstream": "app", "allow": {"roles": ["x"]}}],
        },
        {**BASE, "role_sets": {"grafana": {"roles": 5}}},
        {**BASE, "role_sets": {"grafana": {"roles": [["Viewer"]]}}},
        {**BASE, "routes": [{"name": "r", "upstream": "grafana", "allow": {"roles": 7}}]},
        {**BASE, "routes": [{"name": "r", "upstream": "grafana", "allow": {"roles": [["Viewer"]]}}]},
        {**BASE, "login": {"issuer": ["corp"], "redirect_uris": []}, "issuers": [{"name": ["corp"]}]},
    ],
    ids=[
        "not-lists",
        "list-route-name",
        "list-role-set",
        "dict-role-set",
        "int-roles",
        "nested-roles",
        "int-allow-roles",
        "nested-allow-roles",
        "list-login-issuer",
    ],
)
def test_wrong_types_anywhere_are_problems_not_exceptions(doc: dict[str, Any]) -> None:
    """Found by the config fuzz target: the cross-reference checks hashed or iterated raw values (TypeError)."""
    assert problems_of(doc)


def test_secret_file_with_a_nul_or_not_utf8_is_a_problem(tmp_path: Path) -> None:
    (tmp_path / "latin1").write_bytes(b"s\xe9cret-value-long-enough\n")
    for name, why in (("latin1", "not UTF-8 text"), ("a\x00b", "not a usable file name (NUL byte)")):
        doc = copy.deepcopy(BASE)
        doc["issuers"][0]["client_secret_file"] = name
        with pytest.raises(ConfigError) as info:
            parse_config(doc, environ={}, base_dir=tmp_path)
        found = "\n".join(info.value.problems)
        assert why in found and "cret-value" not in found


@pytest.mark.parametrize(
    "grpc",
    [
        "demo.Echo/Whoami",
        "/demo.Echo",
        "/demo.Echo/",
        "/demo.Echo/*/x",
        "/demo..Echo/M",
        "/1demo.Echo/M",
        "/demo.Echo/Who-ami",
        "/demo.Echo/*\n",
        "/demo.Echo/M?x",
        "/*/M",
    ],
)
def test_grpc_routes_need_a_method_or_service_wildcard(grpc: str) -> None:
    doc = copy.deepcopy(BASE)
    doc["routes"][1] = {"name": "rpc", "grpc": grpc, "upstream": "app", "allow": {"authenticated": True}}
    assert any("routes.1.grpc" in p and "/pkg.Service/Method" in p for p in problems_of(doc)), problems_of(doc)


def test_grpc_route_excludes_path_and_authorization_is_pass_or_strip() -> None:
    doc = copy.deepcopy(BASE)
    doc["routes"].append(
        {"name": "rpc", "grpc": "/a.B/*", "path": "/a.B", "upstream": "app", "allow": {"authenticated": True}}
    )
    doc["routes"].append(
        {"name": "rpc2", "grpc": "/B/M", "upstream": "app", "authorization": "drop", "allow": {"authenticated": True}}
    )
    found = "\n".join(problems_of(doc))
    assert "grpc and path/match are exclusive" in found
    assert "routes.3.authorization" in found
    doc["routes"] = [
        *doc["routes"][:2],
        {
            "name": "rpc",
            "grpc": "/pkg.v1.Svc/*",
            "upstream": "app",
            "authorization": "strip",
            "allow": {"groups": ["g"]},
        },
    ]
    config = parse_config(doc, environ={})
    assert config.routes[2].grpc == "/pkg.v1.Svc/*" and config.routes[2].authorization == "strip"
    assert "rpc: * gRPC /pkg.v1.Svc/* → app  [groups=['g'], Authorization stripped]" in summarize(config)


def test_an_issuer_without_the_audiences_key_is_refused() -> None:
    doc = copy.deepcopy(BASE)
    del doc["issuers"][0]["audiences"]
    assert problems_of(doc) == [
        "issuers.0.audiences: at least one non-empty audience is required (RFC 9068 §4: aud must name us)"
    ]


@pytest.mark.parametrize(
    ("networks", "expected"),
    [
        ([], "list at least one network (HAProxy's address): an empty list refuses every caller"),
        (["0.0.0.0/0"], "'0.0.0.0/0' is too wide"),
        (["::/0"], "'::/0' is too wide"),
        (["10.0.0.0/7"], "'10.0.0.0/7' is too wide"),
        (["2001:db8::/31"], "'2001:db8::/31' is too wide"),
        (["::ffff:0:0/96"], "'::ffff:0:0/96' is too wide"),  # every IPv4 peer of a dual-stack socket
        (["::/64"], "'::/64' is too wide"),  # contains ::ffff:0:0/96
        (["192.168.1.10/16"], "'192.168.1.10/16' has host bits set: write 192.168.0.0/16 for the network"),
        (["localhost"], "'localhost' is not an IP network"),
    ],
)
def test_trusted_callers_must_be_narrow_networks(networks: list[str], expected: str) -> None:
    doc = copy.deepcopy(BASE) | {"server": {"trusted_callers": networks}}
    (problem,) = problems_of(doc)
    assert problem.startswith("server.trusted_callers: ") and expected in problem, problem


def test_every_bad_trusted_caller_is_named_and_narrow_ones_pass() -> None:
    doc = copy.deepcopy(BASE) | {"server": {"trusted_callers": ["0.0.0.0/0", "10.0.0.0/8", "::/0", "x"]}}
    (problem,) = problems_of(doc)
    assert "'0.0.0.0/0'" in problem and "'::/0'" in problem and "'x'" in problem and "10.0.0.0/8" not in problem
    ok = ["10.0.0.0/8", "172.29.213.10/32", "127.0.0.1", "2001:db8::/32", "fd00:10:244::/56", "::ffff:10.0.0.0/104"]
    doc["server"]["trusted_callers"] = ok
    assert parse_config(doc, environ={}).server.trusted_callers == tuple(ok)


def test_jwks_uri_on_another_host_needs_an_explicit_pin() -> None:
    doc = copy.deepcopy(BASE)
    doc["issuers"][0].update(discovery=False, jwks_uri="https://keys.attacker.example/jwks.json")
    (problem,) = problems_of(doc)
    assert problem.startswith("issuers.0.jwks_uri: jwks_uri is on host 'keys.attacker.example', not the issuer's")
    doc["issuers"][0]["jwks_uri_host_mismatch_ok"] = True
    assert parse_config(doc, environ={}).issuers[0].jwks_uri == "https://keys.attacker.example/jwks.json"
    doc["issuers"][0]["jwks_uri"] = "https://IDP.example.com:8443/keys"  # same host: case and port do not matter
    doc["issuers"][0]["jwks_uri_host_mismatch_ok"] = False
    assert parse_config(doc, environ={}).issuers[0].jwks_uri == "https://IDP.example.com:8443/keys"
    del doc["issuers"][0]["jwks_uri"]
    doc["issuers"][0].update(discovery=True, jwks_uri_host_mismatch_ok=True)
    assert problems_of(doc) == ["issuers.0.jwks_uri: jwks_uri_host_mismatch_ok is set without a jwks_uri"]


def test_grafana_role_sets_use_grafanas_vocabulary() -> None:
    doc = copy.deepcopy(BASE)
    doc["role_sets"]["grafana"]["roles"] = ["Viewer", "Editor", "Admin", "viewer", "GrafanaAdmin", "SuperAdmin"]
    (problem,) = problems_of(doc)
    assert problem == (
        "upstreams.grafana: role set 'grafana' names roles Grafana does not have: ['viewer', 'GrafanaAdmin', "
        "'SuperAdmin'] (Grafana's roles are Viewer, Editor, Admin; GrafanaAdmin needs allow_grafana_admin: true)"
    )
    doc["role_sets"]["grafana"]["roles"] = ["Viewer", "Editor", "Admin", "GrafanaAdmin"]
    assert "'GrafanaAdmin'" in problems_of(doc)[0]
    doc["upstreams"]["grafana"]["allow_grafana_admin"] = True
    assert parse_config(doc, environ={}).role_sets["grafana"].roles[-1] == "GrafanaAdmin"
    doc["upstreams"]["app"] = {"role_set": "grafana", "allow_grafana_admin": True}  # any vocabulary, but no opt-in
    assert problems_of(doc) == ["upstreams.app: allow_grafana_admin applies to profile grafana only"]


@pytest.mark.parametrize("value", ["", " ", " https://idgate.example.com"])
def test_assertion_issuer_and_audience_are_not_empty(value: str) -> None:
    doc = copy.deepcopy(BASE) | {"assertion": {"issuer": value}}
    doc["upstreams"]["app"] = {"assertion_audience": value}
    assert [p.split(":")[0] for p in problems_of(doc)] == ["assertion.issuer", "upstreams.app.assertion_audience"]
