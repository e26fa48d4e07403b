"""idgate_devstack.kube_configmap: the Kubernetes ConfigMap generated from the shipped HAProxy files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from idgate_devstack import kube_configmap


def test_configmap_generator_round_trips_awkward_text(tmp_path: Path) -> None:
    for text in ("a\n\tb\n", "a\n\n\n", "no newline", "x\n\n y\n"):
        for name in kube_configmap.FILES:
            (tmp_path / name).write_text(text, encoding="utf-8")
        assert all(v == text for v in yaml.safe_load(kube_configmap.build(tmp_path))["data"].values())
    (tmp_path / "haproxy.cfg").write_text(" leading space\n", encoding="utf-8")
    with pytest.raises(ValueError, match="literal block"):
        kube_configmap.build(tmp_path)


def test_literal_block_keeps_final_newlines_exactly() -> None:
    assert kube_configmap.literal_block("a\nb\n", "  ") == "|\n  a\n  b\n"
    assert kube_configmap.literal_block("a", "  ") == "|-\n  a\n"
    assert kube_configmap.literal_block("a\n\n", "  ") == "|+\n  a\n\n"
    with pytest.raises(ValueError, match="literal block"):
        kube_configmap.literal_block("a\r\nb", "  ")


def test_check_mode_reports_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "haproxy-config.yaml"
    monkeypatch.setattr(kube_configmap, "OUTPUT", stale)
    assert kube_configmap.main(["--check"]) == 1  # missing
    assert kube_configmap.main([]) == 0 and stale.read_text(encoding="utf-8") == kube_configmap.build()
    assert kube_configmap.main(["--check"]) == 0
    stale.write_text(stale.read_text(encoding="utf-8").replace("zero-warning", "zero-warnings"), encoding="utf-8")
    assert kube_configmap.main(["--check"]) == 1
