"""Where the operator's credentials come from (roger_operator.kube.credentials): a Pod's
service account or a kubeconfig, as kubectl reads it; what it cannot use is refused by name."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from roger_operator.kube import credentials
from roger_operator.kube.credentials import Credentials, LoginError

pytestmark = pytest.mark.unit


def write_kubeconfig(path: Path, *, user: dict[str, object], cluster: dict[str, object]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "here",
                "contexts": [{"name": "here", "context": {"cluster": "c", "user": "u"}}],
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
            }
        )
    )
    return path


def test_in_a_pod_the_service_account_and_the_service_address_are_used(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("t0ken\n")
    (tmp_path / "ca.crt").write_text("pem")
    (tmp_path / "namespace").write_text("roger-system")
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    found = credentials.in_cluster(env, tmp_path)
    assert found is not None
    assert found.server == "https://10.96.0.1:443"
    assert (found.ca_file, found.token(), found.default_namespace) == (
        str(tmp_path / "ca.crt"),
        "t0ken",
        "roger-system",
    )
    v6 = credentials.in_cluster({**env, "KUBERNETES_SERVICE_HOST": "fd00::1"}, tmp_path)
    assert v6 is not None and v6.server == "https://[fd00::1]:443"


def test_outside_a_pod_there_is_no_in_cluster_login(tmp_path: Path) -> None:
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    assert credentials.in_cluster(env, tmp_path) is None  # no token mounted
    (tmp_path / "token").write_text("t")
    assert credentials.in_cluster({}, tmp_path) is None  # no service address


def test_the_token_file_is_read_again_after_a_minute_or_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = tmp_path / "token"
    token.write_text("one")
    login = Credentials(server="https://x", token_file=str(token))
    clock = [1000.0]
    monkeypatch.setattr(credentials.time, "monotonic", lambda: clock[0])
    assert login.headers() == {"Authorization": "Bearer one"}
    token.write_text("two")
    assert login.token() == "one"  # cached: not a file read per request
    assert login.token(fresh=True) == "two"  # after a 401
    token.write_text("three")
    clock[0] += credentials.TOKEN_RELOAD_SECONDS
    assert login.token() == "three"  # the kubelet rotated it


def test_a_kubeconfig_with_a_token_and_relative_files(tmp_path: Path) -> None:
    config = write_kubeconfig(
        tmp_path / "config",
        cluster={"server": "https://127.0.0.1:6443/", "certificate-authority": "pki/ca.crt"},
        user={"token": "abc"},
    )
    found = credentials.load({"KUBECONFIG": str(config)})
    assert found.server == "https://127.0.0.1:6443"
    assert found.ca_file == str(tmp_path / "pki" / "ca.crt")  # relative to the kubeconfig
    assert found.headers() == {"Authorization": "Bearer abc"}
    assert found.source == "kubeconfig context 'here'"


def test_kubeconfigs_merge_and_the_first_value_wins(tmp_path: Path) -> None:
    first = tmp_path / "a"
    first.write_text(
        yaml.safe_dump(
            {"current-context": "here", "users": [{"name": "u", "user": {"token": "from-first"}}]}
        )
    )
    second = write_kubeconfig(
        tmp_path / "b", cluster={"server": "https://h:1"}, user={"token": "from-second"}
    )
    found = credentials.load({"KUBECONFIG": f"{first}:{second}"})
    assert (found.server, found.token()) == ("https://h:1", "from-first")


def test_certificate_data_is_decoded_to_pem(tmp_path: Path) -> None:
    def b64(text: str) -> str:
        return base64.b64encode(text.encode()).decode()

    config = write_kubeconfig(
        tmp_path / "config",
        cluster={"server": "https://h:1", "certificate-authority-data": b64("CA")},
        user={"client-certificate-data": b64("CERT"), "client-key-data": b64("KEY")},
    )
    found = credentials.load({"KUBECONFIG": str(config)})
    assert (found.ca_pem, found.cert_pem, found.key_pem) == ("CA", "CERT", "KEY")
    assert found.headers() == {}


@pytest.mark.parametrize(
    ("user", "cluster", "named"),
    [
        ({"exec": {"command": "aws"}}, {}, "exec"),
        ({"auth-provider": {"name": "gcp"}}, {}, "auth-provider"),
        ({"username": "admin", "password": "p"}, {}, "username"),
        ({"token": "t"}, {"tls-server-name": "api"}, "tls-server-name"),
    ],
)
def test_what_the_operator_cannot_use_is_refused_by_name(
    tmp_path: Path, user: dict[str, object], cluster: dict[str, object], named: str
) -> None:
    config = write_kubeconfig(
        tmp_path / "config", cluster={"server": "https://h:1", **cluster}, user=user
    )
    with pytest.raises(LoginError, match=f"uses '{named}'"):
        credentials.load({"KUBECONFIG": str(config)})


def test_broken_or_missing_kubeconfigs_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(LoginError, match="no Kubernetes credentials"):
        credentials.load({"HOME": str(tmp_path)})
    with pytest.raises(LoginError, match="cannot read kubeconfig"):
        credentials.load({"KUBECONFIG": str(tmp_path / "absent")})
    (tmp_path / "bad").write_text("{not: yaml")
    with pytest.raises(LoginError, match="cannot read kubeconfig"):
        credentials.load({"KUBECONFIG": str(tmp_path / "bad")})
    (tmp_path / "nocontext").write_text("clusters: []\n")
    with pytest.raises(LoginError, match="no current-context"):
        credentials.load({"KUBECONFIG": str(tmp_path / "nocontext")})
    (tmp_path / "dangling").write_text("current-context: gone\n")
    with pytest.raises(LoginError, match="no context named 'gone'"):
        credentials.load({"KUBECONFIG": str(tmp_path / "dangling")})
