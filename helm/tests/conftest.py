"""Shared helpers for the chart tests: render the chart with the real Helm
engine (helm-python-sdk bundles Helm's Go SDK) and parse what it renders."""

from __future__ import annotations

import os
import pathlib
import subprocess

import helm_python as helm
import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "tributary"
EXAMPLES = CHART / "examples"
GENERATED_CRDS = REPO / "crds" / "generated"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion, and the
# k8s-openapi feature the operator is built with).
KUBE_VERSION = "1.33.0"
RELEASE = "tributary"
NAMESPACE = "tributary-system"


def render(values: dict | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE) -> list[dict]:
    """Every object the chart renders with `values`, in template order."""
    with helm.Chart.load(str(CHART)) as chart:
        manifests = chart.render(values or {}, name=name, namespace=namespace, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__template__", path)
                objects.append(doc)
    return objects


def strip(obj: dict) -> dict:
    """The object without the test's bookkeeping key."""
    return {k: v for k, v in obj.items() if k != "__template__"}


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def load_yaml_docs(path: pathlib.Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="session")
def operator_bin() -> str:
    """The tributary-operator binary scripts/chart-test.sh built."""
    path = os.environ.get("TRIBUTARY_OPERATOR_BIN")
    if not path:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/tributary-target"))
        path = os.path.join(target, "release", "tributary-operator")
    if not os.access(path, os.X_OK):
        pytest.fail(f"{path} is missing: run scripts/chart-test.sh, which builds it")
    return path


def run_operator(binary: str, *args: str) -> list[dict]:
    out = subprocess.run([binary, *args], check=True, capture_output=True, text=True, timeout=60)
    return [d for d in yaml.safe_load_all(out.stdout) if d]
