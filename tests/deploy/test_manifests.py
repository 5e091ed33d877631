"""Container and Kubernetes deployment files: parsed and cross-checked statically.

No Docker engine or cluster is needed. Kubernetes core objects are validated
against the JSON schemas shipped in the optional `kubernetes-validate` package
(offline); the test skips if it is not installed. kubeconform validates them
too, with the same schemas (tests/deploy/test_kubeconform.py).
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from detectors.settings import DEV_PSEUDONYMISATION_KEY
from streams.config import KEY_MIN_BYTES, load_worker_config
from tests.deploy.conftest import AM_CONFIG, PROM_DIR, ROOT, RULES_FILE

DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
K8S = DEPLOY / "k8s"
K8S_FILES = sorted(K8S.glob("*.yaml"))
WEB_PORT = 6066
KUBERNETES_VERSION = "1.33"  # the oldest version the manifests must validate against


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def k8s_objects() -> list[dict[str, Any]]:
    return [d for p in K8S_FILES if p.name != "kustomization.yaml" for d in load_all(p)]


def obj(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in k8s_objects() if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return doc


def env_dict(env: Any) -> dict[str, str]:
    """Compose `environment` as a mapping, whether written as a mapping or a list."""
    if isinstance(env, dict):
        return {k: "" if v is None else str(v) for k, v in env.items()}
    return dict(item.split("=", 1) for item in env)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def load_module(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- every file parses ------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE_FILE, *K8S_FILES], ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path: Path) -> None:
    assert load_all(path), f"{path} is empty"


# --- Dockerfile -------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    ins = dockerfile_instructions()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for word, rest in ins if word == "ARG" and "=" in rest}
    froms = [rest for word, rest in ins if word == "FROM"]
    assert froms and all(f.split()[0] == "${PYTHON_IMAGE}" for f in froms)
    # The base image is pinned by digest, not only by a tag that moves.
    assert re.fullmatch(r"python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", args.get("PYTHON_IMAGE", ""))
    # Dependencies come from the runtime lock, hash-checked; the project itself adds none.
    runs = [rest for word, rest in ins if word == "RUN"]
    assert any("--require-hashes --no-deps -r requirements/stream.lock.txt" in r for r in runs)
    assert any("pip install --no-deps --no-build-isolation ." in r for r in runs)
    assert not any(re.search(r"pip install (?!--)", r) for r in runs), "every pip install is locked or --no-deps"
    final = ins[max(i for i, (w, _) in enumerate(ins) if w == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users and not users[-1].startswith(("root", "0")), "the runtime stage must not run as root"
    assert ("EXPOSE", str(WEB_PORT)) in final
    health = [rest for word, rest in final if word == "HEALTHCHECK"]
    assert len(health) == 1 and "/health" in health[0]
    assert final[-1] == ("CMD", '["notifguard", "worker"]')
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "NOTIFGUARD_WORKER_WEB_HOST=0.0.0.0" in env
    # The compiled core is built into the installed package, and the runtime requires it.
    assert any("python -m detectors.build_native" in r for r in runs)
    assert "NOTIFGUARD_NATIVE=1" in env
    # Everything the image copies exists (the build context is the repository root).
    for word, rest in ins:
        if word == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), src


# --- docker compose ---------------------------------------------------------


def test_compose_services() -> None:
    services = compose()["services"]
    assert set(services) >= {"kafka", "worker", "prometheus", "alertmanager", "grafana"}
    assert re.fullmatch(r"apache/kafka:4\.1\.\d+", services["kafka"]["image"])
    kafka_env = env_dict(services["kafka"]["environment"])
    assert set(kafka_env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}, "single-node KRaft"
    # Named volumes are declared.
    declared = set(compose().get("volumes") or {})
    for name, svc in services.items():
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0]
            if not src.startswith((".", "/")):
                assert src in declared, f"{name}: volume {src} not declared"


def test_compose_worker() -> None:
    doc = compose()
    worker = doc["services"]["worker"]
    assert (COMPOSE_FILE.parent / worker["build"]["context"] / worker["build"]["dockerfile"]).resolve() == DOCKERFILE
    env = env_dict(worker["environment"])
    assert env["NOTIFGUARD_WORKER_WEB_HOST"] == "0.0.0.0"
    assert env["NOTIFGUARD_WORKER_BOOTSTRAP"].split(":")[0] == "kafka"
    # The key comes from the environment (required), never a literal in the file.
    assert re.fullmatch(r"\$\{NOTIFGUARD_PSEUDONYMISATION_KEY(:\?[^}]*)?\}", env["NOTIFGUARD_PSEUDONYMISATION_KEY"])
    assert any(p.split(":")[-1] == str(WEB_PORT) for p in worker["ports"])
    datadir = env["NOTIFGUARD_WORKER_DATADIR"]
    mounts = [v.split(":")[1] for v in worker["volumes"]]
    assert any(datadir == m or datadir.startswith(m.rstrip("/") + "/") for m in mounts), "RocksDB dir not on a volume"
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    # The settings resolve as the worker resolves them.
    cfg = load_worker_config(env={**env, "NOTIFGUARD_PSEUDONYMISATION_KEY": "test-key"})
    assert (cfg.web_host, cfg.web_port, cfg.datadir) == ("0.0.0.0", WEB_PORT, datadir)


def test_compose_bind_mounts_exist() -> None:
    for name, svc in compose()["services"].items():
        for v in svc.get("volumes", []):
            src = v.split(":", 1)[0]
            if src.startswith("."):
                assert (COMPOSE_FILE.parent / src).exists(), f"{name}: {src} missing"


def test_compose_prometheus_wiring() -> None:
    doc = compose()
    services = doc["services"]
    prom = services["prometheus"]
    mounts = dict(v.split(":")[:2] for v in prom["volumes"])
    assert (COMPOSE_FILE.parent / "prometheus/prometheus.yml").resolve() == PROM_DIR / "prometheus.yml"
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text(encoding="utf-8"))
    # The rule files resolve (relative to the config file) inside the mounted rules directory.
    for rule_file in cfg["rule_files"]:
        target = Path("/etc/prometheus") / rule_file
        assert any(target.is_relative_to(Path(m)) for m in mounts.values()), rule_file
    # The worker's file_sd list is replaced by one that names the worker service.
    sd_file = cfg["scrape_configs"][0]["file_sd_configs"][0]["files"][0]
    (override,) = [c for c in prom["configs"] if c["target"] == f"/etc/prometheus/{sd_file}"]
    groups = yaml.safe_load(doc["configs"][override["source"]]["content"])
    assert [t for g in groups for t in g["targets"]] == [f"worker:{WEB_PORT}"]
    # Alertmanager and Grafana reach Prometheus (and each other) on 127.0.0.1 as configured.
    for name in ("alertmanager", "grafana"):
        assert services[name]["network_mode"] == "service:prometheus"
    published = {p.split(":")[-1] for p in prom["ports"]}
    assert {"9090", "9093", "3000"} <= published


def test_compose_alertmanager_and_grafana_mounts() -> None:
    services = compose()["services"]
    am = dict(v.split(":")[:2] for v in services["alertmanager"]["volumes"])
    assert (COMPOSE_FILE.parent / "alertmanager/alertmanager.yml").resolve() == AM_CONFIG
    assert f"--config.file={am['./alertmanager/alertmanager.yml']}" in services["alertmanager"]["command"]
    grafana = services["grafana"]
    gm = dict(v.split(":")[:2] for v in grafana["volumes"])
    assert gm["./grafana/provisioning"] == "/etc/grafana/provisioning"
    assert env_dict(grafana["environment"])["NOTIFGUARD_DASHBOARDS_DIR"] == gm["../dashboards"]
    assert list((COMPOSE_FILE.parent / "../dashboards").glob("*.json"))


# --- Kubernetes: structure --------------------------------------------------


def test_k8s_objects_have_identity() -> None:
    objects = k8s_objects()
    kinds = {o["kind"] for o in objects}
    assert kinds >= {
        "Namespace",
        "Secret",
        "ConfigMap",
        "StatefulSet",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "PrometheusRule",
        "ServiceMonitor",
        "NetworkPolicy",
    }
    for o in objects:
        assert o.get("apiVersion") and o.get("kind") and o.get("metadata", {}).get("name"), o
        if o["kind"] != "Namespace":
            assert o["metadata"].get("namespace") == "notifguard", o["metadata"]["name"]


def test_kustomization_lists_every_manifest_but_the_secret() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    # incidents.yaml: optional, the workers compute the incidents by default (docs/incidents.md)
    expected = {p.name for p in K8S_FILES} - {"kustomization.yaml", "secret.yaml", "incidents.yaml"}
    assert set(kust["resources"]) == expected


def test_k8s_labels_and_selectors_match() -> None:
    sts = obj("StatefulSet")
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert selects(sts["spec"]["selector"]["matchLabels"], pod_labels)
    services = {
        s["metadata"]["name"]: s
        for s in k8s_objects()
        if s["kind"] == "Service" and s["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    }
    for svc in services.values():
        assert selects(svc["spec"]["selector"], pod_labels), svc["metadata"]["name"]
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert selects(obj("PodDisruptionBudget")["spec"]["selector"]["matchLabels"], pod_labels)
    # The ServiceMonitor picks exactly the metrics Service, whose name is the job the rules select.
    sm = obj("ServiceMonitor", "notifguard")
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [sts["metadata"]["namespace"]]
    every_service = [s for s in k8s_objects() if s["kind"] == "Service"]
    picked = [
        s["metadata"]["name"]
        for s in every_service
        if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
    ]
    assert picked == ["notifguard"]
    assert 'job="notifguard"' in RULES_FILE.read_text(encoding="utf-8")
    metrics_ports = {p["name"] for p in services["notifguard"]["spec"]["ports"]}
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["http"] and "http" in metrics_ports
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"


def worker_container() -> dict[str, Any]:
    (c,) = obj("StatefulSet")["spec"]["template"]["spec"]["containers"]
    return c


def test_k8s_probes_point_at_the_container_port() -> None:
    c = worker_container()
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": WEB_PORT}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = c[probe]
        handler = spec.get("httpGet") or spec.get("tcpSocket")
        assert handler["port"] in (*ports, *ports.values()), probe
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    # /health is 503 during rebalances: liveness must not restart the worker for that.
    # /live is 503 only when the worker is stalled (streams/liveness.py), and a restart
    # then is safe (it re-reads from its committed offsets).
    live = c["livenessProbe"]
    assert live["httpGet"]["path"] == "/live"
    # a loop busy for seconds is no stall: at least 2 minutes of failures before a restart
    assert live["failureThreshold"] * live["periodSeconds"] >= 120
    assert live["timeoutSeconds"] < live["periodSeconds"]
    for svc in (
        o
        for o in k8s_objects()
        if o["kind"] == "Service" and o["metadata"]["labels"]["app.kubernetes.io/component"] == "worker"
    ):
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in (*ports, *ports.values())


def test_k8s_worker_env_and_settings(tmp_path: Path) -> None:
    sts = obj("StatefulSet")
    c = worker_container()
    env = {e["name"]: e for e in c["env"]}
    assert env["NOTIFGUARD_WORKER_WEB_HOST"]["value"] == "0.0.0.0"
    secret = obj("Secret", "notifguard-secrets")
    key_ref = env["NOTIFGUARD_PSEUDONYMISATION_KEY"]["valueFrom"]["secretKeyRef"]
    assert key_ref["name"] == secret["metadata"]["name"]
    assert key_ref["key"] in secret["stringData"]
    # The placeholder is one the container refuses.
    placeholder = secret["stringData"][key_ref["key"]]
    guard = re.search(r'""\|([^)*]+)\*\)', " ".join(c["command"]))
    assert guard and placeholder.startswith(guard.group(1))
    cm = obj("ConfigMap")
    for e in env.values():
        ref = e.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            assert ref["name"] == cm["metadata"]["name"] and ref["key"] in cm["data"]
    # The settings file is mounted where NOTIFGUARD_CONFIG points.
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    (cfg_item,) = volumes["config"]["configMap"]["items"]
    assert volumes["config"]["configMap"]["name"] == cm["metadata"]["name"]
    assert f"{mounts['config']}/{cfg_item['path']}" == env["NOTIFGUARD_CONFIG"]["value"]
    # RocksDB lives on the claim of volumeClaimTemplates.
    claims = [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]]
    datadir = env["NOTIFGUARD_WORKER_DATADIR"]["value"]
    assert any(datadir.startswith(mounts[n].rstrip("/") + "/") for n in claims)
    # The worker accepts the file and the environment as it gets them in the pod.
    cfg_path = tmp_path / cfg_item["path"]
    cfg_path.write_text(cm["data"][cfg_item["key"]], encoding="utf-8")
    assert tomllib.loads(cfg_path.read_text(encoding="utf-8"))["worker"]
    pod_env = {n: e["value"] for n, e in env.items() if "value" in e and n != "NOTIFGUARD_CONFIG"}
    pod_env |= {
        "NOTIFGUARD_WORKER_BOOTSTRAP": cm["data"]["bootstrap"],
        "NOTIFGUARD_PSEUDONYMISATION_KEY": "k",
        "NOTIFGUARD_KAFKA_SASL_PASSWORD_FILE": str(_file(tmp_path / "password", "pw")),
    }
    wc = load_worker_config(cfg_path, env=pod_env)
    assert (wc.web_host, wc.web_port, wc.datadir) == ("0.0.0.0", WEB_PORT, datadir)
    assert wc.bootstrap == cm["data"]["bootstrap"]
    # The worker's own stop bound (it logs what it waits for, then exits 70) comes before
    # the kubelet's SIGKILL, with time left to write the log.
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= wc.shutdown_timeout_s + 10
    # Kubernetes restarts a stalled worker: the probe's 2 minutes come on top of stall_after_s.
    assert wc.stall_after_s <= 300


def _file(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_k8s_kafka_credentials_are_files_of_the_mounted_secret_where_the_settings_point(tmp_path: Path) -> None:
    from streams.kafka_security import security_from

    c = worker_container()
    cm = obj("ConfigMap")
    kafka = tomllib.loads(cm["data"]["notifguard.toml"])["kafka"]
    volumes = {v["name"]: v for v in obj("StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    secret = obj("Secret", volumes["kafka-client"]["secret"]["secretName"])
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "kafka-client"]
    assert mount["readOnly"] is True
    files = {f"{mount['mountPath']}/{key}" for key in secret["stringData"]}
    assert {kafka["sasl_password_file"], kafka["ssl_cafile"]} <= files
    # no credential in the environment (it would show in `kubectl describe` and crash dumps)
    assert not [e for e in c["env"] if e["name"].startswith("NOTIFGUARD_KAFKA_")]
    # the table is one the worker accepts: the files as the pod gets them
    local = {k: str(_file(tmp_path / Path(v).name, "x")) if k.endswith("file") else v for k, v in kafka.items()}
    sec = security_from(local, {})
    assert (sec.security_protocol, sec.ssl_check_hostname, sec.sasl_password.reveal()) == ("SASL_SSL", True, "x")


def test_k8s_network_policy_admits_only_prometheus_to_the_web_port_and_lets_out_kafka_and_dns() -> None:
    pol = obj("NetworkPolicy", "notifguard")
    pod_labels = obj("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert selects(pol["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert set(pol["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (rule,) = pol["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["http"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    assert peer["namespaceSelector"]  # Prometheus' namespace, not every namespace
    kafka_port = int(obj("ConfigMap")["data"]["bootstrap"].rpartition(":")[2])
    ports = {(p["port"], p["protocol"]) for r in pol["spec"]["egress"] for p in r["ports"]}
    assert ports == {(kafka_port, "TCP"), (53, "UDP"), (53, "TCP")}


def test_k8s_security_context_and_resources() -> None:
    pod = obj("StatefulSet")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    c = worker_container()
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # The Dockerfile's user is the one the pod runs as.
    assert f"UID={pod['securityContext']['runAsUser']}" in DOCKERFILE.read_text(encoding="utf-8")


# --- Kubernetes: the incidents process (incidents.yaml) -----------------------


def incidents_container() -> dict[str, Any]:
    (c,) = obj("Deployment", "notifguard-incidents")["spec"]["template"]["spec"]["containers"]
    return c


def test_k8s_incidents_is_one_replica_that_runs_the_process_with_its_settings(tmp_path: Path) -> None:
    from streams.cli import build_parser
    from streams.config import load_incident_settings, load_kafka_security, load_settings

    dep = obj("Deployment", "notifguard-incidents")
    # it reads every partition of the alerts itself: never two at once
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    pod = dep["spec"]["template"]
    assert selects(dep["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    assert not selects(obj("StatefulSet")["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"])
    c = incidents_container()
    env = {e["name"]: e for e in c["env"]}
    cm = obj("ConfigMap")
    ref = env["NOTIFGUARD_INCIDENTS_BOOTSTRAP"]["valueFrom"]["configMapKeyRef"]
    assert ref["name"] == cm["metadata"]["name"] and ref["key"] in cm["data"]
    assert c["command"][0] == "notifguard"
    argv = [cm["data"]["bootstrap"] if a == "$(NOTIFGUARD_INCIDENTS_BOOTSTRAP)" else a for a in c["command"][1:]]
    args = build_parser().parse_args(argv)
    assert (args.incidents_command, args.bootstrap, args.clock) == ("run", cm["data"]["bootstrap"], "wall")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": args.metrics_port}
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["tcpSocket"]["port"] in ports
    # the settings file is mounted where --config points, and the process accepts it
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    (item,) = volumes["config"]["configMap"]["items"]
    assert f"{mounts['config']['mountPath']}/{item['path']}" == args.config
    cfg = tmp_path / item["path"]
    cfg.write_text(cm["data"][item["key"]], encoding="utf-8")
    load_settings(cfg, env={})
    load_incident_settings(cfg, env={})
    # Kafka: its own principal's password and the CA, files of its own Secret, mounted read-only
    kafka = tomllib.loads(cm["data"][item["key"]])["kafka"]
    assert kafka["sasl_username"] == "notifguard-incidents"
    secret = obj("Secret", volumes["kafka-client"]["secret"]["secretName"])
    worker_volumes = {v["name"]: v for v in obj("StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    assert secret["metadata"]["name"] != worker_volumes["kafka-client"]["secret"]["secretName"]  # not the worker's
    assert mounts["kafka-client"]["readOnly"] is True
    files = {f"{mounts['kafka-client']['mountPath']}/{key}" for key in secret["stringData"]}
    assert {kafka["sasl_password_file"], kafka["ssl_cafile"]} <= files
    assert not [e for e in c["env"] if e["name"].startswith("NOTIFGUARD_KAFKA_")]
    local = dict(
        kafka,
        sasl_password_file=str(_file(tmp_path / "password", "x")),
        ssl_cafile=str(_file(tmp_path / "ca.crt", "x")),
    )
    (tmp_path / "local.toml").write_text("[kafka]\n" + "".join(f'{k} = "{v}"\n' for k, v in local.items()))
    assert load_kafka_security(tmp_path / "local.toml").sasl_password.reveal() == "x"
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True and c["resources"]["limits"]["memory"]


def test_k8s_incidents_metrics_are_scraped_as_the_job_the_rules_select() -> None:
    sm = obj("ServiceMonitor", "notifguard-incidents")
    services = [s for s in k8s_objects() if s["kind"] == "Service"]
    picked = [s for s in services if selects(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in picked] == ["notifguard-incidents"]
    (svc,) = picked
    pod_labels = obj("Deployment", "notifguard-incidents")["spec"]["template"]["metadata"]["labels"]
    assert selects(svc["spec"]["selector"], pod_labels)
    ports = {p["name"]: p for p in incidents_container()["ports"]}
    (sport,) = svc["spec"]["ports"]
    assert sport["targetPort"] in ports and [e["port"] for e in sm["spec"]["endpoints"]] == [sport["name"]]
    # the Service's name is the job: the incident rules select it (and the workers' job, notifguard)
    assert 'job=~"notifguard|notifguard-incidents"' in RULES_FILE.read_text(encoding="utf-8")


def test_k8s_incidents_network_policy_admits_only_prometheus_and_lets_out_kafka_and_dns() -> None:
    pol = obj("NetworkPolicy", "notifguard-incidents")
    pod_labels = obj("Deployment", "notifguard-incidents")["spec"]["template"]["metadata"]["labels"]
    assert selects(pol["spec"]["podSelector"]["matchLabels"], pod_labels)
    assert not selects(
        pol["spec"]["podSelector"]["matchLabels"], obj("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    )
    assert set(pol["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    (rule,) = pol["spec"]["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["metrics"]
    (peer,) = rule["from"]
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"} and peer["namespaceSelector"]
    kafka_port = int(obj("ConfigMap")["data"]["bootstrap"].rpartition(":")[2])
    ports = {(p["port"], p["protocol"]) for r in pol["spec"]["egress"] for p in r["ports"]}
    assert ports == {(kafka_port, "TCP"), (53, "UDP"), (53, "TCP")}


# --- PrometheusRule = the rules file ----------------------------------------


def test_prometheusrule_groups_equal_rules_file() -> None:
    rule = obj("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))["groups"]
    assert rule["spec"]["groups"] == groups


def test_prometheusrule_is_freshly_rendered() -> None:
    mod = load_module(K8S / "render_prometheusrule.py")
    assert (K8S / "prometheusrule.yaml").read_text(encoding="utf-8") == mod.render(), (
        "deploy/k8s/prometheusrule.yaml is stale: run python3 deploy/k8s/render_prometheusrule.py"
    )


# --- Kubernetes: schemas (optional) -----------------------------------------


CORE_API_GROUPS = ("v1", "apps/v1", "policy/v1", "networking.k8s.io/v1")


@pytest.mark.parametrize(
    "name", [f"{o['kind']}/{o['metadata']['name']}" for o in k8s_objects() if o["apiVersion"] in CORE_API_GROUPS]
)
def test_k8s_core_objects_match_schema(name: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (offline schemas)")
    kind, _, obj_name = name.partition("/")
    kv.validate(obj(kind, obj_name), KUBERNETES_VERSION, strict=True)


def _start_guard(tmp_path: Path, key: str | None) -> subprocess.CompletedProcess[str]:
    """The StatefulSet's start-up command under /bin/sh, with a `notifguard` that only says it started."""
    c = worker_container()
    assert c["command"][:2] == ["/bin/sh", "-c"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "notifguard"
    fake.write_text('#!/bin/sh\necho "started $*"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    if key is not None:
        env["NOTIFGUARD_PSEUDONYMISATION_KEY"] = key
    return subprocess.run(c["command"], env=env, capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(
    "key",
    [
        None,
        "",
        "REPLACE-ME-with-openssl-rand-hex-32",
        DEV_PSEUDONYMISATION_KEY,
        "k",
        "x" * (KEY_MIN_BYTES - 1),
        "ü" * 15 + "x",  # 16 characters, 31 bytes
    ],
)
def test_k8s_start_up_refuses_the_keys_the_worker_refuses(tmp_path: Path, key: str | None) -> None:
    res = _start_guard(tmp_path, key)
    assert res.returncode == 78, res
    assert "started" not in res.stdout
    assert "pseudonymisation-key" in res.stderr and "notifguard-secrets" in res.stderr
    if key and len(key) > 1:
        assert key not in res.stderr


@pytest.mark.parametrize("key", ["0123456789abcdef" * 2, "ü" * 16, "0123456789abcdef" * 4])
def test_k8s_start_up_runs_the_worker_with_a_secret_key(tmp_path: Path, key: str) -> None:
    res = _start_guard(tmp_path, key)
    assert (res.returncode, res.stdout, res.stderr) == (0, "started worker\n", "")
