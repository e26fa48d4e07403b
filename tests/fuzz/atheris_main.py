#!/usr/bin/env python3
"""Run one fuzz target under atheris (libFuzzer): ``python tests/fuzz/atheris_main.py TARGET [libFuzzer args]``.

``scripts/fuzz`` is the way in (it sets the corpus and crash directories and the limits, and puts the venv's
``python3`` first on PATH: libFuzzer's ``-merge`` re-runs this file as a program, with the target passed on in
``IDGATE_FUZZ_TARGET``). idgate, PyYAML and PyJWT
are instrumented for coverage; the target functions themselves live in ``fuzz_targets.py`` and run without atheris
in the default test suite (``test_fuzz_replay.py``).
"""

from __future__ import annotations

import os
import sys

import atheris

with atheris.instrument_imports(include=["idgate", "yaml", "jwt"]):
    import fuzz_targets  # this script's directory is on sys.path


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] in fuzz_targets.TARGETS:
        os.environ["IDGATE_FUZZ_TARGET"] = args.pop(0)  # libFuzzer's child processes get only the flags
    name = os.environ.get("IDGATE_FUZZ_TARGET", "")
    if name not in fuzz_targets.TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(fuzz_targets.TARGETS)}}} [libFuzzer args]")
    atheris.Setup([sys.argv[0], *args], fuzz_targets.TARGETS[name])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
