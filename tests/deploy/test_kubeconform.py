"""kubeconform (strict) on the Kubernetes manifests, offline, with the schemas kubernetes-validate ships.

kubeconform reads its schemas from GitHub by default; here `-schema-location`
points at a copy of the Kubernetes JSON schemas of the PyPI package
kubernetes-validate (already a test dependency), made loadable from files:
their `$id` (https://kubernetes.io/api/...) and absolute `$ref`s
(`/api/_definitions.json#...`) would send kubeconform to kubernetes.io, so the
copy drops the `$id`s and makes the `$ref`s relative to the file.

The Prometheus Operator's ServiceMonitor and PrometheusRule have no schema
offline (the operator publishes its CRDs on GitHub, not in a registry): they
are skipped by kind, every other kind must have a schema, and
tests/deploy/test_manifests.py checks those two statically.

kubeconform is installed by deploy/k8s/ensure-kubeconform.sh (scripts/test
runs it) through the Go module proxy. Without Go the tests skip; with Go and
no kubeconform they fail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import ROOT
from tests.deploy.test_manifests import K8S_FILES, KUBERNETES_VERSION, k8s_objects

VERSION = "v0.7.0"
CRD_KINDS = ("ServiceMonitor", "PrometheusRule")  # no offline schema (see the module docstring)
MANIFESTS = [p for p in K8S_FILES if p.name != "kustomization.yaml"]
SCHEMA_DIR = f"v{KUBERNETES_VERSION}.0-local-strict"
TEMPLATE = "{{ .NormalizedKubernetesVersion }}-local{{ .StrictSuffix }}/{{ .ResourceKind }}{{ .KindSuffix }}.json"


def kubeconform() -> str:
    cache = Path(os.environ.get("NOTIFGUARD_CACHE", Path.home() / ".cache" / "notifguard"))
    for candidate in (cache / f"kubeconform-{VERSION}" / "kubeconform", shutil.which("kubeconform")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    if shutil.which("go") is None:
        pytest.skip("no Go toolchain: kubeconform is not installed (deploy/k8s/ensure-kubeconform.sh)")
    pytest.fail("Go is here but kubeconform is not: run deploy/k8s/ensure-kubeconform.sh")
    raise AssertionError("unreachable")


def _rewrite(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (
                v.replace("/api/_definitions.json#", "_definitions.json#")
                if k == "$ref" and isinstance(v, str)
                else _rewrite(v)
            )
            for k, v in node.items()
            if not (k == "$id" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_rewrite(v) for v in node]
    return node


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (offline schemas)")
    src = Path(kv.__file__).parent / "kubernetes-json-schema" / SCHEMA_DIR
    assert src.is_dir(), f"kubernetes-validate has no {SCHEMA_DIR}"
    root = tmp_path_factory.mktemp("k8s-schemas")
    dst = root / SCHEMA_DIR
    dst.mkdir()
    for path in src.glob("*.json"):
        # Only string "$id"s / "$ref"s are ids and references; a property *named* "$ref" or "$schema"
        # (JSONSchemaProps) maps to an object and is kept.
        doc = json.loads(path.read_text(encoding="utf-8"))
        (dst / path.name).write_text(json.dumps(_rewrite(doc)), encoding="utf-8")
    return root


def run_kubeconform(schemas: Path, *paths: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    res = subprocess.run(
        [
            kubeconform(),
            "-strict",
            "-summary",
            "-output",
            "json",
            "-kubernetes-version",
            f"{KUBERNETES_VERSION}.0",
            "-schema-location",
            str(schemas / TEMPLATE),
            "-skip",
            ",".join(CRD_KINDS),
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    try:
        report = json.loads(res.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"kubeconform said:\n{res.stdout}\n{res.stderr}")
    return res, report


def test_manifests_are_valid(schemas: Path) -> None:
    res, report = run_kubeconform(schemas, *MANIFESTS)
    assert res.returncode == 0, json.dumps(report, indent=1) + res.stderr
    summary = report["summary"]
    core = [o for o in k8s_objects() if o["kind"] not in CRD_KINDS]
    assert summary["valid"] == len(core), summary
    assert summary["skipped"] == len(k8s_objects()) - len(core), summary
    assert summary["invalid"] == summary["errors"] == 0, summary


def test_kubeconform_rejects_a_bad_statefulset(schemas: Path, tmp_path: Path) -> None:
    """The schemas are really used: an unknown field (strict) and a wrong type are both reported."""
    (sts,) = [o for o in k8s_objects() if o["kind"] == "StatefulSet"]
    unknown = json.loads(json.dumps(sts))
    unknown["spec"]["replica"] = 2
    wrong_type = json.loads(json.dumps(sts))
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    for name, doc in (("unknown-field", unknown), ("wrong-type", wrong_type)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        res, report = run_kubeconform(schemas, path)
        assert res.returncode != 0, name
        assert report["summary"]["invalid"] == 1, (name, report)


def test_ensure_script_is_idempotent() -> None:
    kubeconform()  # skips without Go
    res = subprocess.run(
        ["bash", str(ROOT / "deploy" / "k8s" / "ensure-kubeconform.sh")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().endswith("/kubeconform"), res.stdout
