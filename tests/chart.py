"""Render the Helm chart (``helm template``) and read what it holds; shared by chart tests."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "roger"
HELM = ROOT / ".cluster" / "bin" / "helm"
KUBE_VERSION = "1.36.0"  # helm built from Go modules defaults to v1.20 without it


def helm_bin() -> str:
    if not HELM.exists():
        pytest.skip("helm not built: run `make tools`")
    return str(HELM)


def helm(kubeconfig: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run helm against the cluster of ``kubeconfig``; fails the test on any error."""
    proc = subprocess.run(
        [helm_bin(), "--kubeconfig", kubeconfig, *args], capture_output=True, text=True
    )
    assert proc.returncode == 0, f"helm {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc


def render(*sets: str, release: str = "roger", namespace: str = "roger-system") -> list[Any]:
    cmd = [helm_bin(), "template", release, str(CHART), "-n", namespace]
    cmd += ["--kube-version", KUBE_VERSION]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"helm template failed: {proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def of_kind(docs: list[Any], kind: str) -> list[Any]:
    return [d for d in docs if d["kind"] == kind]


Grant = tuple[str, str, str]  # (apiGroup, resource, verb)


def grants(rules: Any) -> set[Grant]:
    out = set()
    for rule in rules:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule.get("verbs", []):
                    out.add((group, resource, verb))
    return out


CLUSTER_SCOPED = {("", "namespaces"), ("apiextensions.k8s.io", "customresourcedefinitions")}
