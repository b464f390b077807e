"""The Kubernetes overlay, rendered onto an existing xmtpd Deployment, and the generated PrometheusRule.

The sidecar ships as a kustomize component (deploy/kubernetes/kustomization.yaml) holding one
strategic-merge patch (sidecar-patch.yaml), so it is only meaningful applied to somebody's Deployment: the
tests supply ``EXISTING_XMTPD`` as that Deployment and render the patch onto it the two ways the README
gives, with the real tools: ``kubectl kustomize`` (kustomize built into kubectl) on a kustomization that
includes the component, and ``kubectl patch --local`` (the same strategic merge the API server applies to a
live Deployment).  On a machine without kubectl (it is not packaged in Debian 12) they fall back, with a
warning, to ``strategic_merge`` below: a small merge over the YAML that does what those tools do for this
patch (maps merged key by key, lists of named items merged by name, other lists replaced).  Where kubectl is
there, ``test_the_fallback_merge_agrees_with_kubectl`` proves the fallback gives the same Deployment.

Every rendered or shipped core resource is validated against the Kubernetes API's own schema, strictly
(unknown fields fail), with kubernetes-validate, which bundles the schemas (no cluster needed).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from .test_deploy import (
    ALERTS,
    KUBE,
    assert_dsn_from_secret_file,
    assert_resources,
    assert_restricted,
    cli_settings,
    container_env,
    load_yaml,
    only,
    secret,
)

PATCH = KUBE / "sidecar-patch.yaml"
MONITORING = KUBE / "monitoring"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
GENERATOR = KUBE / "generate-prometheusrule.py"
# Native sidecars (initContainers with restartPolicy: Always) are stable from this release on.
KUBERNETES_VERSION = "1.33"
RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "runAsUser": 999,
    "runAsGroup": 999,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}

# "An existing xmtpd": a Deployment as an operator might already run it, with settings of its own at pod
# level and in its container, and a volume of its own, none of which the overlay may change.
EXISTING_XMTPD = """
apiVersion: apps/v1
kind: Deployment
metadata:
  name: xmtpd
  namespace: xmtp
  labels: {app: xmtpd}
spec:
  replicas: 3
  selector:
    matchLabels: {app: xmtpd}
  template:
    metadata:
      labels: {app: xmtpd, tier: node}
    spec:
      terminationGracePeriodSeconds: 45
      securityContext:
        runAsNonRoot: true
      containers:
        - name: xmtpd
          image: ghcr.io/xmtp/xmtpd:v0.5.0
          args: ["--api.port", "5050", "--log.encoding", "json"]
          env:
            - name: XMTPD_DB_WRITER_CONNECTION_STRING
              valueFrom: {secretKeyRef: {name: xmtpd-db, key: dsn}}
          ports:
            - {name: api, containerPort: 5050, protocol: TCP}
          securityContext:
            runAsUser: 65532
            allowPrivilegeEscalation: false
          volumeMounts:
            - {name: config, mountPath: /etc/xmtpd, readOnly: true}
      volumes:
        - name: config
          configMap: {name: xmtpd-config}
