"""The operator's synchronous client (roger_operator.kube.client) against a real HTTPS
server on loopback: it verifies the server with the kubeconfig's CA, presents its client
certificate, re-reads a rotated token once after a 401, and turns a refused connection
into a ``KubeError`` the handlers already deal with."""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from roger_operator.kube import Kube, KubeError
from roger_operator.kube.credentials import Credentials

pytestmark = pytest.mark.unit


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate valid for 127.0.0.1 and its key (openssl, as `make test` installs)."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


class ApiServer:
    """Answers JSON; 401 to any token but ``valid``; records who called."""

    def __init__(self, directory: Path) -> None:
        self.cert, key = self_signed(directory, "server")
        self.client_cert, self.client_key = self_signed(directory, "client")
        self.calls: list[dict[str, Any]] = []
        seen = self.calls

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._answer()

            def do_PATCH(self) -> None:
                self._answer()

            def _answer(self) -> None:
                size = int(self.headers.get("Content-Length") or 0)
                peer = self.connection.getpeercert()  # type: ignore[attr-defined]
                seen.append({
                    "path": self.path,
                    "token": self.headers.get("Authorization"),
                    "type": self.headers.get("Content-Type"),
                    "body": json.loads(self.rfile.read(size)) if size else None,
                    "client": dict(x[0] for x in peer["subject"])["commonName"] if peer else None,
                })  # fmt: skip
                ok = self.headers.get("Authorization") in (None, "Bearer valid")
                body = json.dumps({"kind": "Thing"} if ok else {"message": "Unauthorized"})
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *_: Any) -> None:
                return

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.client_cert)
        context.load_cert_chain(self.cert, key)
        context.verify_mode = ssl.CERT_OPTIONAL
        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.http.socket = context.wrap_socket(self.http.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    server = ApiServer(tmp_path)
    yield server
    server.http.shutdown()
    server.http.server_close()


def test_the_server_is_verified_and_the_client_certificate_presented(api: ApiServer) -> None:
    pem = {p: p.read_text() for p in (api.cert, api.client_cert, api.client_key)}
    kube = Kube(
        Credentials(
            server=api.url,
            ca_pem=pem[api.cert],
            cert_pem=pem[api.client_cert],
            key_pem=pem[api.client_key],
        )
    )
    assert kube.request("PATCH", "/x", query={"force": "true"}, body={"a": 1}) == {"kind": "Thing"}
    assert api.calls == [
        {"path": "/x?force=true", "token": None, "type": "application/json", "body": {"a": 1},
         "client": "client"}
    ]  # fmt: skip
    assert kube.requests == 1


def test_an_unknown_server_certificate_is_refused(api: ApiServer, tmp_path: Path) -> None:
    other, _key = self_signed(tmp_path, "other")
    kube = Kube(Credentials(server=api.url, ca_file=str(other)))
    with pytest.raises(KubeError, match="CERTIFICATE_VERIFY_FAILED") as caught:
        kube.request("GET", "/x")
    assert caught.value.status == 0
    assert api.calls == []


def test_a_rotated_token_is_read_again_once_after_a_401(api: ApiServer, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("expired")
    kube = Kube(Credentials(server=api.url, ca_file=str(api.cert), token_file=str(token)))
    assert kube.login.token() == "expired"  # read, and cached for a minute
    token.write_text("valid")  # the kubelet rotated it; the client still holds "expired"
    assert kube.get("/x") == {"kind": "Thing"}
    assert [c["token"] for c in api.calls] == ["Bearer expired", "Bearer valid"]
    token.write_text("revoked")
    kube.login.token(fresh=True)
    with pytest.raises(KubeError) as caught:  # still 401 after one fresh read: no loop
        kube.get("/x")
    assert (caught.value.status, caught.value.message) == (401, "Unauthorized")
    assert len(api.calls) == 4


def test_a_static_token_is_never_retried(api: ApiServer) -> None:
    kube = Kube(Credentials(server=api.url, ca_file=str(api.cert), static_token="wrong"))
    with pytest.raises(KubeError, match="401"):
        kube.get("/x")
    assert len(api.calls) == 1


def test_a_refused_connection_is_a_kube_error(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        kube = Kube(Credentials(server=f"https://127.0.0.1:{port}"))
        with pytest.raises(KubeError, match="GET /x") as caught:
            kube.request("GET", "/x", timeout=5)
    assert caught.value.status == 0


def test_kubeconfig_data_fields_reach_the_tls_layer(api: ApiServer, tmp_path: Path) -> None:
    """The whole kubeconfig path: base64 data fields -> PEM -> a verified mutual TLS call."""
    from roger_operator.kube import credentials

    def b64(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode()

    config = tmp_path / "config"
    config.write_text(json.dumps({
        "current-context": "c",
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {
            "server": api.url, "certificate-authority-data": b64(api.cert)}}],
        "users": [{"name": "u", "user": {
            "client-certificate-data": b64(api.client_cert),
            "client-key-data": b64(api.client_key)}}],
    }))  # fmt: skip
    kube = Kube(credentials.load({"KUBECONFIG": str(config)}))
    assert kube.get("/x") == {"kind": "Thing"}
    assert api.calls[0]["client"] == "client"
