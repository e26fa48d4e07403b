"""Run one fuzz target under atheris (libFuzzer): ``python tests/fuzz/atheris_main.py TARGET [libFuzzer args]``.

``scripts/fuzz`` is the way in (it sets the corpus and crash directories and the limits). idgate, PyYAML and PyJWT
are instrumented for coverage; the target functions themselves live in ``fuzz_targets.py`` and run without atheris
in the default test suite (``test_fuzz_replay.py``).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["idgate", "yaml", "jwt"]):
    import fuzz_targets  # this script's directory is on sys.path


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in fuzz_targets.TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(fuzz_targets.TARGETS)}}} [libFuzzer args]")
    target = fuzz_targets.TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