"""


def existing_xmtpd() -> dict[str, Any]:
    doc = yaml.safe_load(EXISTING_XMTPD)
    assert isinstance(doc, dict)
    return doc


def kubectl() -> str | None:
    """The real kubectl (its built-in kustomize and its strategic merge), or None with a warning."""
    path = shutil.which("kubectl")
    if path is None:
        warnings.warn("kubectl not installed: the overlay is rendered by the tests' own merge", stacklevel=2)
    return path


def run_kubectl(binary: str, *args: str) -> dict[str, Any]:
    proc = subprocess.run([binary, *args], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, f"kubectl {' '.join(args)}:\n{proc.stderr}"
    return only([d for d in yaml.safe_load_all(proc.stdout) if d], "Deployment")


def render_with_kustomize(binary: str, tmp_path: Path) -> dict[str, Any]:
    """Build a kustomization holding the existing Deployment and the component, as an operator would."""
    (tmp_path / "deployment.yaml").write_text(EXISTING_XMTPD)
    component = os.path.relpath(KUBE, tmp_path)  # kustomize refuses absolute component paths
    kustomization = {"resources": ["deployment.yaml"], "components": [component]}
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return run_kubectl(binary, "kustomize", str(tmp_path))


def render_with_patch(binary: str, tmp_path: Path) -> dict[str, Any]:
    """`kubectl patch --type strategic` on the existing Deployment, offline (--local)."""
    base = tmp_path / "deployment.yaml"
    base.write_text(EXISTING_XMTPD)
    args = ("patch", "--local", "-f", str(base), "--type", "strategic", "--patch-file", str(PATCH))
    return run_kubectl(binary, *args, "-o", "yaml")


def strategic_merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kubectl does it for this patch: lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = strategic_merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    named = isinstance(base, list) and isinstance(patch, list)
    if named and all(isinstance(i, dict) and "name" in i for i in [*base, *patch]):
        by_name = {item["name"]: item for item in base}
        added = [strategic_merge(by_name.pop(i["name"], {}), i) for i in patch]
        kept = [i for i in base if i["name"] in by_name]
        return added + kept
    return copy.deepcopy(patch)


def patch_doc() -> dict[str, Any]:
    return only(load_yaml(PATCH), "Deployment")


RENDERERS = {"kustomize": render_with_kustomize, "kubectl patch": render_with_patch}


@pytest.fixture(params=sorted(RENDERERS))
def rendered(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The existing xmtpd Deployment with the overlay applied, by each of the README's two ways."""
    binary = kubectl()
    if binary is None:
        return dict(strategic_merge(existing_xmtpd(), patch_doc()))
    return RENDERERS[request.param](binary, tmp_path)


def schema_errors(doc: dict[str, Any]) -> str | None:
    """The strict schema check's first error (without its multi-page schema dump), or None."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{doc['kind']} at {'.'.join(map(str, exc.path))}: {exc.message}"
    return None


def pod(deployment: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def sidecar(pod_spec: dict[str, Any]) -> dict[str, Any]:
    side = [c for c in pod_spec.get("initContainers", []) if c["name"] == "partitiond"]
    assert len(side) == 1, "partitiond must be one initContainer (a native sidecar)"
    found: dict[str, Any] = side[0]
    return found


def test_the_overlay_leaves_xmtpd_as_it_was(rendered: dict[str, Any]) -> None:
    """Everything of the existing Deployment survives; the pod only gains what partitiond needs."""
    base = existing_xmtpd()
    assert schema_errors(rendered) is None, schema_errors(rendered)
    assert rendered["metadata"] == base["metadata"]
    assert {k: v for k, v in rendered["spec"].items() if k != "template"} == {
        k: v for k, v in base["spec"].items() if k != "template"
    }
    labels = rendered["spec"]["template"]["metadata"]["labels"]
    assert labels == {**base["spec"]["template"]["metadata"]["labels"], "partitiond-sidecar": "true"}
    got, want = pod(rendered), pod(base)
    assert got["containers"] == want["containers"], "xmtpd's container must be untouched"
    volumes = {v["name"]: v for v in got["volumes"]}
    assert all(volumes[v["name"]] == v for v in want["volumes"])
    assert set(volumes) == {v["name"] for v in want["volumes"]} | {"partitiond-dsn", "partitiond-tmp"}
    # Pod level: xmtpd's own settings plus fsGroup for the Secret file; no runAsUser for the whole pod.
    assert got["securityContext"] == {**want["securityContext"], "fsGroup": 999}
    assert got["automountServiceAccountToken"] is False
    assert got["terminationGracePeriodSeconds"] == want["terminationGracePeriodSeconds"]
    added = set(got) - set(want)
    assert added == {"initContainers", "automountServiceAccountToken"}, added


def test_the_overlay_adds_a_restricted_partitiond_sidecar(rendered: dict[str, Any]) -> None:
    pod_spec = pod(rendered)
    side = sidecar(pod_spec)
    assert side["restartPolicy"] == "Always"
    assert side["securityContext"] == RESTRICTED_CONTAINER, "restricted settings on the container itself"
    assert_restricted(pod_spec, side)
    assert_dsn_from_secret_file(pod_spec, side, secret())
    assert_resources(side)
    assert side["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert "readinessProbe" not in side
    cli_settings(side["args"], container_env(side))


def test_the_patch_sets_no_pod_level_user() -> None:
    """Only fsGroup is pod-wide (Kubernetes has no per-container volume group); the rest is partitiond's."""
    text = PATCH.read_text()
    assert pod(patch_doc())["securityContext"] == {"fsGroup": 999}
    assert "delete this line" in text and "automountServiceAccountToken" in text, (
        "say how to remove the token opt-out"
    )
    assert "containers" not in pod(patch_doc()), "the patch must not bring containers of its own"


