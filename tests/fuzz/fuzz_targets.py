"""Fuzz targets: one function per parser of hostile input, ``target(data: bytes) -> None``, asserting its contract.

This module is the registry (:data:`TARGETS`); the targets live in ``target_wire.py`` (spop, jws),
``target_browser.py`` (cookies, redirects) and ``target_values.py`` (config, identity).

Plain Python, no atheris: ``scripts/fuzz TARGET SECONDS`` drives a target under atheris (``atheris_main.py``) and
``test_fuzz_replay.py`` replays every corpus file through every target in the default test run. A target raises
(``AssertionError`` or the unexpected exception itself) exactly when the contract is broken; every documented
refusal is swallowed. The contracts:

- ``spop``: the SPOP codec (``idgate.spoe.spop``) raises only ``SpopError`` with a known status; a decoded frame
  re-encodes to bytes that decode to the same frame; a HELLO negotiates or raises ``SpopError``; a NOTIFY's
  messages give ``MessageError`` or facts (``idgate.spoe.adapter.facts_from_args``), whose host and path
  canonicalise or raise ``RequestError``. Input: the 4-byte length prefix, then the frame.
- ``jws``: ``split_compact_jws`` raises only ``TokenError`` (``token_too_large``, ``invalid_token``); the whole
  verifier raises only ``TokenError`` with a documented 401 reason code, and a principal it returns has a short
  subject and unique non-empty string groups. Input: a token, or ``{header JSON}\\n{payload JSON}``, which the
  target signs (ES256, a key of this process) so the claims reach PyJWT and ``principal_from_claims``.
- ``cookies``: ``SessionCookies.decode`` never raises and gives a payload or a documented reason; a payload it
  returns round-trips; ``without_cookies`` never raises and returns only input pairs, none with the prefix.
  Input: a ``Cookie`` header (UTF-8); seeds hold cookies sealed with :data:`COOKIE_KEY`.
- ``redirects``: ``safe_return_to`` returns the default or printable ASCII that is either a path starting with a
  single ``/`` (never ``//`` or ``/\\``) or a URL whose origin is allowed; the WHATWG parser (``ada-url``, when
  installed) agrees: joined to the site's URL, the answer stays on the site or an allowed origin. It is a fixed
  point. ``canonical_origin`` returns None or a canonical origin.
- ``config``: YAML bytes in a file → ``load_config`` gives a ``Config`` or ``ConfigError``, nothing else; a
  ``Config`` summarises.
- ``identity``: ``render_identity`` for every profile gives printable ASCII values (no CR/LF); decoding the
  groups gives back exactly the groups without ``,`` or control characters. Input: fields split on ``0xFF``
  (never in UTF-8): user, email, name, subject, issuer, then groups.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Final

from target_browser import fuzz_cookies, fuzz_redirects
from target_values import fuzz_config, fuzz_identity
from target_wire import fuzz_jws, fuzz_spop

Target = Callable[[bytes], None]

TARGETS: Final[Mapping[str, Target]] = {
    "spop": fuzz_spop,
    "jws": fuzz_jws,
    "cookies": fuzz_cookies,
    "redirects": fuzz_redirects,
    "config": fuzz_config,
    "identity": fuzz_identity,
}
"""Target name (``scripts/fuzz TARGET``, ``corpus/TARGET/``) → function."""
