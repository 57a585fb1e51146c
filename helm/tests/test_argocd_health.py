"""The Argo CD health check (helm/tributary/argocd/health.lua), run by a real
Lua 5.1 interpreter (Argo CD's gopher-lua speaks Lua 5.1) on status shapes
the operator writes."""

from __future__ import annotations

import pytest

from conftest import CHART

try:
    from lupa import lua51 as lupa_lua
except ImportError:  # wheels without the 5.1 runtime
    import lupa as lupa_lua

SCRIPT = (CHART / "argocd" / "health.lua").read_text()


def health(obj: dict) -> tuple[str, str]:
    lua = lupa_lua.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(SCRIPT)
    return hs["status"], hs["message"]


def cond(type_, status, reason="R", message="m"):
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 3}


def obj(kind="Topic", generation=3, observed=3, conditions=(), paused=None):
    o = {"kind": kind, "metadata": {"name": "x", "generation": generation}, "spec": {}}
    if paused is not None:
        o["spec"]["paused"] = paused
    if conditions is not None:
        o["status"] = {"observedGeneration": observed, "conditions": list(conditions)}
    return o


@pytest.mark.parametrize("o, want", [
    (obj(conditions=None), "Progressing"),
    (obj(observed=2, conditions=[cond("Ready", "True")]), "Progressing"),
    (obj(conditions=[cond("Ready", "True"), cond("Stalled", "False")]), "Healthy"),
    (obj(conditions=[cond("Ready", "False"), cond("Reconciling", "True")]), "Progressing"),
    (obj(conditions=[cond("Ready", "False", "PartitionShrinkRefused"), cond("Stalled", "True", "PartitionShrinkRefused")]), "Degraded"),
    (obj(kind="MirrorLink", paused=True, conditions=[cond("Ready", "True")]), "Suspended"),
    (obj(kind="Cluster", conditions=[cond("Ready", "True")]), "Healthy"),
    (obj(conditions=[]), "Progressing"),
])
def test_health(o, want):
    status, message = health(o)
    assert status == want, message


def test_degraded_message_names_the_reason():
    status, message = health(obj(conditions=[cond("Stalled", "True", "ReplicationFactorTooHigh", "lower it")]))
    assert (status, message) == ("Degraded", "ReplicationFactorTooHigh: lower it")
