"""A small synchronous Kubernetes client: urllib3 connection pools and plain dicts.

Not the official ``kubernetes`` package: the operator needs a dozen verbs on plain JSON,
and that package costs 12 MiB of RSS once imported (kopf imports it whenever it is
installed). Credentials come from ``kube.credentials`` (the same login kopf's session uses).
Objects are plain dicts. Children are written with server-side apply (field manager
``roger-operator``, ``force=true``) so the operator owns exactly the fields it sets and a
drifted field is taken back on the next apply.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from typing import Any, Final

import urllib3

from roger_operator import metrics
from roger_operator.builders.model import GROUP, MANAGER, PLURAL, VERSION
from roger_operator.kube import credentials

APPLY_CONTENT_TYPE: Final = "application/apply-patch+yaml"
MERGE_CONTENT_TYPE: Final = "application/merge-patch+json"

# Retried: a connection that fails before the request is sent, and a read that fails on
# an idempotent method (urllib3's default set: GET, PUT, DELETE; never POST or PATCH, as the
# official client does). Answers, even 5xx, go to the caller.
_CONNECT_RETRIES: Final = urllib3.Retry(total=2, connect=2, read=2, status=0, other=0, redirect=0)

_PLURALS: Final = {
    "ConfigMap": "configmaps",
    "Service": "services",
    "ServiceAccount": "serviceaccounts",
    "Secret": "secrets",
    "Pod": "pods",
    "Event": "events",
    "Deployment": "deployments",
    "ReplicaSet": "replicasets",
    "Role": "roles",
    "RoleBinding": "rolebindings",
    "Partition": "partitions",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "Callback": "callbacks",
    "Schedule": "schedules",
    "ScaledObject": "scaledobjects",  # keda.sh (spec.autoscaling.engine keda)
    "TriggerAuthentication": "triggerauthentications",
}


class KubeError(Exception):
    def __init__(self, status: int, reason: str, body: str = "") -> None:
        self.status = status
        self.reason = reason
        self.body = body
        message = reason
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(body).get("message") or reason
        super().__init__(f"{status} {message}")
        self.message = message


def resource_path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    path = f"{base}/namespaces/{namespace}/{_PLURALS[kind]}"
    return f"{path}/{name}" if name else path


def micro_time(at: float | None = None) -> str:
    """A Kubernetes MicroTime (RFC 3339, microseconds, UTC) of ``at`` (default: now)."""
    moment = datetime.datetime.fromtimestamp(time.time() if at is None else at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def partition_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


class Kube:
    """Thread-safe: handlers run in kopf's thread pool and share one connection pool."""

    def __init__(self, login: credentials.Credentials | None = None, pool_size: int = 32) -> None:
        self.login = credentials.load() if login is None else login
        pool: dict[str, Any] = {"maxsize": pool_size, "ssl_context": self.login.ssl_context()}
        self._http: urllib3.PoolManager = (
            urllib3.ProxyManager(self.login.proxy_url, **pool)
            if self.login.proxy_url
            else urllib3.PoolManager(**pool)
        )
        self._lock = threading.Lock()
        self.requests = 0

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> Any:
        """One call; the decoded JSON answer (None if empty), or ``KubeError``.

        Connection failures are retried twice (``_CONNECT_RETRIES``); a 401 is retried once
        with the token file read again (a rotated service account token)."""
        url = self.login.server + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        for fresh in (False, True):
            headers = {
                "Accept": "application/json",
                "Content-Type": content_type,
                **self.login.headers(fresh=fresh),
            }
            with self._lock:
                self.requests += 1
            metrics.API_REQUESTS.labels(method).inc()
            try:
                response = self._http.request(
                    method,
                    url,
                    body=data,
                    headers=headers,
                    timeout=urllib3.Timeout(total=timeout),
                    retries=_CONNECT_RETRIES,
                )
            except urllib3.exceptions.HTTPError as exc:
                raise KubeError(0, f"{method} {path}: {exc}") from None
            if response.status != 401 or fresh or self.login.token_file is None:
                break
        answer = response.data or b""
        if response.status >= 400:
            raise KubeError(response.status, str(response.reason), answer.decode(errors="replace"))
        return json.loads(answer) if answer else None

    def get(self, path: str) -> Any:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    def apply(self, manifest: Mapping[str, Any]) -> Any:
        """Server-side apply of one namespaced object; returns the live object."""
        meta = manifest["metadata"]
        path = resource_path(manifest["apiVersion"], manifest["kind"], meta["namespace"])
        return self.request(
            "PATCH",
            f"{path}/{meta['name']}",
            query={"fieldManager": MANAGER, "force": "true"},
            body=manifest,
            content_type=APPLY_CONTENT_TYPE,
        )

    def delete(self, path: str, propagation: str = "Background", uid: str | None = None) -> bool:
        """Delete; False when it is gone already or (``uid`` given) is another object now."""
        body: dict[str, Any] = {"propagationPolicy": propagation}
        if uid is not None:
            body["preconditions"] = {"uid": uid}
        try:
            self.request("DELETE", path, body=body)
            return True
        except KubeError as exc:
            if exc.status == 404 or (uid is not None and exc.status == 409):
                return False
            raise

    def patch_partition_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> Any:
        """Replace the status wholesale (merge patch; lists are replaced)."""
        return self.request(
            "PATCH",
            f"{partition_path(namespace, name)}/status",
            body={"status": status},
            content_type=MERGE_CONTENT_TYPE,
        )

    def event(
        self,
        involved: Mapping[str, Any],
        *,
        reason: str,
        message: str,
        type_: str = "Normal",
        action: str = "Reconcile",
    ) -> str | None:
        """An events.k8s.io/v1 Event regarding ``involved`` (best effort); its name."""
        meta = involved.get("metadata") or {}
        namespace = meta.get("namespace") or "default"
        now = micro_time()
        body = {
            "apiVersion": "events.k8s.io/v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta.get('name', 'roger')}.{uuid.uuid4().hex[:12]}",
                "namespace": namespace,
            },
            "eventTime": now,
            "reportingController": f"{GROUP}/operator",
            "reportingInstance": MANAGER,
            "action": action,
            "reason": reason,
            "note": message[:1024],
            "type": type_,
            "regarding": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
        }
        with contextlib.suppress(KubeError):
            self.request("POST", f"/apis/events.k8s.io/v1/namespaces/{namespace}/events", body=body)
            return str(body["metadata"]["name"])  # type: ignore[index]
        return None

    def event_again(self, namespace: str, name: str, count: int, message: str) -> bool:
        """Fold one more occurrence into an Event (its ``series``); False if it is gone."""
        now = micro_time()
        body = {"series": {"count": count, "lastObservedTime": now}, "note": message[:1024]}
        try:
            self.request(
                "PATCH",
                f"/apis/events.k8s.io/v1/namespaces/{namespace}/events/{name}",
                body=body,
                content_type=MERGE_CONTENT_TYPE,
            )
        except KubeError:
            return False
        return True

    def scale_partition(self, namespace: str, name: str, replicas: int) -> Any:
        """Set spec.worker.replicas through the scale subresource (as an HPA would)."""
        return self.request(
            "PATCH",
            f"{partition_path(namespace, name)}/scale",
            body={"spec": {"replicas": replicas}},
            content_type=MERGE_CONTENT_TYPE,
        )

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        found = self.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods", query={"labelSelector": selector}
        )
        return list((found or {}).get("items") or ())

    def annotate(self, path: str, annotations: Mapping[str, str | None]) -> Any:
        """Merge annotations into an object (None removes one)."""
        return self.request(
            "PATCH",
            path,
            body={"metadata": {"annotations": dict(annotations)}},
            content_type=MERGE_CONTENT_TYPE,
        )

    def patch_status_field(self, path: str, field: str, value: Any) -> Any:
        """Merge one field of an object's status (None removes it)."""
        return self.request(
            "PATCH",
            f"{path}/status",
            body={"status": {field: value}},
            content_type=MERGE_CONTENT_TYPE,
        )
