"""The IdP chooser page (idgate.sso.chooser): static, escaped, locked down by its headers."""

from __future__ import annotations

import html
import re
import urllib.parse

from idgate.sso.chooser import chooser_page


def test_one_link_per_idp_in_order_carrying_the_return_url() -> None:
    page = chooser_page(prefix="/.idgate", names=["corp", "partner"], return_to="https://app.example/x?a=1&b=2")
    body = page.body.decode()
    links = re.findall(r"<a id='idp-([a-z_]+)' href='([^']+)'>", body)
    assert [name for name, _ in links] == ["corp", "partner"]
    for name, href in links:
        url = urllib.parse.urlsplit(html.unescape(href))
        assert url.path == "/.idgate/start"
        assert urllib.parse.parse_qs(url.query) == {"idp": [name], "rd": ["https://app.example/x?a=1&b=2"]}


def test_headers_forbid_script_framing_and_caching() -> None:
    page = chooser_page(prefix="/.idgate", names=["corp"], return_to="/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'none';")
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["content-type"].startswith("text/html")


def test_hostile_values_are_escaped() -> None:
    hostile = "'><script>alert(1)</script><a href='"
    body = chooser_page(prefix="/.idgate", names=[hostile], return_to="/\"'><img src=x onerror=alert(1)>").body
    text = body.decode()
    assert "<script" not in text and "<img" not in text
    assert "onerror=alert(1)>" not in text
    links = re.findall(r"<a id='([^'<>]*)' href='([^'<>]*)'>([^<]*)</a>", text)
    assert len(links) == 1 and text.count("<a ") == 1
    ident, _, label = links[0]
    assert html.unescape(ident) == "idp-" + hostile and html.unescape(label) == hostile
