"""The chart, rendered by the real Helm engine: lint, values schema, the
objects it renders and their RBAC, and the CRD templates."""

from __future__ import annotations

import helm_python as helm
import pytest

from conftest import CHART, GENERATED_CRDS, KUBE_VERSION, NAMESPACE, by_kind, load_yaml_docs, render, strip


def test_lint_is_clean_in_strict_mode():
    report = helm.lint(str(CHART), strict=True, kube_version=f"v{KUBE_VERSION}", namespace=NAMESPACE)
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_default_render():
    objects = render()
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment", "Service"]
        + ["CustomResourceDefinition"] * 3
    )
    for o in objects:
        if o["kind"] not in ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
            assert o["metadata"]["namespace"] == NAMESPACE, o["kind"]


def test_deployment_runs_the_operator():
    (dep,) = by_kind(render(), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "tributary/tributary:0.1.0"  # appVersion when image.tag is empty
    assert c["command"] == ["tributary-operator"]
    assert c["args"][0] == "run"
    assert "--leader-election" in c["args"]
    assert "--lease-name=tributary" in c["args"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["TRIBUTARY_BROKER_IMAGE_REPOSITORY"] == "tributary/tributary"
    assert env["TRIBUTARY_BROKER_IMAGE_TAG"] == "0.1.0"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    selector = dep["spec"]["selector"]["matchLabels"]
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    (svc,) = by_kind(render(), "Service")
    assert svc["spec"]["selector"] == selector
    assert svc["spec"]["ports"][0]["port"] == 8080


def test_values_override_image_and_broker_image():
    objects = render({"image": {"repository": "reg.example/trib", "tag": "1.2.3"},
                      "brokerImage": {"repository": "reg.example/broker", "tag": "9"}})
    (dep,) = by_kind(objects, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == "reg.example/trib:1.2.3"
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert (env["TRIBUTARY_BROKER_IMAGE_REPOSITORY"], env["TRIBUTARY_BROKER_IMAGE_TAG"]) == ("reg.example/broker", "9")


def test_crds_are_kept_and_can_be_disabled():
    crds = by_kind(render(), "CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == [
        "clusters.tributary.dev", "mirrorlinks.tributary.dev", "topics.tributary.dev"]
    for c in crds:
        assert c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert by_kind(render({"crds": {"enabled": False}}), "CustomResourceDefinition") == []


def test_chart_crds_equal_the_generated_ones():
    rendered = {c["metadata"]["name"]: strip(c) for c in by_kind(render(), "CustomResourceDefinition")}
    for path in sorted(GENERATED_CRDS.glob("*.yaml")):
        (generated,) = load_yaml_docs(path)
        name = generated["metadata"]["name"]
        chart = rendered.pop(name)
        assert chart["metadata"]["annotations"].pop("helm.sh/resource-policy") == "keep"
        if not chart["metadata"]["annotations"]:
            del chart["metadata"]["annotations"]
        assert chart == generated, name
    assert rendered == {}, "the chart has CRDs that crds/generated/ lacks"


def _rules(objects):
    out = []
    for kind in ("ClusterRole", "Role"):
        for role in by_kind(objects, kind):
            for rule in role["rules"]:
                out.append((role["metadata"]["name"], rule))
    return out


def test_rbac_is_least_privilege():
    objects = render()
    granted = set()
    for _, rule in _rules(objects):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, res, verb))
    resources = {(g, r) for g, r, _ in granted}
    assert resources == {
        ("tributary.dev", r) for k in ("clusters", "topics", "mirrorlinks") for r in (k, f"{k}/status", f"{k}/finalizers")
    } | {("apps", "statefulsets"), ("", "services"), ("", "configmaps"), ("policy", "poddisruptionbudgets"),
         ("", "pods"), ("events.k8s.io", "events"), ("coordination.k8s.io", "leases")}
    # The operator never writes the spec of what users declare, and never deletes it.
    assert ("tributary.dev", "topics", "delete") not in granted
    assert ("tributary.dev", "topics", "create") not in granted
    assert ("", "pods", "create") not in granted
    assert {v for g, r, v in granted if r.endswith("/finalizers")} == {"update"}
    # Leases: only in the release namespace, and only the operator's own by name.
    (lease_role,) = [o for o in by_kind(objects, "Role") if o["metadata"]["name"].endswith("leader-election")]
    assert lease_role["metadata"]["namespace"] == NAMESPACE
    named = [r for r in lease_role["rules"] if "resourceNames" in r]
    assert named and named[0]["resourceNames"] == ["tributary"]


def test_bindings_point_at_the_service_account():
    objects = render()
    (sa,) = by_kind(objects, "ServiceAccount")
    for kind in ("ClusterRoleBinding", "RoleBinding"):
        for b in by_kind(objects, kind):
            assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}]
            ref_kind = "ClusterRole" if kind == "ClusterRoleBinding" else "Role"
            assert b["roleRef"]["kind"] == ref_kind
            assert any(r["metadata"]["name"] == b["roleRef"]["name"] for r in by_kind(objects, ref_kind))


