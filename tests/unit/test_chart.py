"""The Helm chart rendered with ``helm template``: RBAC, flags, labels, security, monitoring."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from roger_operator.builders.rbac import LEADER_ELECTION_RULES, OPERATOR_RULES
from roger_operator.cli import parse_args
from tests.chart import (
    CHART,
    CLUSTER_SCOPED,
    KUBE_VERSION,
    ROOT,
    grants,
    helm_bin,
    of_kind,
    render,
)

pytestmark = pytest.mark.unit

STANDARD_LABELS = {
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/component",
    "helm.sh/chart",
}
MONITORING_ON = (
    "monitoring.serviceMonitor.enabled=true",
    "monitoring.prometheusRule.enabled=true",
    "monitoring.dashboards.enabled=true",
)


def test_chart_crds_are_the_top_level_crds_byte_for_byte() -> None:
    top = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert top, "no CRDs in crds/"
    assert chart == top, (
        "charts/roger/files/crds/ differs from crds/: cp crds/*.yaml charts/roger/files/crds/"
    )
    assert not (CHART / "crds").exists(), "Helm would install crds/ once and never upgrade it"


def test_crds_are_templates_kept_on_uninstall_unless_told_otherwise() -> None:
    top = {
        yaml.safe_load(p.read_text())["metadata"]["name"]: yaml.safe_load(p.read_text())
        for p in (ROOT / "crds").glob("*.yaml")
    }
    rendered = of_kind(render(), "CustomResourceDefinition")
    assert {c["metadata"]["name"] for c in rendered} == set(top)
    for crd in rendered:
        source = top[crd["metadata"]["name"]]
        annotations = crd["metadata"].pop("annotations")
        assert annotations == {"helm.sh/resource-policy": "keep"}
        labels = crd["metadata"].pop("labels")
        assert source["metadata"].pop("labels").items() <= labels.items()
        assert labels["app.kubernetes.io/component"] == "crds"
        assert crd == source  # the files, otherwise unchanged
    assert not of_kind(render("crds.install=false"), "CustomResourceDefinition")
    unkept = of_kind(render("crds.keep=false"), "CustomResourceDefinition")
    assert unkept and all("annotations" not in c["metadata"] for c in unkept)


def test_helm_lint_is_clean() -> None:
    proc = subprocess.run(
        [helm_bin(), "lint", str(CHART), "--strict", "--kube-version", KUBE_VERSION],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


def operator_roles(docs: list[dict]) -> list[dict]:
    """The operator's ClusterRoles (not the tenants' aggregated roles)."""
    return [
        r
        for r in of_kind(docs, "ClusterRole")
        if r["metadata"]["labels"]["app.kubernetes.io/component"] != "tenant-rbac"
    ]


def test_cluster_role_covers_exactly_the_operator_rules() -> None:
    docs = render()
    roles = operator_roles(docs)
    have = set().union(*(grants(r["rules"]) for r in roles))
    need = grants(OPERATOR_RULES)
    assert need <= have, f"missing from the chart's ClusterRoles: {sorted(need - have)}"
    assert have <= need, f"more than OPERATOR_RULES (least privilege): {sorted(have - need)}"
    sa = of_kind(docs, "ServiceAccount")[0]["metadata"]
    bound = {r["metadata"]["name"] for r in roles}
    for binding in of_kind(docs, "ClusterRoleBinding"):
        assert binding["roleRef"]["name"] in bound
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": "roger-system"}
        ]
    assert [r["metadata"]["name"] for r in of_kind(docs, "Role")] == [
        "roger-operator-leader-election"
    ]


def test_watched_namespaces_get_roles_and_only_cluster_scoped_reads_cluster_wide() -> None:
    docs = render("watchNamespaces={team-a,team-b}")
    need = grants(OPERATOR_RULES)
    cluster = set().union(*(grants(r["rules"]) for r in operator_roles(docs)))
    assert {(g, r) for g, r, _ in cluster} <= CLUSTER_SCOPED, "namespaced rights cluster-wide"
    roles = {
        r["metadata"]["namespace"]: r
        for r in of_kind(docs, "Role")
        if not r["metadata"]["name"].endswith("-leader-election")
    }
    assert set(roles) == {"team-a", "team-b"}
    for ns, role in roles.items():
        have = grants(role["rules"]) | cluster
        assert need <= have, (ns, sorted(need - have))
        binding = next(b for b in of_kind(docs, "RoleBinding") if b["metadata"]["namespace"] == ns)
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"][0]["namespace"] == "roger-system"


def _container(docs: list[dict]) -> dict:
    (deployment,) = of_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_operator_flags_are_the_operator_cli_flags() -> None:
    container = _container(render())
    assert container["command"] == ["roger-operator"]
    args = parse_args(container["args"])
    assert args.all_namespaces and not args.namespace
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (args.metrics_port, args.health_port) == (ports["metrics"], ports["health"])

    assert args.log_format == "text"
    assert parse_args(_container(render("operator.logFormat=json"))["args"]).log_format == "json"
    assert args.bound_policy == "queue"  # safe on a shared vhost unless told otherwise
    vhost = parse_args(_container(render("operator.boundPolicy=vhost"))["args"])
    assert vhost.bound_policy == "vhost"

    container = _container(render("watchNamespaces={team-a,team-b}"))
    args = parse_args(container["args"])
    assert args.namespace == ["team-a", "team-b"] and not args.all_namespaces


def test_every_resource_has_the_standard_labels() -> None:
    for doc in render(*MONITORING_ON):
        labels = doc["metadata"]["labels"]
        assert labels.keys() >= STANDARD_LABELS, (doc["kind"], STANDARD_LABELS - labels.keys())
        assert labels["app.kubernetes.io/instance"] == "roger"
        assert labels["app.kubernetes.io/part-of"] == "roger"
    (deployment,) = of_kind(render(), "Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (service,) = of_kind(render(), "Service")
    assert service["spec"]["selector"] == selector


def test_pod_meets_the_restricted_pod_security_profile() -> None:
    (deployment,) = of_kind(render(), "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key)
    assert all("hostPath" not in v for v in pod.get("volumes", []))
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert not sc["capabilities"].get("add")
        assert not sc.get("privileged")
        assert sc["readOnlyRootFilesystem"] is True
        assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
        assert c["livenessProbe"] and c["readinessProbe"]


def test_monitoring_is_off_unless_enabled() -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}
    docs = render(*MONITORING_ON, "monitoring.serviceMonitor.labels.release=kps")
    (sm,) = of_kind(docs, "ServiceMonitor")
    (pm,) = of_kind(docs, "PodMonitor")
    (service,) = of_kind(docs, "Service")
    assert sm["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert sm["metadata"]["labels"]["release"] == "kps"
    # The operator's worker pods: labels and port name from its manifest builders.
    from roger_operator.builders import model

    assert pm["spec"]["selector"]["matchLabels"][model.LABEL_NAME] == model.WORKER_APP
    assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    pm = of_kind(render(*MONITORING_ON, "watchNamespaces={a}"), "PodMonitor")[0]
    assert pm["spec"]["namespaceSelector"] == {"matchNames": ["a"]}


def test_prometheus_rule_is_the_alert_rules_file() -> None:
    (rule,) = of_kind(render(*MONITORING_ON), "PrometheusRule")
    source = yaml.safe_load((CHART / "rules" / "roger-alerts.yaml").read_text())
    assert rule["spec"] == source


def test_dashboards_become_sidecar_config_maps() -> None:
    maps = of_kind(render(*MONITORING_ON), "ConfigMap")
    files = {p.name: p.read_text() for p in (CHART / "dashboards").glob("*.json")}
    data = {}
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        data.update(cm["data"])
    assert data.keys() == files.keys()
    for name, text in files.items():
        assert json.loads(data[name]) == json.loads(text)
    (cm, *_) = of_kind(
        render(*MONITORING_ON, "monitoring.dashboards.namespace=grafana"), "ConfigMap"
    )
    assert cm["metadata"]["namespace"] == "grafana"


@pytest.mark.parametrize(
    "bad",
    [
        "monitoring.serviceMonitor.enabld=true",
        "watchNamespaces={Not_A_Namespace}",
        "operator.metricsPort=0",
        "image.pullPolicy=Sometimes",
        "operator.boundPolicy=exchange",
    ],
)
def test_values_schema_rejects_mistakes(bad: str) -> None:
    with pytest.raises(AssertionError, match="schema"):
        render(bad)


def test_two_replicas_elect_a_leader_on_a_lease_and_keep_a_standby_through_drains() -> None:
    docs = render()
    (deployment,) = of_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    container = _container(docs)
    args = parse_args(container["args"])
    assert args.leader_election and args.lease_duration == 8
    assert args.leader_election_namespace == "roger-system"
    assert args.leader_election_name == "roger-operator"
    assert {e["name"] for e in container["env"]} >= {"POD_NAME", "POD_NAMESPACE"}
    # The Lease: a Role in the release namespace with exactly what the elector uses.
    (role,) = of_kind(docs, "Role")
    assert role["metadata"]["namespace"] == "roger-system"
    assert grants(role["rules"]) == grants(LEADER_ELECTION_RULES)
    (binding,) = of_kind(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == of_kind(docs, "ServiceAccount")[0]["metadata"]["name"]
    (pdb,) = of_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]

    single = render("replicas=1", "leaderElection.enabled=false")
    assert not of_kind(single, "PodDisruptionBudget") and not of_kind(single, "Role")
    (deployment,) = of_kind(single, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert not parse_args(_container(single)["args"]).leader_election
    with pytest.raises(AssertionError, match=r"needs leaderElection\.enabled"):
        render("leaderElection.enabled=false")


def test_tenant_roles_aggregate_into_edit_admin_and_view() -> None:
    roles = {r["metadata"]["name"]: r for r in of_kind(render(), "ClusterRole")}
    edit, view = roles["roger-edit"], roles["roger-view"]
    for role, to in ((edit, {"edit", "admin"}), (view, {"view"})):
        labels = role["metadata"]["labels"]
        aggregated = {
            k.rsplit("aggregate-to-", 1)[1]
            for k, v in labels.items()
            if k.startswith("rbac.authorization.k8s.io/aggregate-to-") and v == "true"
        }
        assert aggregated == to
    can_edit = grants(edit["rules"])
    for resource in ("partitions", "callbacks"):
        for verb in ("create", "update", "patch", "delete", "get", "list", "watch"):
            assert ("roger.dev", resource, verb) in can_edit
    assert ("roger.dev", "partitions/scale", "update") in can_edit
    status_verbs = {verb for _, resource, verb in can_edit if resource == "partitions/status"}
    assert status_verbs == {"get", "list", "watch"}, "status is the operator's: never written"
    assert {verb for _, _, verb in grants(view["rules"])} == {"get", "list", "watch"}
    assert all(g[0] == "roger.dev" for g in can_edit | grants(view["rules"])), "roger.dev only"
    names = {
        r["metadata"]["name"]
        for r in of_kind(render("rbac.tenantRoles.namePrefix=t1"), "ClusterRole")
    }
    assert {"t1-edit", "t1-view"} <= names
    assert not {
        r["metadata"]["name"]
        for r in of_kind(render("rbac.tenantRoles.create=false"), "ClusterRole")
    } & {"roger-edit", "roger-view"}
