"""``idgate explain`` with the demo's policy (config/demo.yaml): the real DecisionEngine answers, explain only
describes the caller and prints. Plus the header table held against haproxy.cfg, and the console script itself."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from idgate.config import Config
from idgate.config_load import load_config
from idgate.errors import RequestError
from idgate.ops.explain import Caller, as_json, explain, render_text, request_facts
from idgate.ops.upstream_headers import BACKEND_HEADERS

REPO = Path(__file__).resolve().parents[3]
IDGATE = Path(sys.executable).parent / "idgate"


@pytest.fixture
def demo_file(tmp_path: Path) -> Path:
    """config/demo.yaml with its generated files in ``tmp_path`` (no CA file: the system store)."""
    (tmp_path / "client_secret").write_text("idgate-test-secret-0123456789abcdef")
    (tmp_path / "session_keys").write_text(base64.b64encode(os.urandom(32)).decode())
    doc: dict[str, Any] = yaml.safe_load((REPO / "config" / "demo.yaml").read_text())
    del doc["issuers"][0]["ca_file"]
    doc["issuers"][0]["client_secret_file"] = "client_secret"
    doc["sessions"]["keys_file"] = "session_keys"
    for key in ("embed_secret", "client_secret"):  # the looker_embed upstream's secrets
        (tmp_path / f"looker_{key}").write_text(base64.urlsafe_b64encode(os.urandom(32)).decode())
        doc["upstreams"]["analytics"]["looker"][f"{key}_file"] = f"looker_{key}"
    (tmp_path / "demo.yaml").write_text(yaml.safe_dump(doc))
    return tmp_path / "demo.yaml"


@pytest.fixture
def demo(demo_file: Path) -> Config:
    return load_config(demo_file)


@pytest.mark.anyio
async def test_why_cannot_bob_see_admin(demo: Config) -> None:
    result = await explain(demo, request_facts("GET", "/admin"), Caller(user="bob", groups=("staff",)))
    assert (result.decision.status, result.decision.reasons) == (403, ("missing_role_or_group",))
    assert result.route is not None and result.route.name == "admin" and not result.verified
    assert dict(result.headers) == {}
    screen = render_text(result)
    assert "DENY 403" in screen and "missing_role_or_group" in screen
    assert "rule       allow groups: grafana-admins" in screen and "route      admin -> upstream app" in screen
    assert "not verified" in screen


@pytest.mark.anyio
async def test_a_grafana_route_prints_the_x_webauth_values(demo: Config) -> None:
    caller = Caller(user="alice", email="alice@example.test", groups=("staff",))
    result = await explain(demo, request_facts("GET", "https://127.0.0.1:8443/grafana/d/x"), caller)
    assert result.decision.allow and result.decision.reasons == ("role_granted",)
    assert result.facts.host == "127.0.0.1:8443"
    assert dict(result.headers) == {
        "X-WEBAUTH-USER": "alice@example.test",
        "X-WEBAUTH-EMAIL": "alice@example.test",
        "X-WEBAUTH-ROLE": "Viewer",
        "X-WEBAUTH-GROUPS": "staff",
        "X-JWT-Assertion": "<signed JWT for aud grafana, minted per request; not shown>",
    }
    screen = render_text(result)
    assert (
        "ALLOW 200" in screen and "X-WEBAUTH-ROLE: Viewer" in screen and "allow roles: Viewer, Editor, Admin" in screen
    )


@pytest.mark.anyio
async def test_claims_use_the_issuers_claim_paths_and_no_credential_is_the_real_401(demo: Config) -> None:
    claims = Caller(claims={"sub": "carol", "preferred_username": "carol", "groups": ["grafana-admins"]})
    admin = await explain(demo, request_facts("GET", "/admin/x"), claims)
    assert admin.decision.allow and admin.headers["X-Auth-User"] == "carol"
    assert as_json(admin)["principal"] == {
        "iss": "https://localhost:9443",
        "sub": "carol",
        "username": "carol",
        "email": None,
        "groups": ["grafana-admins"],
    }
    anonymous = await explain(demo, request_facts("GET", "/admin"), Caller())
    assert (anonymous.decision.status, anonymous.decision.reasons, anonymous.caller) == (
        401,
        ("missing_credentials",),
        "no credential",
    )
    public = await explain(demo, request_facts("GET", "/public/x"), Caller())
    assert public.decision.reasons == ("public_route",) and "public: true" in render_text(public)


@pytest.mark.anyio
async def test_an_unverified_token_is_read_and_marked(demo: Config) -> None:
    def b64(doc: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    token = ".".join([b64({"alg": "RS256", "typ": "at+jwt"}), b64({"sub": "bob", "groups": ["staff"]}), "c2ln"])
    result = await explain(demo, request_facts("GET", "/app/x"), Caller(token=token, verify=False))
    assert result.headers["X-Auth-User"] == "bob" and result.headers["X-Auth-Groups"] == "staff"
    assert result.decision.allow and "NOT verified" in result.caller and not result.verified
    assert token not in render_text(result) and token not in json.dumps(as_json(result))
    with pytest.raises(RequestError, match="unknown_issuer"):
        await explain(demo, request_facts("GET", "/"), Caller(user="x", issuer="nope"))


def test_the_header_table_is_the_shipped_haproxy_cfg() -> None:
    cfg = (REPO / "haproxy" / "haproxy.cfg").read_text()
    found: dict[str, dict[str, str]] = {}
    for backend, body in re.findall(r"^backend be_(\w+)\n(.*?)(?=^\S|\Z)", cfg, flags=re.M | re.S):
        sets = re.findall(r'set-header (\S+) "%\[var\(txn\.idgate\.(\w+)\)\]"', body)
        if sets:
            found[backend] = {slot: header for header, slot in sets}
    assert found == {name: dict(table) for name, table in BACKEND_HEADERS.items()}


def test_the_console_script_explains_in_text_and_json(demo_file: Path) -> None:
    base = [str(IDGATE), "explain", "--config", str(demo_file), "/admin", "--user", "bob", "--group", "staff"]
    text = subprocess.run(base, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "DENY 403" in text and "missing_role_or_group" in text and "grafana-admins" in text
    doc = json.loads(subprocess.run([*base, "--json"], capture_output=True, text=True, timeout=60, check=True).stdout)
    assert doc["decision"] == {"allow": False, "status": 403, "reasons": ["missing_role_or_group"]}
    assert doc["route"] == {"name": "admin", "upstream": "app", "rule": "allow groups: grafana-admins"}
    bad = subprocess.run([*base[:4], "/x", "--claims", "[1"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("idgate explain: --claims is not JSON")
    assert bad.stdout == "" and "Traceback" not in bad.stderr
