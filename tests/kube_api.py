"""The tests' ``kubectl get ... -o json`` answered by the API server directly.

A kubectl process costs about 0.14 s of CPU (a Go binary starting, its kubeconfig and
discovery cache read), and the tests' polling loops started about 3.5 of them a second:
process accounting during `make test` counted kubectl at a quarter of the 2-core machine.
`Kubectl.run` sends the GETs it understands here (one HTTP request on a shared connection
pool) and everything else to kubectl. What comes back has kubectl's shape: a list is a
``List`` whose items carry ``apiVersion`` and ``kind``; a missing object is exit code 1 and
kubectl's "Error from server (NotFound)" message; ``managedFields`` are left out, as
kubectl leaves them out.
"""

from __future__ import annotations

import functools
import json
import subprocess
from pathlib import Path
from typing import NamedTuple

from roger_operator.kube import credentials
from roger_operator.kube.client import Kube, KubeError


class Resource(NamedTuple):
    api: str  # "/api/v1" or "/apis/<group>/<version>"
    plural: str  # as in the URL
    kind: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return self.api.removeprefix("/api/").removeprefix("/apis/")

    @property
    def qualified(self) -> str:
        """As kubectl names it in errors: ``pods``, ``deployments.apps``."""
        group = self.api_version.rpartition("/")[0]
        return f"{self.plural}.{group}" if group else self.plural


_RESOURCES = (
    Resource("/apis/roger.dev/v1alpha1", "partitions", "Partition"),
    Resource("/apis/roger.dev/v1alpha1", "callbacks", "Callback"),
    Resource("/apis/roger.dev/v1alpha1", "schedules", "Schedule"),
    Resource("/apis/apps/v1", "deployments", "Deployment"),
    Resource("/apis/apps/v1", "replicasets", "ReplicaSet"),
    Resource("/api/v1", "pods", "Pod"),
    Resource("/api/v1", "configmaps", "ConfigMap"),
    Resource("/api/v1", "secrets", "Secret"),
    Resource("/api/v1", "events", "Event"),
    Resource("/apis/events.k8s.io/v1", "events", "Event"),  # "events" is the core one's
    Resource("/api/v1", "namespaces", "Namespace", namespaced=False),
    Resource("/apis/coordination.k8s.io/v1", "leases", "Lease"),
    Resource("/apis/keda.sh/v1alpha1", "triggerauthentications", "TriggerAuthentication"),
    Resource("/apis/keda.sh/v1alpha1", "scaledobjects", "ScaledObject"),
    Resource(
        "/apis/apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        namespaced=False,
    ),
)
# The names kubectl accepts for them that the tests use: qualified, plural, singular (the
# first resource listed keeps a shared one), and short names.
_NAMES: dict[str, Resource] = {}
for _r in _RESOURCES:
    _NAMES[_r.qualified] = _r
    _NAMES.setdefault(_r.plural, _r)
    _NAMES.setdefault(_r.kind.lower(), _r)
_NAMES["crd"] = _NAMES["crds"] = _NAMES["customresourcedefinitions"]
_NAMES["ns"] = _NAMES["namespaces"]
_NAMES["cm"] = _NAMES["configmaps"]
_NAMES["rs"] = _NAMES["replicasets"]
_NAMES["deploy"] = _NAMES["deployments"]


class Get(NamedTuple):
    """One ``kubectl get`` this module answers."""

    resource: Resource
    namespace: str | None  # None: every namespace (-A), or a cluster-scoped resource
    name: str | None
    selector: str | None
    subresource: str | None

    @property
    def path(self) -> str:
        r = self.resource
        base = f"{r.api}/namespaces/{self.namespace}" if self.namespace else r.api
        path = f"{base}/{r.plural}"
        if self.name:
            path += f"/{self.name}"
            if self.subresource:
                path += f"/{self.subresource}"
        return path


def parse(args: tuple[str, ...], default_namespace: str = "default") -> Get | None:
    """``get <resource> [name] [-n ns | -A] [-l selector] [--subresource s] -o json``, or
    None for anything else (kubectl answers that)."""
    if len(args) < 4 or args[0] != "get" or args[-2:] != ("-o", "json"):
        return None
    namespace: str | None = default_namespace
    selector = subresource = None
    positional: list[str] = []
    rest = list(args[1:-2])
    while rest:
        arg = rest.pop(0)
        if arg in ("-n", "--namespace", "-l", "--selector", "--subresource") and rest:
            value = rest.pop(0)
            if arg in ("-n", "--namespace"):
                namespace = value
            elif arg in ("-l", "--selector"):
                selector = value
            else:
                subresource = value
        elif arg in ("-A", "--all-namespaces"):
            namespace = None
        elif arg.startswith("-") or "/" in arg or "," in arg:
            return None  # a flag or a form not answered here
        else:
            positional.append(arg)
    if not 1 <= len(positional) <= 2:
        return None
    resource = _NAMES.get(positional[0])
    name = positional[1] if len(positional) == 2 else None
    if resource is None or (name and selector) or (subresource and not name):
        return None
    if not resource.namespaced:
        namespace = None
    elif name and namespace is None:
        return None  # kubectl refuses a name with -A
    return Get(resource, namespace, name, selector, subresource)


@functools.cache
def _client(kubeconfig: str) -> Kube:
    return Kube(credentials.from_kubeconfig([Path(kubeconfig)]), pool_size=8)


def run(kubeconfig: str, args: tuple[str, ...], get: Get) -> subprocess.CompletedProcess[str]:
    """Answer ``get`` as kubectl would (stdout JSON, or exit code 1 and its error)."""
    query = {"labelSelector": get.selector} if get.selector else None
    try:
        answer = _client(kubeconfig).request("GET", get.path, query=query)
    except KubeError as exc:
        if exc.status == 0:
            raise  # no answer at all: as kubectl, the caller sees a failure
        reason, message = exc.reason, exc.message
        if exc.status == 404:
            reason, message = "NotFound", f'{get.resource.qualified} "{get.name}" not found'
        return subprocess.CompletedProcess(
            ["kubectl", *args], 1, "", f"Error from server ({reason}): {message}\n"
        )
    for obj in [answer, *(answer.get("items") or ())]:
        (obj.get("metadata") or {}).pop("managedFields", None)  # as kubectl shows it
    if get.name is None:
        for item in answer.get("items") or ():
            item.setdefault("apiVersion", get.resource.api_version)
            item.setdefault("kind", get.resource.kind)
        answer = {
            "apiVersion": "v1",
            "items": answer.get("items") or [],
            "kind": "List",
            "metadata": {"resourceVersion": ""},
        }
    return subprocess.CompletedProcess(["kubectl", *args], 0, json.dumps(answer), "")
