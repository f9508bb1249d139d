"""Where the operator's API credentials come from: the Pod's service account, or a kubeconfig.

One loader for both of the operator's clients (the synchronous ``Kube`` the handlers use and
kopf's aiohttp session), without the official ``kubernetes`` package: kopf imports that
package whenever it is installed, and it cost 12 MiB of the operator's RSS at start
(65.1 -> 52.9 MiB with every operator module imported; bench/OPERATOR_RESULTS.md).

In a Pod (``KUBERNETES_SERVICE_HOST`` set and a token mounted) the API server is
``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``, verified with the mounted CA;
the token file is read again once a minute (the kubelet rotates projected tokens, as
client-go reloads them) and at once after a 401. Otherwise the kubeconfig in ``KUBECONFIG``
(a list of files, the first value of each entry wins) or ``~/.kube/config``, its current
context; relative file paths are relative to the file that names them, as in kubectl.
Users with a bearer token or a client certificate work; ``exec`` and ``auth-provider``
plugins and basic auth are refused with a ``LoginError`` naming the user, never ignored.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import yaml

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_RELOAD_SECONDS: Final = 60.0


class LoginError(Exception):
    """No usable credentials: the message says what was found and what is missing."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    """How to reach and authenticate to one API server (immutable; the token file is read
    through ``token()``)."""

    server: str
    ca_file: str | None = None
    ca_pem: str | None = None
    insecure: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    cert_pem: str | None = None
    key_pem: str | None = None
    static_token: str | None = None
    token_file: str | None = None
    default_namespace: str | None = None
    proxy_url: str | None = None
    source: str = ""
    _cache: _TokenCache = dataclasses.field(
        default_factory=lambda: _TokenCache(), compare=False, repr=False
    )

    def token(self, *, fresh: bool = False) -> str | None:
        """The bearer token: the static one, or the token file (re-read every minute, or now
        when ``fresh``, e.g. after a 401)."""
        if self.token_file is None:
            return self.static_token
        return self._cache.read(self.token_file, fresh=fresh)

    def headers(self, *, fresh: bool = False) -> dict[str, str]:
        token = self.token(fresh=fresh)
        return {"Authorization": f"Bearer {token}"} if token else {}

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the server with the CA given (or the system's); presents the client
        certificate if there is one."""
        context = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_pem)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        elif self.cert_pem and self.key_pem:
            with _pem_files(self.cert_pem, self.key_pem) as (cert, key):
                context.load_cert_chain(cert, key)
        return context


class _TokenCache:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: str | None = None
        self._read_at = float("-inf")

    def read(self, path: str, *, fresh: bool) -> str | None:
        with self._lock:
            now = time.monotonic()
            if fresh or now - self._read_at >= TOKEN_RELOAD_SECONDS:
                self._token = Path(path).read_text(encoding="utf-8").strip() or None
                self._read_at = now
            return self._token


@contextlib.contextmanager
def _pem_files(cert_pem: str, key_pem: str) -> Iterator[tuple[str, str]]:
    """``ssl`` loads a certificate chain from files only: private temp files, gone after."""
    with (
        tempfile.NamedTemporaryFile("w", suffix=".crt") as cert,
        tempfile.NamedTemporaryFile("w", suffix=".key") as key,
    ):
        cert.write(cert_pem)
        key.write(key_pem)
        cert.flush()
        key.flush()
        yield cert.name, key.name


def load(environ: Mapping[str, str] | None = None) -> Credentials:
    """The service account's credentials in a Pod, else the kubeconfig's."""
    env = os.environ if environ is None else environ
    found = in_cluster(env)
    if found is not None:
        return found
    paths = kubeconfig_paths(env)
    if not paths:
        raise LoginError(
            "no Kubernetes credentials: not in a Pod (KUBERNETES_SERVICE_HOST and a service "
            "account token) and no kubeconfig (KUBECONFIG or ~/.kube/config)"
        )
    return from_kubeconfig(paths)


def in_cluster(
    environ: Mapping[str, str], directory: Path = SERVICE_ACCOUNT_DIR
) -> Credentials | None:
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    token = directory / "token"
    if not host or not port or not token.exists():
        return None
    host = f"[{host}]" if ":" in host else host  # an IPv6 service address
    ca = directory / "ca.crt"
    namespace = directory / "namespace"
    return Credentials(
        server=f"https://{host}:{port}",
        ca_file=str(ca) if ca.exists() else None,
        token_file=str(token),
        default_namespace=namespace.read_text().strip() if namespace.exists() else None,
        source="in-cluster service account",
    )


def kubeconfig_paths(environ: Mapping[str, str]) -> list[Path]:
    listed = environ.get("KUBECONFIG")
    if listed:
        return [Path(p).expanduser() for p in listed.split(os.pathsep) if p.strip()]
    default = Path(environ.get("HOME") or "~").expanduser() / ".kube" / "config"
    return [default] if default.exists() else []


def from_kubeconfig(paths: list[Path]) -> Credentials:
    """The current context's cluster and user, merged over ``paths`` as kubectl does."""
    current: str | None = None
    entries: dict[str, dict[str, tuple[dict[str, Any], Path]]] = {
        "contexts": {},
        "clusters": {},
        "users": {},
    }
    for path in paths:
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise LoginError(f"cannot read kubeconfig {path}: {exc}") from None
        current = current or config.get("current-context")
        for section, found in entries.items():
            singular = section[:-1]
            for item in config.get(section) or ():
                found.setdefault(item["name"], (item.get(singular) or {}, path.parent))
    if not current:
        raise LoginError(f"no current-context in kubeconfig {', '.join(map(str, paths))}")
    context = _entry(entries["contexts"], current, "context")[0]
    cluster, cluster_dir = _entry(entries["clusters"], context.get("cluster"), "cluster")
    user, user_dir = _entry(entries["users"], context.get("user"), "user")
    for unsupported in ("exec", "auth-provider", "username", "tls-server-name"):
        if unsupported in user or unsupported in cluster:
            raise LoginError(
                f"kubeconfig context {current!r} uses {unsupported!r}, which the operator does "
                "not support; give it a bearer token or a client certificate (or run it in "
                "the cluster with its service account)"
            )
    if "server" not in cluster:
        raise LoginError(f"kubeconfig cluster {context.get('cluster')!r} has no server")
    token_file = user.get("tokenFile")
    return Credentials(
        server=str(cluster["server"]).rstrip("/"),
        ca_file=_relative(cluster.get("certificate-authority"), cluster_dir),
        ca_pem=_pem(cluster.get("certificate-authority-data")),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        cert_file=_relative(user.get("client-certificate"), user_dir),
        key_file=_relative(user.get("client-key"), user_dir),
        cert_pem=_pem(user.get("client-certificate-data")),
        key_pem=_pem(user.get("client-key-data")),
        static_token=user.get("token"),
        token_file=_relative(token_file, user_dir),
        default_namespace=context.get("namespace"),
        proxy_url=cluster.get("proxy-url"),
        source=f"kubeconfig context {current!r}",
    )


def _entry(
    found: dict[str, tuple[dict[str, Any], Path]], name: Any, kind: str
) -> tuple[dict[str, Any], Path]:
    if name not in found:
        raise LoginError(f"kubeconfig has no {kind} named {name!r}")
    return found[name]


def _relative(path: str | None, base: Path) -> str | None:
    return None if not path else str((base / Path(path).expanduser()).resolve())


def _pem(data: str | None) -> str | None:
    """kubeconfig's ``*-data`` fields are base64 of PEM."""
    return None if not data else base64.b64decode(data).decode("ascii")
