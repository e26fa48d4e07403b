"""The Kubernetes manifests (deploy/kubernetes) as the tests see them: each kustomization rendered the way
``kubectl kustomize`` does for the fields this project uses (``namespace``, ``resources``, ``patches`` as strategic
merges of maps), and small accessors for the objects, pods and containers.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
BASE = KUBE / "base"
TRIAL = KUBE / "overlays" / "trial"
EDGE_LABELS = {"app.kubernetes.io/name": "idgate-edge"}
CLUSTER_SCOPED = {"Namespace"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}

Doc = dict[str, Any]


def load_docs(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge for maps (a patch's key replaces or merges into the base's); lists and scalars replace."""
    if isinstance(base, dict) and isinstance(patch, dict):
        result = dict(base)
        for key, value in patch.items():
            result[key] = merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return result
    return copy.deepcopy(patch)


def key(doc: Doc) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def render(directory: Path) -> list[Doc]:
    """The objects ``kubectl kustomize DIRECTORY`` would emit, for the kustomization fields this project uses."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    unsupported = set(kustomization) - {"apiVersion", "kind", "namespace", "resources", "patches"}
    assert not unsupported, f"{directory}: fields this renderer does not implement: {sorted(unsupported)}"
    docs: list[Doc] = []
    for resource in kustomization["resources"]:
        path = (directory / resource).resolve()
        assert path.exists(), f"{directory}: resource {resource} does not exist"
        docs.extend(render(path) if path.is_dir() else load_docs(path))
    for patch in kustomization.get("patches") or []:
        assert set(patch) == {"path"}, "only file patches (strategic merge)"
        (patch_doc,) = load_docs(directory / patch["path"])
        targets = [i for i, d in enumerate(docs) if key(d) == key(patch_doc)]
        assert len(targets) == 1, f"patch {patch['path']} matches {len(targets)} objects"
        docs[targets[0]] = merge(docs[targets[0]], patch_doc)
    keys = [key(d) for d in docs]
    assert len(keys) == len(set(keys)), f"{directory}: an object twice"
    if namespace := kustomization.get("namespace"):
        for doc in docs:
            if doc["kind"] not in CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = namespace
    return docs


def by_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    (doc,) = [d for d in docs if key(d) == (kind, name)]
    return doc


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc]]:
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield doc["metadata"]["name"], doc["spec"]["template"]["spec"]


def containers(docs: list[Doc]) -> Iterator[tuple[str, Doc, Doc]]:
    for name, spec in pod_specs(docs):
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield f"{name}/{container['name']}", spec, container


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBE.rglob("*.yaml") if p.name != "kustomization.yaml")


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pods_labels(docs: list[Doc]) -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["metadata"]["labels"] for d in docs if d["kind"] in WORKLOADS}


def admitted_ports(policy: Doc) -> dict[int, list[Any]]:
    """Port → the ``from`` lists admitting it ([] = from anywhere)."""
    result: dict[int, list[Any]] = {}
    for rule in policy["spec"].get("ingress", []):
        for port in rule.get("ports", []):
            result.setdefault(int(port["port"]), []).append(rule.get("from", []))
    return result
