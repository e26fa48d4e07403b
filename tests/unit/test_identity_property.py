"""Identity rendering round-trips for any Unicode: what the upstream decodes is exactly what idgate kept.

For every profile (generic and looker: percent-encoding; grafana: quoted-printable, Grafana's ``headers_encoded``)
and any list of groups: each rendered value is printable ASCII (no CR, LF or other control character, so it can
never split a header); splitting the groups value on ``,`` and decoding each entry gives back the groups in order,
minus exactly those containing ``,`` or a control character, which are noted. Single values round-trip too.
"""

from __future__ import annotations

import quopri
import re
import urllib.parse

from hypothesis import example, given, settings
from hypothesis import strategies as st

from idgate.config import UpstreamConfig
from idgate.identity import render_identity
from idgate.principal import Principal

CONTROL = re.compile(r"[\x00-\x1f\x7f]")
HEADER_SAFE = re.compile(r"[\x20-\x7e]*")
PROFILES = ("generic", "looker", "grafana")

# Text with the characters that matter over-represented: the delimiter, CR/LF and other controls, the escape
# characters of both encodings, spaces (quoted-printable treats a trailing one specially) and non-ASCII.
tricky = st.text(
    alphabet=st.one_of(st.sampled_from(",\r\n\x00\x7f\t %=\"'é€😀\u2028\u0085"), st.characters(codec="utf-8")),
    min_size=1,
    max_size=12,
)
groups_lists = st.lists(tricky, max_size=8, unique=True)


def decode(value: str, profile: str) -> str:
    if profile == "grafana":
        return quopri.decodestring(value.encode("ascii")).decode("utf-8")
    return urllib.parse.unquote(value, errors="strict")


def decode_list(value: str, profile: str) -> list[str]:
    return [] if value == "" else [decode(item, profile) for item in value.split(",")]


def principal(groups: list[str], name: str = "Zoë") -> Principal:
    return Principal(
        issuer="https://idp.example",
        subject="sub-1",
        username="zoe",
        email="zoe@example.test",
        name=name,
        groups=tuple(groups),
        expires_at=0.0,
    )


@given(groups=groups_lists, name=tricky, profile=st.sampled_from(PROFILES))
@settings(max_examples=400, deadline=None)
@example(groups=["viewers,admin", "a\r\nX-Auth-Role: admin", "staff", "a ", "=3D", "%2C"], name="x", profile="grafana")
@example(groups=["viewers,admin", "a\r\nX-Auth-Role: admin", "staff", "a ", "=3D", "%2C"], name="x", profile="generic")
def test_groups_round_trip_and_only_delimiters_and_controls_are_dropped(
    groups: list[str], name: str, profile: str
) -> None:
    identity = render_identity(principal(groups, name), UpstreamConfig(profile=profile), ())  # type: ignore[arg-type]
    for slot, value in identity.values.items():
        assert HEADER_SAFE.fullmatch(value), (slot, value)
    kept = [g for g in groups if "," not in g and not CONTROL.search(g)]
    assert decode_list(identity.values["groups"], profile) == kept
    assert ("groups_entry_dropped" in identity.notes) == (kept != groups)
    if CONTROL.search(name):
        assert "name" not in identity.values and "name_dropped_control_char" in identity.notes
    else:
        assert decode(identity.values["name"], profile) == name


@given(roles=groups_lists, profile=st.sampled_from(PROFILES))
@settings(max_examples=200, deadline=None)
def test_roles_round_trip_and_the_highest_is_the_last(roles: list[str], profile: str) -> None:
    identity = render_identity(principal([]), UpstreamConfig(profile=profile), tuple(roles))  # type: ignore[arg-type]
    kept = [r for r in roles if "," not in r and not CONTROL.search(r)]
    assert decode_list(identity.values["roles"], profile) == kept
    if roles and not CONTROL.search(roles[-1]):
        assert decode(identity.values["role"], profile) == roles[-1]
    else:
        assert "role" not in identity.values