def test_watch_namespaces_use_roles_only():
    objects = render({"operator": {"watchNamespaces": ["team-a", "team-b"]}})
    assert by_kind(objects, "ClusterRole") == [] and by_kind(objects, "ClusterRoleBinding") == []
    roles = {(r["metadata"]["name"], r["metadata"]["namespace"]) for r in by_kind(objects, "Role")}
    assert roles == {("tributary", "team-a"), ("tributary", "team-b"), ("tributary-leader-election", NAMESPACE)}
    (dep,) = by_kind(objects, "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--namespace=team-b" in args


def test_switches_leave_objects_out():
    objects = render({"operator": {"leaderElection": False}, "rbac": {"create": False},
                      "serviceAccount": {"create": False, "name": "preexisting"},
                      "metrics": {"service": {"enabled": False}}})
    assert sorted(o["kind"] for o in objects) == ["CustomResourceDefinition"] * 3 + ["Deployment"]
    (dep,) = by_kind(objects, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "preexisting"
    assert "--leader-election" not in pod["containers"][0]["args"]


def test_rack_awareness_grants_node_reads_to_broker_pods_only():
    assert not [o for o in render() if "rack" in o["metadata"]["name"]], "nothing without rackAwareness"
    objects = render({"rackAwareness": {"enabled": True, "namespaces": ["team-a", "team-b"]}})
    (role,) = [o for o in by_kind(objects, "ClusterRole") if o["metadata"]["name"].endswith("broker-rack")]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    (binding,) = [o for o in by_kind(objects, "ClusterRoleBinding") if o["metadata"]["name"].endswith("broker-rack")]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "tributary-broker", "namespace": ns} for ns in ("team-a", "team-b")
    ]
    accounts = {(o["metadata"]["name"], o["metadata"]["namespace"]) for o in by_kind(objects, "ServiceAccount")}
    assert {("tributary-broker", "team-a"), ("tributary-broker", "team-b")} <= accounts
    # The operator's own rules stay the same: it never reads nodes.
    assert all("nodes" not in r["resources"] for _, r in _rules(render()))
    (default_ns,) = [o for o in by_kind(render({"rackAwareness": {"enabled": True}}), "ServiceAccount")
                     if o["metadata"]["name"] == "tributary-broker"]
    assert default_ns["metadata"]["namespace"] == NAMESPACE


def test_release_names_shape_the_full_name():
    (dep,) = by_kind(render(name="streaming"), "Deployment")
    assert dep["metadata"]["name"] == "streaming-tributary"
    (dep,) = by_kind(render(name="tributary-prod"), "Deployment")
    assert dep["metadata"]["name"] == "tributary-prod"


@pytest.mark.parametrize("values", [
    {"replicaCount": 2},
    {"operator": {"watchNamespaces": ["a"], "otlpEndpoint": "http://otel:4317"}},
    {"resources": {"requests": {"cpu": 1}}, "tolerations": [{"key": "k", "operator": "Exists"}]},
    {"rackAwareness": {"enabled": True, "namespaces": ["streaming"]}},
])
def test_values_schema_accepts(values):
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values)


@pytest.mark.parametrize("values", [
    {"replicaCount": "two"},
    {"replicaCount": -1},
    {"unknownKey": True},
    {"image": {"pullPolicy": "Sometimes"}},
    {"operator": {"watchNamespaces": ["Not_A_Namespace"]}},
    {"operator": {"otlpEndpoint": "otel:4317"}},
    {"metrics": {"port": 80}},
    {"crds": {"enabled": "yes"}},
    {"rackAwareness": {"enabled": True, "namespaces": ["Bad_NS"]}},
])
def test_values_schema_refuses(values):
    with helm.Chart.load(str(CHART)) as chart:
        with pytest.raises(helm.HelmValuesError):
            chart.validate_schema(values)
    with pytest.raises(helm.HelmError):
        render(values)
