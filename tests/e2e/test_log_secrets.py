"""No credential reaches a log line: a whole flow through the real HAProxy and idgate (both modes), then every line
of HAProxy's log and idgate's log is searched for every token, code, state and cookie value the flow used."""

from __future__ import annotations

import re
import time
import urllib.parse
import uuid

import httpx
import pytest
from stack import Stack, browser_login

pytestmark = pytest.mark.e2e
API = {"accept": "application/json"}


class Recorder:
    """httpx response hook: every URL requested and every cookie value set, through HAProxy or at the IdP."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.cookie_values: list[str] = []

    def __call__(self, response: httpx.Response) -> None:
        self.urls.append(str(response.request.url))
        for header in response.headers.get_list("set-cookie"):
            self.cookie_values.append(header.split(";", 1)[0].partition("=")[2])
        if "location" in response.headers:
            self.urls.append(str(response.request.url.join(response.headers["location"])))

    def query_values(self, name: str) -> list[str]:
        return [v for url in self.urls for v in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get(name, [])]


def test_no_token_code_state_or_cookie_reaches_a_log_line(fresh: Stack) -> None:
    tokens = fresh.login("bob")
    recorder = Recorder()
    with fresh.client(event_hooks={"response": [recorder]}) as client:
        # bearer requests with credentials in the query: refused without a header, allowed with one; HTTP/2 too
        query = {"access_token": tokens.access_token}
        assert client.get(fresh.url + "/app/q", params=query, headers=API).status_code == 401
        bearer = API | {"authorization": f"Bearer {tokens.access_token}"}
        assert client.get(fresh.url + "/app/q", params=query, headers=bearer).status_code == 200
        both = {"id_token": tokens.id_token, "refresh_token": tokens.refresh_token}
        assert client.get(fresh.url + "/app/q2", params=both, headers=bearer).status_code == 200
        with fresh.client(http2=True) as h2:
            assert h2.get(fresh.url + "/app/q3", params=query, headers=API).status_code == 401
        # a browser-like login that starts from a URL carrying a token (it travels in rd=, percent-encoded)
        login = browser_login(fresh, client, "/app/land?" + urllib.parse.urlencode(query))
        assert login.response.status_code == 200 and login.saw_login_form
        assert any("/.idgate/callback?" in url for url in recorder.urls)
        # the callback replayed (its code and state again), sign-out, and the IdP's confirmation (it then calls
        # /.idgate/backchannel-logout through HAProxy)
        callback = next(url for url in recorder.urls if "/.idgate/callback?" in url)
        assert client.get(callback).status_code == 400
        page = client.get(fresh.url + "/.idgate/sign_out")
        csrf = re.search(r"name='csrf' value='([^']+)'", page.text)
        assert csrf, page.text
        out = client.post(fresh.url + "/.idgate/sign_out", data={"csrf": csrf.group(1)}, headers={"origin": fresh.url})
        assert out.status_code == 302
        confirm = client.get(out.headers["location"])
        form = re.search(r"<form[^>]*action=\"([^\"]+)\"", confirm.text)
        fields = dict(re.findall(r"name=\"([^\"]+)\"[^>]*value=\"([^\"]*)\"", confirm.text))
        assert form, confirm.text
        client.post(str(confirm.url.join(form.group(1))), data=fields | {"logout": "yes"})
        # a back-channel logout token in the body, and (wrongly) in the query
        now = int(time.time())
        logout_token = fresh.idp.sign(
            {"typ": "logout+jwt"},
            {
                "iss": fresh.idp.issuer,
                "aud": "idgate",
                "iat": now,
                "exp": now + 120,
                "jti": uuid.uuid4().hex,
                "sub": "bob",
                "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
            },
        )
        backchannel = fresh.url + "/.idgate/backchannel-logout"
        assert client.post(backchannel, data={"logout_token": logout_token}).status_code == 200
        client.get(backchannel, params={"logout_token": logout_token})
    secrets = {
        "access_token": [tokens.access_token],
        "id_token": [tokens.id_token],
        "refresh_token": [tokens.refresh_token],
        "code": recorder.query_values("code"),
        "state": recorder.query_values("state"),
        "id_token_hint": recorder.query_values("id_token_hint"),
        "cookie": [v for v in recorder.cookie_values if v],
        "csrf": [csrf.group(1)],
        "logout_token": [logout_token],
    }
    assert all(secrets.values()), secrets  # each kind was really used
    deadline = time.monotonic() + 3  # HAProxy logs a request once its response is sent
    while "/.idgate/backchannel-logout?logout_token=" not in fresh.haproxy.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    logs = {"haproxy": fresh.haproxy.log_text(), "idgate": fresh.idgate.log_text()}
    for log_name, text in logs.items():
        for kind, values in secrets.items():
            for value in values:
                assert len(value) >= 16 and value not in text, f"{kind} {value[:12]}... in {log_name}.log"
    # the flow was logged, with the credentials' places kept visible
    haproxy = logs["haproxy"]
    assert '"GET /app/q?access_token=<redacted> HTTP/1.1"' in haproxy
    assert '"GET /app/q3?access_token=<redacted> HTTP/2.0"' in haproxy
    assert "/app/q2?id_token=<redacted>&refresh_token=<redacted>" in haproxy
    assert re.search(r"/\.idgate/start\?rd=%2Fapp%2Fland%3Faccess_token%3D<redacted> ", haproxy)
    assert re.search(r"/\.idgate/callback\?code=<redacted>&state=<redacted>&iss=", haproxy)
    assert "/.idgate/backchannel-logout?logout_token=<redacted> " in haproxy
    assert all(f'"event": "{event}"' in logs["idgate"] for event in ("login_start", "sign_out", "backchannel_logout"))
