"""The deployment files: docker-compose.yml, the Dockerfile, the OpenTelemetry Collector
configurations and what they mount. No Docker engine runs here, so these tests check what
can be checked without one: Compose's own validation (``docker-compose config``), that
every referenced file exists, that the Collector pipelines reference defined components
and each other consistently, current component names, and pinned images."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
COLLECTOR = ROOT / "collector-config"
COLLECTOR_FILES = ("otelcol.yaml", "otelcol-loadbalancing.yaml", "otelcol-tier2.yaml")

DEPRECATED_COMPONENTS = {
    "jaeger": "removed: Jaeger takes OTLP (otlp_grpc)",
    "logging": "removed: use debug",
    "otlp": "deprecated alias of otlp_grpc (exporter)",
    "otlphttp": "deprecated alias of otlp_http",
    "loadbalancing": "deprecated alias of load_balancing",
    "spanmetrics": "deprecated alias of span_metrics",
}
"""Exporter and connector types that must not appear (the ``otlp`` *receiver* keeps its
name). The Collector image is pinned to a version that knows the current names."""


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


@pytest.fixture(scope="module")
def collectors() -> dict[str, dict[str, Any]]:
    return {name: load_yaml(COLLECTOR / name) for name in COLLECTOR_FILES}


def component_type(component_id: str) -> str:
    return component_id.split("/", 1)[0]


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of the service's bind mounts from the repository."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                out.append((volume["source"], volume["target"]))
            continue
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


def port_of(endpoint: str) -> int:
    return int(endpoint.rsplit(":", 1)[1])


# -- docker compose -----------------------------------------------------------------------


def test_docker_compose_config_validates() -> None:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.skip(
            "the `docker-compose` binary is not installed (Debian: apt-get install -y "
            "docker-compose): cannot run Compose's own validation"
        )
    proc = subprocess.run(
        [binary, "-f", str(COMPOSE), "config"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    assert set(resolved["services"]) == set(load_yaml(COMPOSE)["services"])
    # the defaults of the interpolated variables are filled in
    env = resolved["services"]["neo4j"]["environment"]
    assert env["NEO4J_AUTH"].startswith("neo4j/") and len(env["NEO4J_AUTH"]) >= len("neo4j/") + 8


def test_services_and_their_wiring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= {
        "neo4j", "redis", "jaeger", "otel-collector", "spangraph", "prometheus", "grafana",
    }  # fmt: skip
    env = services["spangraph"]["environment"]
    assert env["NEO4J_URI"] == "neo4j://neo4j:7687"
    assert env["NEO4J_USER"] == "neo4j"
    assert env["NEO4J_PASSWORD"] == "${NEO4J_PASSWORD:-spangraph-local}"
    assert (
        services["neo4j"]["environment"]["NEO4J_AUTH"] == "neo4j/${NEO4J_PASSWORD:-spangraph-local}"
    )
    assert env["SPANGRAPH_REDIS_URL"] == "redis://redis:6379/0"
    assert env["SPANGRAPH_JAEGER_URL"] == "http://localhost:16686"
    assert services["spangraph"]["depends_on"] == {
        "neo4j": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
    }
    for name in ("neo4j", "redis", "prometheus", "grafana"):
        assert "test" in services[name].get("healthcheck", {}), f"{name} has no healthcheck"
    # every depends_on condition on health is backed by a healthcheck (or the Dockerfile's)
    for name, service in services.items():
        for dep, cond in (service.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            if cond.get("condition") == "service_healthy":
                assert "healthcheck" in services[dep] or "build" in services[dep], (name, dep)
    # host ports: the UIs and the Collector's OTLP ports; Jaeger's OTLP stays internal
    published = {
        name: {str(p).rsplit(":", 1)[-1] for p in s.get("ports", [])}
        for name, s in services.items()
    }
    assert "16686" in published["jaeger"]
    assert not published["jaeger"] & {"4317", "4318"}, (
        "Jaeger's OTLP ports clash with the Collector's"
    )
    assert published["otel-collector"] >= {"4317", "4318"}
    assert "8000" in published["spangraph"] and "3000" in published["grafana"]
    assert published["neo4j"] >= {"7474", "7687"}


def test_every_referenced_file_exists(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), f"{name}: build context {context} is missing"
            dockerfile = context / (
                "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            )
            assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
        for source, target in bind_mounts(service):
            path = (ROOT / source).resolve()
            assert path.exists(), f"{name}: mounted {source} -> {target} is missing"
            assert ROOT in path.parents, f"{name}: {source} is outside the repository"


def test_collector_service_loads_its_config(compose: dict[str, Any]) -> None:
    collector = compose["services"]["otel-collector"]
    config_arg = next(a for a in collector["command"] if a.startswith("--config="))
    mounts = dict((t, s) for s, t in bind_mounts(collector))
    assert mounts[config_arg.removeprefix("--config=")] == "./collector-config/otelcol.yaml"


def test_grafana_provisioning_is_mounted(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {t: s for s, t in bind_mounts(grafana)}
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    datasources = [load_yaml(p) for p in sorted((provisioning / "datasources").glob("*.yaml"))]
    providers = [load_yaml(p) for p in sorted((provisioning / "dashboards").glob("*.yaml"))]
    assert datasources and providers
    (source,) = [d for doc in datasources for d in doc["datasources"]]
    assert source["type"] == "prometheus"
    assert urlsplit(source["url"]).hostname in compose["services"]
    (provider,) = [p for doc in providers for p in doc["providers"]]
    path = provider["options"]["path"]
    assert path in mounts, f"the dashboards provider reads {path}, which is not mounted"
    dashboards = sorted((ROOT / mounts[path]).glob("*.json"))
    assert {p.name for p in dashboards} >= {"spangraph-health.json", "workflow-red.json"}
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(path + "/")
    assert (ROOT / mounts[path] / home.removeprefix(path + "/")).is_file()


def test_prometheus_scrapes_the_collector_exporter(
    compose: dict[str, Any], collectors: dict[str, dict[str, Any]]
) -> None:
    prometheus = compose["services"]["prometheus"]
    mounts = {t: s for s, t in bind_mounts(prometheus)}
    config_arg = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    config = load_yaml(ROOT / mounts[config_arg.removeprefix("--config.file=")])
    targets = [
        t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    exporter = collectors["otelcol.yaml"]["exporters"]["prometheus"]
    assert targets == [f"otel-collector:{port_of(exporter['endpoint'])}"]
    assert "otel-collector" in compose["services"]


def test_images_are_pinned(compose: dict[str, Any]) -> None:
    images = {}
    for name, service in compose["services"].items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name}: neither image nor build"
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and "/" not in tag, f"{name}: image {image} has no tag"
        assert tag != "latest", f"{name}: image {image} is not pinned"
        images[name] = image
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("FROM "):
            image = line.split()[1]
            assert ":" in image and not image.endswith(":latest"), line
    assert images["otel-collector"].startswith("otel/opentelemetry-collector-contrib:0.")
    assert re.fullmatch(r"neo4j:5\.26\.\d+-community", images["neo4j"])
    assert re.fullmatch(r"redis:7\.\d+\.\d+(-alpine)?", images["redis"])
    assert re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", images["jaeger"])


# -- Dockerfile ---------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert all(f.split()[0] == "python:3.12-slim" for f in froms), froms
    final_stage = instructions[[kw for kw, _ in instructions].index("FROM", 1) :]
    users = [rest for kw, rest in final_stage if kw == "USER"]
    assert users and users[-1] not in ("root", "0"), "the service must not run as root"
    assert ("EXPOSE", "8000") in instructions
    (cmd,) = [rest for kw, rest in instructions if kw == "CMD"]
    assert cmd == '["spangraph", "serve", "--host", "0.0.0.0", "--port", "8000"]'
    (health,) = [rest for kw, rest in instructions if kw == "HEALTHCHECK"]
    assert "/api/health" in health and "urllib" in health
    installs = " ".join(rest for kw, rest in instructions if kw == "RUN")
    match = re.search(r'pip install "\.\[([a-z0-9,]+)\]"', installs)
    assert match, installs
    extras = set(match.group(1).split(","))
    assert extras == {"server", "neo4j", "otlp"}
    with (ROOT / "pyproject.toml").open("rb") as f:
        declared = tomllib.load(f)["project"]["optional-dependencies"]
    assert extras <= set(declared)


def test_dockerignore_keeps_what_the_build_copies() -> None:
    patterns = [
        p.strip()
        for p in (ROOT / ".dockerignore").read_text().splitlines()
        if p.strip() and not p.startswith("#")
    ]
    copied = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in rest:
            copied += rest.split()[:-1]
    # what the build backend reads: setup.py (the C extension), the readme and license
    # files pyproject.toml names (a license file it names and cannot find fails the build)
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    needed = {"pyproject.toml", "setup.py", "src", project["readme"], *project["license-files"]}
    assert set(copied) == needed
    for source in copied:
        assert (ROOT / source).exists(), source
        excluded = [p for p in patterns if fnmatch.fnmatch(source, p.rstrip("/"))]
        assert not excluded, f"{source} is excluded by .dockerignore {excluded}"
    for heavy in (".git", "tests", "**/node_modules", ".venv"):
        assert heavy in patterns


# -- Collector configurations ---------------------------------------------------------------


@pytest.mark.parametrize("name", COLLECTOR_FILES)
def test_collector_pipelines_are_consistent(
    name: str, collectors: dict[str, dict[str, Any]]
) -> None:
    config = collectors[name]
    defined = {
        kind: set(config.get(kind) or {})
        for kind in ("receivers", "processors", "exporters", "connectors", "extensions")
    }
    service = config["service"]
    assert set(service.get("extensions", [])) <= defined["extensions"]
    used: dict[str, set[str]] = {kind: set() for kind in defined}
    connector_as = {c: set() for c in defined["connectors"]}
    for pipeline_id, pipeline in service["pipelines"].items():
        signal = component_type(pipeline_id)
        assert signal in ("traces", "metrics", "logs"), pipeline_id
        assert pipeline.get("receivers") and pipeline.get("exporters"), pipeline_id
        for receiver in pipeline["receivers"]:
            if receiver in defined["connectors"]:
                connector_as[receiver].add("receiver")
                used["connectors"].add(receiver)
            else:
                assert receiver in defined["receivers"], f"{pipeline_id}: unknown {receiver}"
                used["receivers"].add(receiver)
        for processor in pipeline.get("processors", []):
            assert processor in defined["processors"], f"{pipeline_id}: unknown {processor}"
            used["processors"].add(processor)
        for exporter in pipeline["exporters"]:
            if exporter in defined["connectors"]:
                connector_as[exporter].add("exporter")
                used["connectors"].add(exporter)
            else:
                assert exporter in defined["exporters"], f"{pipeline_id}: unknown {exporter}"
                used["exporters"].add(exporter)
        processors = pipeline.get("processors", [])
        if processors:
            assert processors[0] == "memory_limiter", f"{pipeline_id}: memory_limiter first"
    for kind in ("receivers", "processors", "exporters", "connectors"):
        assert used[kind] == defined[kind], f"{name}: {kind} defined but unused"
    for connector, roles in connector_as.items():
        assert roles == {"receiver", "exporter"}, f"{connector} must join two pipelines"


@pytest.mark.parametrize("name", COLLECTOR_FILES)
def test_collector_uses_current_component_names(
    name: str, collectors: dict[str, dict[str, Any]]
) -> None:
    config = collectors[name]
    for kind in ("exporters", "connectors"):
        for component in config.get(kind) or {}:
            kind_name = component_type(component)
            assert kind_name not in DEPRECATED_COMPONENTS, (
                f"{name}: {kind} {component}: {DEPRECATED_COMPONENTS[kind_name]}"
            )
    for receiver in config.get("receivers") or {}:
        assert component_type(receiver) != "jaeger"


def test_main_collector(compose: dict[str, Any], collectors: dict[str, dict[str, Any]]) -> None:
    config = collectors["otelcol.yaml"]
    protocols = config["receivers"]["otlp"]["protocols"]
    assert port_of(protocols["grpc"]["endpoint"]) == 4317
    assert port_of(protocols["http"]["endpoint"]) == 4318
    jaeger = config["exporters"]["otlp_grpc/jaeger"]
    assert jaeger["endpoint"] == "jaeger:4317" and jaeger["tls"]["insecure"] is True
    assert "4317" in {str(p) for p in compose["services"]["jaeger"]["expose"]}
    spangraph_exporter = config["exporters"]["otlp_http/spangraph"]
    url = urlsplit(spangraph_exporter["endpoint"])
    assert (url.scheme, url.hostname, url.port, url.path) == ("http", "spangraph", 8000, "")
    assert url.hostname in compose["services"]
    assert spangraph_exporter["compression"] == "gzip"
    traces = config["service"]["pipelines"]["traces"]
    assert traces["processors"] == ["memory_limiter", "batch"]
    assert set(traces["exporters"]) == {"otlp_grpc/jaeger", "otlp_http/spangraph"}
    # workflow RED metrics: only spangraph.kind = workflow spans reach span_metrics
    red = config["service"]["pipelines"]["traces/workflow_red"]
    assert red["exporters"] == ["span_metrics"]
    filters = [config["processors"][p] for p in red["processors"] if p.startswith("filter")]
    assert filters == [
        {
            "error_mode": "ignore",
            "trace_conditions": ['span.attributes["spangraph.kind"] != "workflow"'],
        }
    ]
    metrics = config["service"]["pipelines"]["metrics"]
    assert set(metrics["receivers"]) == {"otlp", "span_metrics"}
    assert metrics["exporters"] == ["prometheus"]
    assert port_of(config["exporters"]["prometheus"]["endpoint"]) == 8889


def test_scale_out_collectors(collectors: dict[str, dict[str, Any]]) -> None:
    tier1 = collectors["otelcol-loadbalancing.yaml"]
    tier2 = collectors["otelcol-tier2.yaml"]
    balancer = tier1["exporters"]["load_balancing"]
    assert balancer["routing_key"] == "traceID"
    assert "endpoint" not in balancer["protocol"]["otlp"]  # filled in per backend
    hostnames = balancer["resolver"]["static"]["hostnames"]
    assert len(hostnames) >= 2 and len(set(hostnames)) == len(hostnames)
    # the backends are tier-2 Collectors on their OTLP gRPC port (the load_balancing
    # exporter speaks gRPC; spangraph receives OTLP/HTTP only)
    tier2_grpc = port_of(tier2["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"])
    assert {port_of(h) for h in hostnames} == {tier2_grpc}
    assert all(not h.startswith("spangraph") for h in hostnames)
    assert "load_balancing" in tier1["service"]["pipelines"]["traces"]["exporters"]
    (exporter_id,) = tier2["exporters"]
    assert component_type(exporter_id) == "otlp_http"
    assert "spangraph" in tier2["exporters"][exporter_id]["endpoint"]
    assert tier2["exporters"][exporter_id]["compression"] == "gzip"
    assert tier2["service"]["pipelines"]["traces"]["exporters"] == [exporter_id]


def test_batches_sent_to_spangraph_fit_its_body_limit(
    collectors: dict[str, dict[str, Any]],
) -> None:
    """spangraph answers 413 to a request over 16 MiB, which the Collector does not retry:
    batches of 4 096 or 8 192 spans were lost once their spans averaged 4 or 2 KiB (an
    LLM call's prompt and answer easily do). A batch must leave 32 KiB a span."""
    from spangraph.server.ingest import MAX_BODY_BYTES, MAX_SPANS_PER_REQUEST

    checked = 0
    for name, config in collectors.items():
        for pipeline in config["service"]["pipelines"].values():
            if not any(e.startswith("otlp_http/spangraph") for e in pipeline["exporters"]):
                continue
            for processor in pipeline.get("processors", []):
                if component_type(processor) == "batch":
                    size = config["processors"][processor]["send_batch_max_size"]
                    assert 0 < size <= MAX_BODY_BYTES // (32 * 1024), (name, size)
                    assert size <= MAX_SPANS_PER_REQUEST
                    checked += 1
    assert checked == 2  # otelcol.yaml, otelcol-tier2.yaml


def test_tier2_receives_the_batches_tier1_sends(collectors: dict[str, dict[str, Any]]) -> None:
    """Tier 1 sends batches of up to send_batch_max_size spans over gRPC, whose receiver
    refuses a message over 4 MiB unless max_recv_msg_size_mib says more: batches of 4 096
    spans of 1 KiB were refused (and lost). Tier 2 must take 32 KiB a span of them, as
    spangraph itself does."""
    tier1 = collectors["otelcol-loadbalancing.yaml"]
    tier2 = collectors["otelcol-tier2.yaml"]
    [batch] = [
        p for p in tier1["service"]["pipelines"]["traces"]["processors"]
        if component_type(p) == "batch"
    ]  # fmt: skip
    spans = tier1["processors"][batch]["send_batch_max_size"]
    grpc = tier2["receivers"]["otlp"]["protocols"]["grpc"]
    limit_mib = grpc.get("max_recv_msg_size_mib", 4)  # the Collector's default
    assert limit_mib * 1024 * 1024 >= spans * 32 * 1024, (spans, limit_mib)
