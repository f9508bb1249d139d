"""The few Kubernetes API calls the Events emitter makes, with failures classified.

Credentials: in-cluster (service account) when running in a pod, else ``KUBECONFIG`` (or
~/.kube/config), including the kubeconfig's impersonation (``as``, ``as-groups``).
Requests are raw JSON through the official client's ApiClient (no model round trip),
with short timeouts and no client-side retries: the emitter has its own backoff.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import yaml

if TYPE_CHECKING:  # the client library is imported only when Events are on
    from kubernetes import client as k8s

from roger.core.kube_events import PARTITION_GROUP, PARTITION_PLURAL, PARTITION_VERSION

CONNECT_TIMEOUT: Final = 2.0
READ_TIMEOUT: Final = 5.0


class ApiFailure(Exception):
    """A call that did not succeed; ``cause`` is the dropped-counter label."""

    def __init__(self, cause: str, detail: str, status: int = 0) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause
        self.detail = detail
        self.status = status


def cause_of_status(status: int) -> str:
    if status in (401, 403):
        return "forbidden"
    if status == 404:
        return "not_found"
    if status == 409:
        return "conflict"
    if status == 429:
        return "throttled"
    if status >= 500:
        return "server_error"
    return "rejected"


class EventsApi(Protocol):
    def get_partition(self, namespace: str, name: str) -> dict[str, Any]: ...

    def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]: ...

    def close(self) -> None: ...


def _impersonation(kubeconfig: str | None) -> dict[str, str]:
    """Impersonate-* headers from the current context's user (``as``), if any."""
    path = (kubeconfig or os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep)[0]
    try:
        data = yaml.safe_load(Path(path).expanduser().read_text()) or {}
        context_name = data.get("current-context")
        context = next(c["context"] for c in data.get("contexts", []) if c["name"] == context_name)
        user = next(
            u.get("user") or {} for u in data.get("users", []) if u["name"] == context["user"]
        )
    except (OSError, StopIteration, KeyError, TypeError, AttributeError, yaml.YAMLError):
        return {}
    headers = {}
    if user.get("as"):
        headers["Impersonate-User"] = str(user["as"])
    if user.get("as-uid"):
        headers["Impersonate-Uid"] = str(user["as-uid"])
    groups = user.get("as-groups") or []
    if groups:
        headers["Impersonate-Group"] = ",".join(str(g) for g in groups)
    return headers


def load_configuration(kubeconfig: str | None = None) -> tuple[k8s.Configuration, dict[str, str]]:
    """In-cluster credentials if available, else the kubeconfig; plus impersonation headers."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config

    configuration = k8s.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return configuration, {}
        except k8s_config.ConfigException:
            pass
    k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=kubeconfig, client_configuration=configuration
    )
    return configuration, _impersonation(kubeconfig)


class KubeEventsApi:
    """core/v1 events create/patch and roger.dev partitions get, as JSON dicts."""

    def __init__(
        self,
        configuration: k8s.Configuration,
        headers: dict[str, str] | None = None,
        *,
        timeout: tuple[float, float] = (CONNECT_TIMEOUT, READ_TIMEOUT),
    ) -> None:
        from kubernetes import client as k8s

        configuration.retries = False  # the emitter backs off itself
        self._api = k8s.ApiClient(configuration)
        self._api_exception = k8s.ApiException
        self._api.user_agent = "roger-worker/events"
        for name, value in (headers or {}).items():
            self._api.set_default_header(name, value)  # type: ignore[no-untyped-call]
        self._timeout = timeout

    @classmethod
    def from_environment(cls, kubeconfig: str | None = None) -> KubeEventsApi:
        configuration, headers = load_configuration(kubeconfig)
        return cls(configuration, headers)

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, content_type: str = ""
    ) -> dict[str, Any]:
        import urllib3  # the kubernetes package's HTTP client: here only with [events]

        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        try:
            request = self._api.param_serialize(
                method=method,
                resource_path=path,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
            )
            response = self._api.call_api(*request, _request_timeout=self._timeout)
            data = response.read()  # type: ignore[no-untyped-call]
        except urllib3.exceptions.NewConnectionError as exc:  # (a ConnectTimeoutError too)
            raise ApiFailure("unreachable", str(exc)) from exc
        except (urllib3.exceptions.TimeoutError, TimeoutError) as exc:
            raise ApiFailure("timeout", str(exc)) from exc
        except urllib3.exceptions.MaxRetryError as exc:
            reason = exc.reason
            timed_out = isinstance(reason, urllib3.exceptions.TimeoutError) and not isinstance(
                reason, urllib3.exceptions.NewConnectionError
            )
            raise ApiFailure("timeout" if timed_out else "unreachable", str(reason or exc)) from exc
        except (urllib3.exceptions.HTTPError, OSError, self._api_exception) as exc:
            raise ApiFailure("unreachable", str(exc)) from exc
        status = int(response.status)
        if not 200 <= status <= 299:
            detail = data.decode("utf-8", errors="replace")[:300] if data else ""
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(data).get("message", detail)
            raise ApiFailure(cause_of_status(status), f"HTTP {status}: {detail}", status)
        try:
            result = json.loads(data) if data else {}
        except ValueError:
            result = {}
        return result if isinstance(result, dict) else {}

    def get_partition(self, namespace: str, name: str) -> dict[str, Any]:
        path = (
            f"/apis/{PARTITION_GROUP}/{PARTITION_VERSION}/namespaces/{namespace}"
            f"/{PARTITION_PLURAL}/{name}"
        )
        return self._call("GET", path)

    def create_event(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"/api/v1/namespaces/{namespace}/events", body)

    def patch_event(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._call(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/events/{name}",
            patch,
            "application/merge-patch+json",
        )

    def close(self) -> None:
        self._api.close()  # type: ignore[no-untyped-call]
