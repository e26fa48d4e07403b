"""Fuzz targets for the wire formats: ``spop`` (HAProxy's SPOP frames) and ``jws`` (bearer tokens).

Contracts: see ``fuzz_targets``.
"""

from __future__ import annotations

import base64
from collections.abc import Coroutine
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from fuzz_common import expect, text

from idgate.config import IssuerConfig
from idgate.errors import MessageError, RequestError, SpopError, TokenError
from idgate.facts import canonical_host, canonical_path
from idgate.jwks import VerificationKey
from idgate.principal import MAX_GROUPS, Principal
from idgate.spoe import spop
from idgate.spoe.adapter import MESSAGE, REQUIRED_ARGS, facts_from_args
from idgate.spoe.agent import message_args
from idgate.verifier import TrustedIssuer, Verifier, split_compact_jws

# --- spop -----------------------------------------------------------------------------------------------------------

_STATUSES = frozenset(int(s) for s in spop.Status)
_BIG = 1 << 32


def _spop_error(exc: SpopError) -> None:
    """A refusal the agent can send: a known status and an AGENT-DISCONNECT that encodes (as the agent builds it)."""
    assert exc.status in _STATUSES, exc.status
    message = spop.status_message(exc).encode("utf-8")[:200].decode("utf-8", "ignore")  # as agent.disconnect cuts it
    wire = spop.encode_frame(spop.AgentDisconnect(status_code=spop.Status(exc.status), message=message))
    assert len(wire) - 4 <= spop.MIN_FRAME_SIZE, len(wire)  # the size every peer accepts


def fuzz_spop(data: bytes) -> None:
    try:
        length = spop.frame_length(data[:4], spop.MAX_FRAME_SIZE)
        assert 0 <= length <= spop.MAX_FRAME_SIZE
    except SpopError as exc:
        _spop_error(exc)
    body = data[4:]
    try:
        header, offset = spop.decode_header(body)
    except SpopError as exc:
        _spop_error(exc)
        return
    assert 0 < offset <= len(body)
    if header.type == spop.FrameType.NOTIFY:  # the agent's hot path decodes NOTIFY directly
        try:
            _notify(spop.decode_notify(header, body, offset))
        except SpopError as exc:
            _spop_error(exc)
    try:
        frame = spop.decode_payload(header, body, offset)
    except SpopError as exc:
        _spop_error(exc)
        return
    _round_trip(frame)
    if isinstance(frame, spop.HaproxyHello):
        try:
            answer = spop.negotiate(frame, max_frame_size=spop.MAX_FRAME_SIZE)
        except SpopError as exc:
            _spop_error(exc)
        else:
            assert spop.MIN_FRAME_SIZE <= answer.max_frame_size <= spop.MAX_FRAME_SIZE
            assert answer.version == spop.SPOP_VERSION


def _round_trip(frame: spop.Frame) -> None:
    try:
        wire = spop.encode_frame(frame)
    except ValueError:
        return  # a decoded value our encoder types differently (a negative max-frame-size as UINT32): not a codec bug
    assert spop.decode_wire(wire, max_frame_size=_BIG) == frame, (frame, wire)


def _notify(notify: spop.Notify) -> None:
    expected = {MESSAGE: REQUIRED_ARGS}
    for message in notify.messages:
        try:
            args = message_args(message.name, message.args, expected)
        except MessageError as exc:
            expect(exc.reason, {"duplicate_argument", "unknown_message", "missing_argument"})
            continue
        facts = facts_from_args(args)
        if facts is None:
            continue
        for canonical in (canonical_host, canonical_path):
            try:
                canonical(facts.host if canonical is canonical_host else facts.path)
            except RequestError as exc:
                expect(exc.reason, {"invalid_host", "invalid_path"})


# --- jws ------------------------------------------------------------------------------------------------------------

JWS_ISSUER: Final = "https://idp.fuzz.test"
JWS_AUDIENCE: Final = "https://api.fuzz.test"
_TOKEN_REASONS = frozenset(
    {
        *("invalid_token", "invalid_signature", "expired", "not_yet_valid", "invalid_audience", "invalid_issuer"),
        *("unknown_kid", "alg_not_allowed", "forbidden_header", "unsupported_crit", "invalid_typ"),
        *("invalid_claims", "invalid_claim_type", "token_too_large", "keys_unavailable"),
    }
)
_EC_KEY = ec.generate_private_key(ec.SECP256R1())


class _Keys:
    """A JWKS cache stand-in: kid ``gone`` is unknown, any other kid is this process's EC key."""

    async def get_key(self, kid: str | None) -> VerificationKey:
        if kid == "gone":
            raise TokenError("unknown_kid", "no key")
        return VerificationKey(kid=kid, key=_EC_KEY.public_key(), algorithms=frozenset({"ES256"}))


_VERIFIER = Verifier(
    issuers={
        JWS_ISSUER: TrustedIssuer(
            config=IssuerConfig(
                name="fuzz",
                issuer=JWS_ISSUER,
                discovery=False,
                jwks_uri=JWS_ISSUER + "/jwks",
                audiences=(JWS_AUDIENCE,),
                algorithms=("ES256", "RS256"),
                require_at_jwt_typ=False,
                max_token_bytes=8192,
            ),
            keys=_Keys(),  # type: ignore[arg-type]
        )
    }
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign_es256(header: bytes, payload: bytes) -> str:
    """A compact JWS of the raw JSON bytes, signed with this process's key (so any claims reach PyJWT)."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    r, s = decode_dss_signature(_EC_KEY.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _run(coro: Coroutine[Any, Any, Principal]) -> Principal:
    """Drive a coroutine that never really waits (the key stand-in answers at once)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the verifier waited on something")


def fuzz_jws(data: bytes) -> None:
    if data.startswith(b"{"):
        header, _, payload = data.partition(b"\n")
        token = sign_es256(header, payload)
    else:
        token = text(data)
    try:
        parsed_header, parsed_payload, signature = split_compact_jws(token, max_bytes=8192)
    except TokenError as exc:
        expect(exc.reason, {"token_too_large", "invalid_token"})
    else:
        assert isinstance(parsed_header, dict) and isinstance(parsed_payload, dict)
        assert token.count(".") == 2 and "." not in signature
    try:
        principal = _run(_VERIFIER.verify(token))
    except TokenError as exc:
        expect(exc.reason, _TOKEN_REASONS)
        return
    assert principal.issuer == JWS_ISSUER
    assert isinstance(principal.subject, str) and 0 < len(principal.subject) <= 255
    assert all(isinstance(g, str) and g for g in principal.groups)
    assert len(set(principal.groups)) == len(principal.groups) <= MAX_GROUPS
    assert isinstance(principal.expires_at, float)
