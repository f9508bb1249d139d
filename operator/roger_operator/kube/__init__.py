"""Kubernetes access for the operator: plain-dict requests, server-side apply, Events."""

from roger_operator.kube.client import Kube, KubeError, resource_path

__all__ = ["Kube", "KubeError", "resource_path"]
