"""Replay every fuzz corpus file through every fuzz target, without atheris (the default suite's share of fuzzing).

Each file of ``tests/fuzz/corpus/*/`` goes through every target of ``fuzz_targets.TARGETS`` (an SPOP frame through
the config loader is hostile input too). A target raises only when its contract is broken, so any exception here
is a bug, or a corpus file recording one that came back. The last tests check that the targets can fail at all.
"""

from __future__ import annotations

import re
from pathlib import Path

import fuzz_targets
import pytest
import target_browser
import target_values
import target_wire

CORPUS = Path(__file__).resolve().parent / "corpus"
FILES = sorted(path for path in CORPUS.glob("*/*") if path.is_file())
MAX_CORPUS_BYTES = 2 * 1024 * 1024


@pytest.mark.parametrize("target", sorted(fuzz_targets.TARGETS))
def test_every_corpus_file_keeps_the_contract(target: str) -> None:
    run = fuzz_targets.TARGETS[target]
    failures = []
    for path in FILES:
        try:
            run(path.read_bytes())
        except Exception as exc:  # any exception is a broken contract: collect them all, then fail once
            failures.append(f"{path.relative_to(CORPUS)}: {type(exc).__name__}: {str(exc)[:300]}")
    assert not failures, f"{len(failures)} corpus file(s) break the {target} contract:\n" + "\n".join(failures)


def test_every_target_has_a_seed_corpus_and_the_corpus_stays_small() -> None:
    folders = {path.name for path in CORPUS.iterdir() if path.is_dir()}
    assert folders == set(fuzz_targets.TARGETS)
    for folder in folders:
        assert len(list((CORPUS / folder).glob("seed-*"))) >= 5, folder
    assert sum(path.stat().st_size for path in FILES) < MAX_CORPUS_BYTES


def test_the_replay_reads_real_inputs() -> None:
    """The recorded HAProxy frames and the shipped configs are in the corpus and decode without refusal."""
    hello = (CORPUS / "spop" / "seed-recorded-haproxy-2.8-hello").read_bytes()
    assert hello == (CORPUS.parents[1] / "data" / "spop" / "haproxy-2.8-hello.bin").read_bytes()
    assert target_browser.COOKIE_JAR.decode((CORPUS / "cookies" / "seed-three-chunks").read_text())[1] is None


# --- the targets can fail: each one, given a broken implementation, raises --------------------------------------


def _raises(name: str, data: bytes) -> None:
    with pytest.raises(Exception):  # noqa: PT011, B017 - any exception means the target noticed
        fuzz_targets.TARGETS[name](data)


def test_redirects_target_catches_an_open_redirect(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(target_browser, "safe_return_to", lambda value, **_: "//evil.example")
    _raises("redirects", b"/x")
    monkeypatch.setattr(target_browser, "safe_return_to", lambda value, **_: "https://evil.example/")
    _raises("redirects", b"/x")


def test_identity_target_catches_a_header_split_and_a_forged_role(monkeypatch: pytest.MonkeyPatch) -> None:
    data = b"alice\xffa@x\xffAlice\xffsub\xffiss\xffviewers,admin\xffstaff"
    fuzz_targets.TARGETS["identity"](data)
    monkeypatch.setattr("idgate.identity._CONTROL", re.compile(r"\x00"))  # a group with LF would be kept
    _raises("identity", b"u\xff\xff\xff\xff\xffa\nb")
    monkeypatch.undo()
    monkeypatch.setattr("idgate.identity.percent_encode", lambda value: value)
    _raises("identity", b"u\xff\xff\xff\xff\xffcaf\xc3\xa9")


def test_spop_target_catches_a_foreign_exception_and_a_bad_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    hello = (CORPUS / "spop" / "seed-recorded-haproxy-2.8-hello").read_bytes()
    fuzz_targets.TARGETS["spop"](hello)
    monkeypatch.setattr(target_wire.spop, "negotiate", lambda *_, **__: int("²"))
    _raises("spop", hello)
    monkeypatch.undo()
    monkeypatch.setattr(target_wire.spop, "encode_frame", lambda frame: b"\x00\x00\x00\x05\x03\x00\x00\x00\x01")
    _raises("spop", hello)


def test_jws_cookies_and_config_targets_catch_foreign_exceptions(monkeypatch: pytest.MonkeyPatch) -> None:
    def overflow(*_: object, **__: object) -> None:
        raise OverflowError("int too large to convert to float")

    monkeypatch.setattr(target_wire, "split_compact_jws", overflow)
    _raises("jws", b"a.b.c")
    monkeypatch.setattr(target_browser, "without_cookies", overflow)
    _raises("cookies", b"__Host-idgate_0=x")
    monkeypatch.setattr(target_values, "load_config", overflow)
    _raises("config", b"a: 1\n")
