"""Every object the chart renders, and every object the operator generates
for the example Clusters, validated against the Kubernetes OpenAPI schemas
(kubernetes-validate ships them; strict mode refuses unknown fields). The
example custom resources are validated against the generated CRD schemas."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest

from conftest import EXAMPLES, GENERATED_CRDS, KUBE_VERSION, by_kind, load_yaml_docs, render, run_operator, strip

VARIANTS = {
    "defaults": {},
    "namespaced": {"operator": {"watchNamespaces": ["team-a", "team-b"], "leaderElection": False}},
    "everything": {
        "replicaCount": 2,
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {"annotations": {"iam.example/role": "x"}},
        "metrics": {"service": {"type": "NodePort", "annotations": {"a": "b"}}},
        "podAnnotations": {"a": "b"}, "podLabels": {"team": "data"},
        "nodeSelector": {"pool": "system"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]}]}]}}},
        "priorityClassName": "system-cluster-critical",
        "operator": {"otlpEndpoint": "http://otel:4317", "logLevel": "debug"},
        "rackAwareness": {"enabled": True, "namespaces": ["streaming"]},
    },
}


def validate(obj: dict) -> None:
    kubernetes_validate.validate(strip(obj), KUBE_VERSION, strict=True)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_rendered_objects_are_valid(variant):
    objects = render(VARIANTS[variant])
    assert objects
    for obj in objects:
        validate(obj)


def test_validation_catches_mistakes():
    (dep,) = by_kind(render(), "Deployment")
    bad = copy.deepcopy(dep)
    bad["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy2"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(bad)


@pytest.fixture(scope="module")
def generated(operator_bin):
    return run_operator(operator_bin, "render-cluster", "-f", str(EXAMPLES / "cluster.yaml"))


def test_operator_objects_are_valid(generated):
    kinds = [o["kind"] for o in generated]
    assert kinds == ["ConfigMap", "Service", "Service", "StatefulSet", "PodDisruptionBudget"] * 3
    for obj in generated:
        validate(obj)


def test_operator_objects_follow_the_example(generated):
    sts = [o for o in generated if o["kind"] == "StatefulSet"]
    local = next(s for s in sts if s["metadata"]["name"] == "local-a")
    assert local["metadata"]["namespace"] == "streaming"
    assert local["spec"]["replicas"] == 3
    assert local["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenScaled": "Retain", "whenDeleted": "Retain"}
    pvc = local["spec"]["volumeClaimTemplates"][0]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert pvc["metadata"]["annotations"]["argocd.argoproj.io/sync-options"] == "Prune=false"
    pod = local["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"][0]["topologyKey"] == "topology.kubernetes.io/zone"
    # Rack awareness: the init step reads the node label; the chart's
    # rackAwareness gives this service account `get` on nodes.
    (init,) = pod["initContainers"]
    assert init["command"] == ["tributary-operator"] and init["args"][0] == "rack-init"
    assert pod["serviceAccountName"] == "tributary-broker"
    config = next(o for o in generated if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "local-a-config")
    assert config["data"]["peers"].count("@local-a-") == 3
    assert config["data"]["controllers"] == "0,1,2"
    c = pod["containers"][0]
    assert c["command"] == ["tributary-broker"]
    assert "--node-id" in c["args"] and "$(TRIBUTARY_NODE_ID)" in c["args"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for s in sts:
        assert s["metadata"]["ownerReferences"][0]["kind"] == "Cluster"


def _crd_schemas() -> dict[str, dict]:
    schemas = {}
    for path in GENERATED_CRDS.glob("*.yaml"):
        (crd,) = load_yaml_docs(path)
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        schemas[crd["spec"]["names"]["kind"]] = _openapi_to_jsonschema(schema)
    return schemas


def _openapi_to_jsonschema(node):
    """OpenAPI v3 `nullable: true` becomes a JSON Schema type union."""
    if isinstance(node, dict):
        out = {k: _openapi_to_jsonschema(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") and "type" in node:
            out["type"] = [node["type"], "null"]
        return out
    if isinstance(node, list):
        return [_openapi_to_jsonschema(v) for v in node]
    return node


SCHEMAS = _crd_schemas()


def _check(obj: dict) -> None:
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    jsonschema.Draft7Validator(SCHEMAS[obj["kind"]]).validate(body)


@pytest.mark.parametrize("example", ["cluster.yaml", "topic.yaml", "mirrorlink.yaml"])
def test_examples_match_the_crd_schemas(example):
    docs = load_yaml_docs(EXAMPLES / example)
    assert docs
    for obj in docs:
        assert obj["apiVersion"] == "tributary.dev/v1alpha1"
        _check(obj)


@pytest.mark.parametrize("mutate", [
    lambda t: t["spec"].update(partitions=0),
    lambda t: t["spec"].update(partitions=10001),
    lambda t: t["spec"].update(deletionPolicy="Purge"),
    lambda t: t["spec"].update(topicName="bad/name"),
    lambda t: t["spec"].pop("clusterRef"),
    lambda t: t["spec"]["config"].update({"retention.ms": "x" * 300}),
])
def test_crd_schema_refuses_bad_topics(mutate):
    topic = copy.deepcopy(load_yaml_docs(EXAMPLES / "topic.yaml")[0])
    mutate(topic)
    with pytest.raises(jsonschema.ValidationError):
        _check(topic)
