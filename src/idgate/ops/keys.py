"""``idgate keys``: generate session and assertion keys, rotate the shared assertion key ring.

    idgate keys generate session --out FILE [--count N] [--rotate]
        N (default 1) random 32-byte AES-GCM keys, base64, one per line: ``sessions.keys_file``. ``--rotate``
        puts one new key first and keeps the file's keys after it (the first seals, every key opens: cookies
        sealed before stay valid); then ``idgate reload`` (or SIGHUP).
    idgate keys generate assertion --out FILE [--algorithm ES256|RS256]
        a PKCS#8 PEM private key: ``assertion.keys_file`` (EC P-256 or RSA 2048).
    idgate keys rotate-assertion --config FILE
        with ``store.kind: redis``: pre-publish a fresh key in the shared ring (sealed with the session keys);
        every replica publishes it within ``assertion.rotation.poll_seconds`` and signs with it from
        ``publish_seconds`` later; the old key stays published for one assertion lifetime after that.

Files are written with mode 0600 through a temporary file in the same directory and an atomic rename; an existing
file is never overwritten without ``--rotate`` / ``--force``. Secrets are never printed: only kids, counts, times.
Exit codes: 0 done, 1 refused (file exists, no shared store, a rotation already pending, Redis unreachable), 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import sys
import time
from dataclasses import replace
from pathlib import Path

from idgate.assertion import generate_pem, pem_kid
from idgate.assertion_ring import RotationPending, advance, rotate
from idgate.assertion_store import RedisAssertionRing, RingError, first_ring, fresh_key
from idgate.config_load import load_config
from idgate.errors import ConfigError
from idgate.sso.cookies import KeyRing
from idgate.store.redis import client_from_config

SESSION_KEY_BYTES = 32


def _fail(message: str, code: int = 1) -> int:
    print(f"idgate keys: {message}", file=sys.stderr)
    return code


def write_secret(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600: a new temporary file (O_EXCL) beside it, then an atomic rename."""
    staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(staging, path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise


def _utc(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def generate_session(args: argparse.Namespace) -> int:
    """``idgate keys generate session``."""
    path = Path(args.out)
    fresh = [base64.b64encode(secrets.token_bytes(SESSION_KEY_BYTES)).decode("ascii") for _ in range(args.count)]
    kept: list[str] = []
    if path.exists():
        if not (args.rotate or args.force):
            return _fail(f"{path} exists: --rotate puts a new key first and keeps these, --force replaces the file")
        if args.rotate:
            try:
                kept = [line for line in path.read_text(encoding="ascii").split() if line]
                KeyRing.from_text(" ".join(kept))
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                return _fail(f"{path} is not a session key file ({type(exc).__name__})")
            fresh = fresh[:1]
    write_secret(path, ("\n".join(fresh + kept) + "\n").encode("ascii"))
    print(f"wrote {path} (mode 0600): {len(fresh)} new key(s) first, {len(kept)} kept after them")
    return 0


def generate_assertion(args: argparse.Namespace) -> int:
    """``idgate keys generate assertion``."""
    path = Path(args.out)
    if path.exists() and not args.force:
        return _fail(f"{path} exists: --force replaces it")
    pem = generate_pem(args.algorithm)
    write_secret(path, pem)
    print(f"wrote {path} (mode 0600): {args.algorithm} key, kid {pem_kid(pem, args.algorithm)}")
    return 0


async def _rotate(config_path: str) -> int:
    config = load_config(config_path)
    section = config.assertion
    if section is None:
        return _fail(f"{config_path} has no assertion section")
    if config.store.kind != "redis" or config.sessions is None or config.sessions.keys is None:
        return _fail(
            "rotate-assertion needs store.kind: redis and session keys (the shared ring). With the memory store the "
            "keys live in assertion.keys_file: put a new key first (idgate keys generate assertion), keep the old "
            "one after it, then idgate reload"
        )
    ring = RedisAssertionRing(
        client=client_from_config(config.store),
        seal=KeyRing.from_text(config.sessions.keys.get_secret_value()),
        prefix=config.store.key_prefix,
        timeout=max(config.store.timeout_seconds, 2.0),
    )
    try:
        for _ in range(5):
            now = time.time()
            found = await ring.read()
            if found is None:
                await ring.create(
                    first_ring(None, section.algorithm, lifetime_seconds=section.lifetime_seconds, now=now)
                )
                continue
            before, state = found
            # a longer assertion lifetime since the ring was made: retire keys after the longer one
            state = replace(state, lifetime_seconds=max(state.lifetime_seconds, section.lifetime_seconds))
            fresh = fresh_key(section.algorithm, created=now)
            try:
                rotated = rotate(state, fresh, now=now, publish_seconds=section.rotation.publish_seconds)
            except RotationPending as exc:
                return _fail(f"a rotation is under way: {exc.kid} signs from {_utc(exc.activate_at)}")
            if await ring.replace(before, rotated):
                current = advance(state, now).current
                activate = now + section.rotation.publish_seconds
                print(f"published next key {fresh.kid} now; it signs from {_utc(activate)}")
                print(
                    f"current key {current.kid} signs until then and stays published until "
                    f"{_utc(activate + section.lifetime_seconds)}"
                )
                return 0
        return _fail("the ring kept changing under this rotation (another rotation at the same time?)")
    except RingError as exc:
        return _fail(f"the key ring cannot be read: {exc}")
    finally:
        await ring.close()


def rotate_assertion(args: argparse.Namespace) -> int:
    """``idgate keys rotate-assertion``."""
    try:
        return asyncio.run(_rotate(args.config))
    except ConfigError as exc:
        return _fail(f"{args.config}: " + "; ".join(exc.problems))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``idgate keys …`` to the command line."""
    keys = sub.add_parser("keys", help="generate keys, rotate the shared assertion key ring").add_subparsers(
        dest="action", required=True
    )
    generate = keys.add_parser("generate", help="write new key files (mode 0600; secrets never printed)")
    kinds = generate.add_subparsers(dest="kind", required=True)
    session = kinds.add_parser("session", help="sessions.keys_file: base64 32-byte AES-GCM keys")
    session.add_argument("--out", required=True, help="the key file to write")
    session.add_argument("--count", type=int, default=1, choices=range(1, 9), metavar="N", help="keys (1-8)")
    session.add_argument("--rotate", action="store_true", help="put one new key first, keep the file's keys")
    session.add_argument("--force", action="store_true", help="replace an existing file")
    session.set_defaults(run=generate_session)
    assertion = kinds.add_parser("assertion", help="assertion.keys_file: a PEM private key")
    assertion.add_argument("--out", required=True, help="the PEM file to write")
    assertion.add_argument("--algorithm", choices=["ES256", "RS256"], default="ES256")
    assertion.add_argument("--force", action="store_true", help="replace an existing file")
    assertion.set_defaults(run=generate_assertion)
    rotation = keys.add_parser("rotate-assertion", help="pre-publish the next assertion key in the shared ring")
    rotation.add_argument("--config", required=True, help="idgate's config (store.kind: redis)")
    rotation.set_defaults(run=rotate_assertion)
