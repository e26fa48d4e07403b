"""The configuration's files as text: the YAML file itself and the files it names (secrets, keys, CA bundles).

- :func:`read_text` reads a regular file of at most :data:`MAX_FILE_BYTES` that is UTF-8 text (a leading BOM is
  dropped) without control characters other than tab, CR and LF. A directory, a device or FIFO (``/dev/zero``
  would never end), a binary file (DER, a NUL byte) or another encoding is a problem, never a traceback.
- :func:`load_yaml` parses YAML 1.1 with PyYAML's safe loader, and also reports every key that appears twice in one
  mapping, with both line numbers: PyYAML keeps the last one silently, so one appended ``dev_mode: true`` line would
  win over the reviewed one (YAML 1.2.2 §3.2.1.1: mapping keys are unique). Merge keys (``<<: *base``) may still be
  overridden; that is what they are for.
"""

from __future__ import annotations

import os
import re
import stat
from typing import Any

import yaml

from idgate.errors import ConfigError

MAX_FILE_BYTES = 1024 * 1024
"""Largest file read (bytes): a config, a secret, a PEM key file or a CA bundle (Mozilla's is ~220 KB)."""

_CONTROL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MERGE_TAG = "tag:yaml.org,2002:merge"


def read_text(path: str | os.PathLike[str], *, max_bytes: int = MAX_FILE_BYTES) -> str:
    """The text of the regular file at ``path``.

    Raises:
        ConfigError: with one problem naming ``path``: missing or unreadable, a NUL in the name, a directory, not a
            regular file, larger than ``max_bytes``, not UTF-8, or binary (a control character other than tab, CR
            and LF).
    """
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise ConfigError([f"{path} is a directory, not a file"])
        if not stat.S_ISREG(mode):
            raise ConfigError([f"{path} is not a regular file"])
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror or exc}"]) from None
    except ValueError:  # a NUL in the name (found by the config fuzz target): never a traceback
        raise ConfigError([f"{str(path)!r} is not a usable file name (NUL byte)"]) from None
    if len(data) > max_bytes:
        raise ConfigError([f"{path} is larger than {max_bytes} bytes"])
    control = _CONTROL.search(data)  # UTF-8 never uses bytes below 0x80 inside a multi-byte character
    if control is not None:
        raise ConfigError([f"{path} is binary, not text (control character 0x{control.group()[0]:02x})"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})"]) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that notes every duplicate mapping key (one loader per document: no shared state)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[int, str]] = []

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[object, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first_line.get(key)
            except TypeError:  # an unhashable key: the base constructor reports it
                continue
            line = key_node.start_mark.line + 1
            if seen is None:
                first_line[key] = line
            else:
                self.duplicates.append(
                    (
                        line,
                        f"line {line}: duplicate key {key!r} (first at line {seen}); YAML keeps only the last one, "
                        "so remove one of them",
                    )
                )
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> tuple[object, tuple[str, ...]]:
    """``(document, duplicate-key problems in line order)`` of one YAML document (None when empty).

    Raises:
        yaml.YAMLError: the text is not YAML (syntax, an unhashable key, more than one document).
    """
    loader = _UniqueKeyLoader(text)
    try:
        document = loader.get_single_data()
    finally:
        loader.dispose()
    return document, tuple(problem for _, problem in sorted(loader.duplicates))
