"""Security and availability rules for the Kubernetes manifests (deploy/kubernetes), both kustomizations rendered:
what checkov's Kubernetes checks encode (written here: checkov would pull ~70 packages and downgrade
``packaging``) — non-root, read-only root filesystem, no privilege escalation, ALL capabilities dropped, seccomp
RuntimeDefault, probes, requests and limits, pinned images, no secrets in the environment, no service-account
token — plus the Services, the PodDisruptionBudget and the NetworkPolicies (only HAProxy's ports reachable).
"""

from __future__ import annotations

import re

import pytest
from kube_manifests import (
    BASE,
    EDGE_LABELS,
    REPO,
    TRIAL,
    Doc,
    admitted_ports,
    by_kind,
    containers,
    one,
    pod_specs,
    pods_labels,
    render,
    selects,
)


@pytest.fixture(scope="module", params=["base", "trial"])
def rendered(request: pytest.FixtureRequest) -> list[Doc]:
    return render(BASE if request.param == "base" else TRIAL)


# ----------------------------------------------------------------------------------------- security rules


def test_pods_run_locked_down(rendered: list[Doc]) -> None:
    for name, spec in pod_specs(rendered):
        pod = spec.get("securityContext", {})
        assert pod.get("runAsNonRoot") is True, name
        assert pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, f"{name}: mounts a service-account token"
        for forbidden in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(forbidden), f"{name}: {forbidden}"
        assert not any("hostPath" in v for v in spec.get("volumes", [])), f"{name}: hostPath volume"
    for name, spec, container in containers(rendered):
        sc = container.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True or spec["securityContext"].get("runAsNonRoot") is True, name
        assert sc.get("runAsUser", 0) >= 10000, f"{name}: a uid above 10000 (shared with no host account)"
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert sc.get("readOnlyRootFilesystem") is True, name
        assert sc.get("privileged") is not True, name
        assert sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc["capabilities"].get("add"), name
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name


def test_resources_requested_and_limited(rendered: list[Doc]) -> None:
    for name, _, container in containers(rendered):
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{name}: {kind}"


def test_images_are_pinned(rendered: list[Doc]) -> None:
    for name, _, container in containers(rendered):
        image = container["image"]
        repository, _, tag = image.partition("@")[0].rpartition(":")
        assert repository and tag and tag != "latest", f"{name}: {image} has no version tag"
        assert container.get("imagePullPolicy") in ("IfNotPresent", "Always"), name


_SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|PRIVATE|(^|_)KEYS?($|_)", re.I)


def test_no_secrets_in_the_environment(rendered: list[Doc]) -> None:
    for name, _, container in containers(rendered):
        assert "envFrom" not in container, f"{name}: envFrom"
        for env in container.get("env", []):
            assert "valueFrom" not in env, f"{name}: {env['name']} from a Secret or ConfigMap: mount a file"
            assert not _SECRET_NAME.search(env["name"]), f"{name}: {env['name']}"
            assert "-----BEGIN" not in env.get("value", "")
        assert "-----BEGIN" not in " ".join(container.get("command", []) + container.get("args", []))
    for doc in rendered:
        assert doc["kind"] != "Secret", "Secrets are created by the operator, never committed"


def test_secrets_are_mounted_files(rendered: list[Doc]) -> None:
    for name, spec in pod_specs(rendered):
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["defaultMode"] & 0o007 == 0, f"{name}: {volume['name']} readable by others"
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
                if "secret" in volume or "configMap" in volume:
                    assert mount.get("readOnly") is True, f"{name}: {mount['name']} must be read-only"


# ----------------------------------------------------------------------------------------- network and availability


def test_services_reach_named_container_ports(rendered: list[Doc]) -> None:
    labels = pods_labels(rendered)
    for service in by_kind(rendered, "Service"):
        selector = service["spec"]["selector"]
        (workload,) = [n for n, pod_labels in labels.items() if selects(selector, pod_labels)]
        pod = next(s for n, s in pod_specs(rendered) if n == workload)
        port_names = {p["name"] for c in pod["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, f"{service['metadata']['name']}: {port['targetPort']}"
    edge = one(rendered, "Service", "idgate-edge")
    assert {p["targetPort"] for p in edge["spec"]["ports"]} == {"https", "http"}, "only HAProxy is exposed"


def test_disruption_budget_covers_the_edge(rendered: list[Doc]) -> None:
    (pdb,) = by_kind(rendered, "PodDisruptionBudget")
    deployment = one(rendered, "Deployment", "idgate-edge")
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] < deployment["spec"]["replicas"]


def test_only_haproxy_ports_are_reachable_in_the_edge_pod(rendered: list[Doc]) -> None:
    (policy,) = [
        p for p in by_kind(rendered, "NetworkPolicy") if selects(p["spec"]["podSelector"]["matchLabels"], EDGE_LABELS)
    ]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    admitted = admitted_ports(policy)
    idgate = one(rendered, "Deployment", "idgate-edge")["spec"]["template"]["spec"]["containers"][1]
    assert 9180 not in admitted and 9181 not in admitted, "idgate's HTTP and SPOA ports: from nowhere"
    assert admitted[8443] == [[]] and admitted[8080] == [[]]
    for metrics in (8404, 9190):
        assert admitted[metrics] and all(sources for sources in admitted[metrics]), "metrics: not from anywhere"
    assert {p["containerPort"] for p in idgate["ports"]} == {9180, 9190}


def test_trial_redis_admits_only_the_edge() -> None:
    docs = render(TRIAL)
    policy = one(docs, "NetworkPolicy", "idgate-redis")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "idgate-redis"}
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": EDGE_LABELS}}]
    assert [p["port"] for p in rule["ports"]] == [6379]
    redis = one(docs, "StatefulSet", "idgate-redis")
    assert redis["spec"]["replicas"] == 1
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container["image"].startswith("redis:7")
    command = " ".join(container["command"])
    assert "requirepass" in command and "--requirepass" not in command, "the password never on a command line"
    assert "TRIALS ONLY" in (TRIAL / "redis.yaml").read_text(encoding="utf-8")
    assert not by_kind(render(BASE), "StatefulSet"), "the base brings no Redis: store.url is external"


def test_uids_match_the_images(rendered: list[Doc]) -> None:
    """idgate runs as the Dockerfile's user (its Secret files are group-readable by that gid through fsGroup)."""
    dockerfile = (REPO / "Dockerfile").read_text(encoding="utf-8")
    uid = re.search(r"useradd .*--uid (\d+)", dockerfile)
    gid = re.search(r"groupadd .*--gid (\d+)", dockerfile)
    assert uid and gid and re.search(rf"^USER {uid[1]}:{gid[1]}$", dockerfile, re.M), "a numeric USER"
    deployment = one(rendered, "Deployment", "idgate-edge")["spec"]["template"]["spec"]
    (idgate,) = [c for c in deployment["containers"] if c["name"] == "idgate"]
    assert (idgate["securityContext"]["runAsUser"], idgate["securityContext"]["runAsGroup"]) == (
        int(uid[1]),
        int(gid[1]),
    )
    assert deployment["securityContext"]["fsGroup"] == int(gid[1])