def test_the_fallback_merge_agrees_with_kubectl(tmp_path: Path) -> None:
    """The merge used without kubectl renders what kubectl renders (items compared by name)."""
    binary = kubectl()
    if binary is None:
        return
    ours = strategic_merge(existing_xmtpd(), patch_doc())
    for render in RENDERERS.values():
        theirs = render(binary, tmp_path)
        assert by_name(ours) == by_name(theirs), render.__name__


def by_name(value: Any) -> Any:
    """Lists of named items as name → item, so the order kustomize or kubectl chose does not matter."""
    if isinstance(value, dict):
        return {k: by_name(v) for k, v in value.items()}
    if isinstance(value, list) and value and all(isinstance(i, dict) and "name" in i for i in value):
        return {i["name"]: by_name(i) for i in value}
    return value


def test_the_kustomizations_reference_files_that_exist() -> None:
    component = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    assert component["kind"] == "Component"
    (entry,) = component["patches"]
    assert entry["path"] == PATCH.name
    assert entry["target"] == {"group": "apps", "version": "v1", "kind": "Deployment", "name": "xmtpd"}
    monitoring = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert monitoring["kind"] == "Kustomization"
    kinds = {only(load_yaml(MONITORING / name), kind)["kind"] for name, kind in _MONITORING.items()}
    assert sorted(monitoring["resources"]) == sorted(_MONITORING) and kinds == set(_MONITORING.values())
    binary = kubectl()
    if binary is not None:  # `kubectl apply -k deploy/kubernetes/monitoring` builds what it lists
        proc = subprocess.run(
            [binary, "kustomize", str(MONITORING)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stderr
        assert sorted(d["kind"] for d in yaml.safe_load_all(proc.stdout)) == sorted(_MONITORING.values())


_MONITORING = {"podmonitor.yaml": "PodMonitor", "prometheusrule.yaml": "PrometheusRule"}


@pytest.mark.parametrize("name", ["cronjob.yaml", "secret.example.yaml"])
def test_shipped_core_resources_pass_the_kubernetes_schema(name: str) -> None:
    for doc in load_yaml(KUBE / name):
        assert schema_errors(doc) is None, schema_errors(doc)


def test_the_schema_check_catches_a_misplaced_field() -> None:
    """The strict validation above is real: a field in the wrong place fails it."""
    doc = existing_xmtpd()
    pod(doc)["runAsUser"] = 999  # belongs in a securityContext
    assert "runAsUser" in (schema_errors(doc) or "")


def test_the_prometheusrule_holds_exactly_the_alert_rule_groups() -> None:
    """Read both files now: alerts.yaml is the source, the PrometheusRule must be regenerated after it."""
    rule = only(load_yaml(PROMETHEUS_RULE), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = yaml.safe_load(ALERTS.read_text())
    assert rule["spec"]["groups"] == alerts["groups"], (
        f"stale: run python3 {GENERATOR.relative_to(KUBE.parent.parent)}"
    )


def test_the_generator_writes_and_checks_its_output(tmp_path: Path) -> None:
    output = tmp_path / "prometheusrule.yaml"
    run = [sys.executable, str(GENERATOR), "--output", str(output)]
    assert subprocess.run(run, capture_output=True, timeout=60, check=False).returncode == 0
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    assert yaml.safe_load(output.read_text())["spec"]["groups"] == groups
    check = subprocess.run([*run, "--check"], capture_output=True, timeout=60, check=False)
    assert check.returncode == 0, check.stderr
    output.write_text(output.read_text() + "# edited by hand\n")
    stale = subprocess.run([*run, "--check"], capture_output=True, text=True, timeout=60, check=False)
    assert stale.returncode == 1 and "out of date" in stale.stderr
