"""config/idgate.example.yaml shows every key of the schema (idgate.config), and no key the schema does not have.

A key counts as shown when it appears as ``key:`` (or ``key_env:`` / ``key_file:`` for a secret) in the section of
its top-level key — written, or commented out where it cannot be set in a file that must load as it is (browser
login needs a client secret; exclusive choices). Keys the example does write must exist in the schema.
"""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr

from idgate.config import Config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "idgate.example.yaml"
Path_ = tuple[str, ...]


def _models(annotation: Any) -> tuple[type[BaseModel] | None, str]:
    """The model inside a field's annotation and how it nests: '' (directly), '[]' (a list), '*' (a mapping)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            found = _models(arg)
            if found[0] is not None:
                return found
        return None, ""
    if origin is tuple and args and isinstance(args[0], type) and issubclass(args[0], BaseModel):
        return args[0], "[]"
    if origin is dict and isinstance(args[1], type) and issubclass(args[1], BaseModel):
        return args[1], "*"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, ""
    return None, ""


def schema_paths(model: type[BaseModel], prefix: Path_ = ()) -> dict[Path_, bool]:
    """Every key path of the schema → whether it holds a secret (written ``X_env`` / ``X_file``)."""
    paths: dict[Path_, bool] = {}
    for name, field in model.model_fields.items():
        path = (*prefix, name)
        paths[path] = field.annotation in (SecretStr, SecretStr | None)
        inner, nesting = _models(field.annotation)
        if inner is not None:
            paths |= schema_paths(inner, (*path, *([nesting] if nesting else [])))
    return paths


def written_paths(node: object, prefix: Path_ = ()) -> set[Path_]:
    """Key paths of the parsed example; list items are ``[]``, the names of role_sets and upstreams ``*``."""
    found: set[Path_] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            step = "*" if prefix in (("role_sets",), ("upstreams",)) else str(key)
            if prefix and prefix[-1] in ("from_groups",):
                continue  # group names
            found.add((*prefix, step))
            found |= written_paths(value, (*prefix, step))
    elif isinstance(node, list):
        for item in node:
            found |= written_paths(item, (*prefix, "[]"))
    return found


def sections(text: str) -> dict[str, str]:
    """Top-level key → the text of its section (from its line, written or commented, to the next top-level key)."""
    out: dict[str, str] = {}
    current = ""
    for line in text.splitlines():
        match = re.match(r"^(?:# ?)?([a-z_]+):(?:\s|$)", line)
        if match and not line.startswith("#  "):
            current = match[1]
        out[current] = out.get(current, "") + line + "\n"
    return out


def test_the_example_shows_every_key_of_the_schema() -> None:
    text = EXAMPLE.read_text()
    by_section = sections(text)
    missing = []
    for path, secret in schema_paths(Config).items():
        leaf = path[-1]
        names = (f"{leaf}_env", f"{leaf}_file") if secret else (leaf,)
        section = by_section.get(path[0], "")
        if not any(re.search(rf"(?:^|[\s{{,#-]){re.escape(n)}:", section, re.MULTILINE) for n in names):
            missing.append(".".join(path))
    assert missing == []


def test_every_key_the_example_writes_is_in_the_schema() -> None:
    schema = schema_paths(Config)
    allowed = {p[:n] for p in schema for n in range(1, len(p) + 1)} | {
        (*p[:-1], f"{p[-1]}_{s}") for p, secret in schema.items() if secret for s in ("env", "file")
    }
    unknown = sorted(".".join(p) for p in written_paths(yaml.safe_load(EXAMPLE.read_text())) - allowed)
    assert unknown == []


def test_the_walk_sees_nested_models() -> None:
    paths = schema_paths(Config)
    assert ("issuers", "[]", "claims", "sources") in paths
    assert ("role_sets", "*", "default") in paths
    assert paths[("sessions", "keys")] is True
    assert ("login", "scopes") in paths
