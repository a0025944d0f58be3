"""`deploy/` stays consistent with the code: compose and Kubernetes files parse, every
`LIVECOMMERCE_*` they set is a real setting, commands exist, mounted files exist.

No Docker daemon or cluster is needed (nor available in CI): this checks what can
drift silently when the code changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream.cli import main as cli
from stream.core.auth import Tokens
from stream.core.config import ENV_PREFIX, Settings, from_env
from stream.store.connect import parse_nodes

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ROOT = DEPLOY.parent
# Written on another branch (the metrics dashboard); checked once they are there.
OWNED_ELSEWHERE = {DEPLOY / "grafana" / "dashboard.json", DEPLOY / "grafana" / "prometheus.yml"}
SETTINGS = {ENV_PREFIX + name.upper() for name in Settings.__struct_fields__}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue  # kustomize's own file, not a cluster object
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _app_env_is_valid(env: dict[str, str]) -> None:
    names = {k for k in env if k.startswith(ENV_PREFIX)}
    assert names <= SETTINGS, names - SETTINGS
    # Not only the names: the values must parse as Settings would read them.
    from_env({k: str(v) for k, v in env.items()})


def redis_hosts(url: str) -> list[str]:
    nodes, _ = parse_nodes(url)
    return [host for host, _ in nodes]


def _command_exists(args: list[str]) -> None:
    assert args and args[0] in cli.commands, args  # type: ignore[attr-defined]


def test_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redpanda", "redis-cluster-init", "worker1", "worker2", "gateway", "prometheus",
            "grafana"} <= set(services)
    apps = {n: s for n, s in services.items() if s.get("image") == "livecommerce:latest"}
    assert set(apps) == {"worker1", "worker2", "gateway"}
    for name, service in apps.items():
        build = service["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).is_file(), name
        _command_exists(service["command"])
        _app_env_is_valid(service["environment"])
        env = service["environment"]
        assert env["LIVECOMMERCE_KAFKA_URL"].removeprefix("kafka://").split(":")[0] in services
        assert set(redis_hosts(env["LIVECOMMERCE_REDIS_URL"])) <= set(services)
    assert [s["command"][0] for s in apps.values()].count("worker") == 2
    gateway = services["gateway"]
    assert "8080:8080" in gateway["ports"]
    assert gateway["environment"]["LIVECOMMERCE_HTTP_PORT"] == "8080"
    assert gateway["ulimits"]["nofile"]["soft"] >= 20_000


def test_compose_mounts_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith("."):
                continue  # a named volume
            path = (DEPLOY / source).resolve()
            if path in OWNED_ELSEWHERE and not path.exists():
                continue
            assert path.exists(), f"{name}: {source}"


def test_grafana_provisioning_points_at_the_mounted_dashboard(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounted = {v.split(":")[1] for v in grafana["volumes"]}
    providers = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/dashboards/livecommerce.yml").read_text())["providers"]
    assert any(f"{p['options']['path']}/dashboard.json" in mounted for p in providers)
    sources = yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert sources[0]["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]


def test_dockerfile_copies_what_exists() -> None:
    for line in (DEPLOY / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and "--from=" not in line:  # not another stage's
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source


def test_kubernetes_manifests(manifests: list[dict[str, Any]]) -> None:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in manifests:
        assert doc["apiVersion"] and doc["metadata"]["name"]
        by_kind.setdefault(doc["kind"], []).append(doc)
    config = next(c for c in by_kind["ConfigMap"] if c["metadata"]["name"] == "livecommerce")
    _app_env_is_valid(config["data"])
    partitions = int(config["data"]["LIVECOMMERCE_PARTITIONS"])
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    worker, gateway = deployments["livecommerce-worker"], deployments["livecommerce-gateway"]
    # More workers than partitions would sit idle.
    assert 1 <= worker["spec"]["replicas"] <= partitions
    for deployment in (worker, gateway):
        spec = deployment["spec"]
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"][
            "labels"].items()
        (container,) = spec["template"]["spec"]["containers"]
        _command_exists(container["args"])
        assert [e["configMapRef"]["name"] for e in container["envFrom"]] == ["livecommerce"]
        _app_env_is_valid({e["name"]: e["value"] for e in container.get("env", [])})
    gateway_labels = gateway["spec"]["template"]["metadata"]["labels"]
    # The gateway's Service (the other one is the Redis Cluster's, checked below).
    (service,) = [s for s in by_kind["Service"] if s["spec"].get("clusterIP") != "None"]
    assert service["spec"]["selector"].items() <= gateway_labels.items()
    (container,) = gateway["spec"]["template"]["spec"]["containers"]
    port_names = {p["name"] for p in container["ports"]}
    assert all(p["targetPort"] in port_names for p in service["spec"]["ports"])
    secret_names = {s["metadata"]["name"] for s in by_kind["Secret"]}
    volumes = gateway["spec"]["template"]["spec"]["volumes"]
    assert {v["secret"]["secretName"] for v in volumes if "secret" in v} <= secret_names
    kustomization = yaml.safe_load((DEPLOY / "k8s/kustomization.yaml").read_text())
    assert all((DEPLOY / "k8s" / r).is_file() for r in kustomization["resources"])


def _scrape_job(config: dict[str, Any]) -> dict[str, Any]:
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "livecommerce-gateway"]
    return job


def test_prometheus_scrapes_with_a_monitor_token(compose: dict[str, Any]) -> None:
    """The room series need a monitor token: Prometheus sends one the gateway knows."""
    job = _scrape_job(yaml.safe_load((DEPLOY / "grafana/prometheus.yml").read_text()))
    assert job["authorization"]["type"] == "Bearer"
    mounts = dict(reversed(v.split(":")[:2]) for v in compose["services"]["prometheus"]["volumes"])
    token_file = DEPLOY / mounts[job["authorization"]["credentials_file"]]
    gateway_mounts = dict(reversed(v.split(":")[:2])
                          for v in compose["services"]["gateway"]["volumes"])
    tokens_path = compose["services"]["gateway"]["environment"]["LIVECOMMERCE_TOKENS_FILE"]
    tokens = Tokens.load(DEPLOY / gateway_mounts[tokens_path])
    assert tokens.role(token_file.read_text().strip()) == "monitor"


def test_kubernetes_prometheus_job_uses_the_secrets_monitor_token(
        manifests: list[dict[str, Any]]) -> None:
    (scrape,) = [d for d in manifests if d["kind"] == "ConfigMap"
                 and d["metadata"]["name"] == "livecommerce-prometheus"]
    job = _scrape_job(yaml.safe_load(scrape["data"]["scrape.yml"]))
    assert job["authorization"]["type"] == "Bearer"
    assert job["authorization"]["credentials_file"].endswith("/monitor-token")
    (secret,) = [d for d in manifests if d["kind"] == "Secret"]
    data = secret["stringData"]
    roles = json.loads(data["tokens.json"])["tokens"]
    assert roles[data["monitor-token"]] == "monitor"
    gateway = next(d for d in manifests if d["metadata"]["name"] == "livecommerce-gateway"
                   and d["kind"] == "Deployment")
    # Annotation-based scraping cannot send the token: it must not be offered.
    assert "prometheus.io/scrape" not in gateway["spec"]["template"]["metadata"].get(
        "annotations", {})


def test_compose_runs_a_redis_cluster(compose: dict[str, Any]) -> None:
    """Six nodes in cluster mode, formed (3 masters, a replica each) by a one-shot service
    every app waits for; the apps name nodes of it."""
    services = compose["services"]
    nodes = sorted(n for n, s in services.items() if "--cluster-enabled" in s.get("command", []))
    assert len(nodes) == 6
    for name in nodes:
        command = services[name]["command"]
        assert command[command.index("--cluster-enabled") + 1] == "yes"
        assert command[command.index("--cluster-announce-hostname") + 1] == name
    init = services["redis-cluster-init"]
    script = " ".join(init["command"])
    assert "--cluster create" in script and "--cluster-replicas 1" in script
    assert set(init["depends_on"]) == set(nodes)
    assert all("redis-$$n" in script and str(i) in script for i in range(1, 7))
    for name in ("worker1", "worker2", "gateway"):
        service = services[name]
        assert service["depends_on"]["redis-cluster-init"]["condition"] == \
            "service_completed_successfully"
        assert set(redis_hosts(service["environment"]["LIVECOMMERCE_REDIS_URL"])) <= set(nodes)


def test_kubernetes_runs_a_redis_cluster(manifests: list[dict[str, Any]]) -> None:
    """A StatefulSet in cluster mode behind a headless Service, formed by a Job naming
    every pod; the ConfigMap's Redis URL names pods of it."""
    [sts] = [d for d in manifests if d["kind"] == "StatefulSet"]
    [headless] = [d for d in manifests if d["kind"] == "Service"
                  and d["metadata"]["name"] == sts["spec"]["serviceName"]]
    [job] = [d for d in manifests if d["kind"] == "Job"]
    spec = sts["spec"]
    assert spec["replicas"] == 6
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"][
        "labels"].items()
    (redis,) = spec["template"]["spec"]["containers"]
    args = " ".join(redis["args"])
    assert "--cluster-enabled yes" in args and "--cluster-announce-hostname" in args
    assert {p["containerPort"] for p in redis["ports"]} == {6379, 16379}  # data and bus
    (create,) = job["spec"]["template"]["spec"]["containers"]
    script = " ".join(create["args"])
    assert "--cluster create" in script and "--cluster-replicas 1" in script
    pods = [f"{sts['metadata']['name']}-{n}" for n in range(spec["replicas"])]
    assert f"for n in {' '.join(str(n) for n in range(spec['replicas']))}" in script
    assert f"{sts['metadata']['name']}-$n.{headless['metadata']['name']}" in script
    config = next(c for c in manifests if c["kind"] == "ConfigMap"
                  and c["metadata"]["name"] == "livecommerce")
    hosts = redis_hosts(config["data"]["LIVECOMMERCE_REDIS_URL"])
    assert hosts and all(h.split(".")[0] in pods and h.split(".")[1] == headless["metadata"][
        "name"] for h in hosts)
