"""The dashboards in ``dashboards/``: every Cypher query of the NeoDash dashboard passes
Neo4j's linter and runs, with the answers it is meant to give, on a graph written by the
SDK; the Grafana dashboards parse and use only the metric names that exist (those
``spangraph._metrics`` creates, and the workflow RED metrics of the Collector's
span_metrics connector), under the names the Collector's prometheus exporter gives them."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import spangraph
from spangraph._metrics import INSTRUMENTS, InstrumentSpec
from test_cypher_lint import failures, report, run_linter

ROOT = Path(__file__).resolve().parent.parent
NEODASH = ROOT / "dashboards" / "neodash" / "spangraph-branch-analysis.json"
GRAFANA = ROOT / "dashboards" / "grafana"
GRAFANA_DASHBOARDS = ("spangraph-health.json", "workflow-red.json")
COLLECTOR = ROOT / "collector-config" / "otelcol.yaml"

NON_CYPHER_REPORTS = {"text", "iframe"}
"""NeoDash report types whose ``query`` is not Cypher (markdown, a URL)."""
PROJECT_PARAMETER = "neodash_workflow_project_id"


# -- NeoDash ----------------------------------------------------------------------------


def neodash() -> dict[str, Any]:
    return json.loads(NEODASH.read_text())


def cypher_reports() -> dict[str, dict[str, Any]]:
    """'page / report title' -> report, for every report that runs Cypher."""
    out = {}
    for page in neodash()["pages"]:
        for report_ in page["reports"]:
            if report_["type"] in NON_CYPHER_REPORTS:
                continue
            key = f"{page['title']} / {report_['title']}"
            assert key not in out, f"two reports named {key}"
            out[key] = report_
    return out


def test_neodash_dashboard_format() -> None:
    dashboard = neodash()
    assert dashboard["version"] == "2.4"
    assert dashboard["title"] and dashboard["uuid"]
    assert isinstance(dashboard["settings"]["parameters"], dict)
    ids = []
    for page in dashboard["pages"]:
        assert page["title"] and page["reports"]
        for r in page["reports"]:
            ids.append(r["id"])
            assert {"title", "query", "type", "x", "y", "width", "height", "selection",
                    "settings"} <= set(r), r["title"]  # fmt: skip
            assert r["type"] in {"table", "bar", "select", "text", "value", "line", "pie"}
            assert r["x"] >= 0 and r["x"] + r["width"] <= 24, r["title"]  # 24 columns in 2.4
            if r["type"] == "bar":
                assert set(r["selection"]) == {"index", "value", "key"}
            if r["type"] == "select":
                assert r["settings"]["parameterName"] == PROJECT_PARAMETER
    assert len(ids) == len(set(ids)), "report ids must be unique"
    # the parameters the queries use are defined (with a default) by the dashboard
    used = {m for r in cypher_reports().values() for m in re.findall(r"\$(\w+)", r["query"])}
    assert used == {PROJECT_PARAMETER, "input"}  # $input: the selector's own search text
    assert dashboard["settings"]["parameters"][PROJECT_PARAMETER] == ""


def test_neodash_queries_pass_neo4j_linter() -> None:
    statements = {name: r["query"] for name, r in cypher_reports().items()}
    bad = failures(run_linter(statements))
    assert not bad, report(bad, statements)


class Boom(Exception):
    pass


def branch_analysis_runs() -> list[str]:
    """Three runs of one agent: a decision with three options (one never explored), two
    branches (one with a failing check), and a step retried up to twice that recovers in
    the first two runs and is exhausted in the third (which fails the run)."""
    ids = []
    for i in range(3):
        calls: list[int] = []
        must_fail = 2 if i < 2 else 99

        @spangraph.step("fetch", retries=2, backoff=0)
        def fetch() -> None:
            calls.append(1)  # noqa: B023 - a fresh list per run, used within it
            if len(calls) < must_fail:  # noqa: B023
                raise Boom(f"attempt {len(calls)}")  # noqa: B023

        with contextlib.suppress(Boom), spangraph.workflow("research") as run:
            with spangraph.decision("route", options=["search", "answer", "ask"]) as d:
                with d.option("search"):
                    pass
                if i == 0:
                    with d.option("answer"):
                        pass
                d.choose("search" if i < 2 else "answer", reason="test")
            with spangraph.branch("fast"), spangraph.step("draft"):
                pass
            with spangraph.branch("careful"):
                with spangraph.step("draft"):
                    pass
                with contextlib.suppress(Boom), spangraph.step("check"):
                    raise Boom("check failed")
            fetch()
        ids.append(run.workflow_id)
    assert spangraph.flush(10)
    return ids


def rows_of(sg: spangraph.Spangraph, query: str, project: str) -> list[dict[str, Any]]:
    assert sg.store is not None
    params = {PROJECT_PARAMETER: project, f"{PROJECT_PARAMETER}_display": project, "input": ""}
    rows = sg.store.query(query, params)
    # numbers as plain ints where whole (FalkorDB returns sums as floats)
    return [
        {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in row.items()}
        for row in rows
    ]


def by_title(title: str) -> str:
    (query,) = [r["query"] for name, r in cypher_reports().items() if name.endswith(f"/ {title}")]
    return query


def test_neodash_queries_run_on_the_graph(sg: spangraph.Spangraph) -> None:
    runs = branch_analysis_runs()
    project = sg.settings.project
    for name, r in cypher_reports().items():
        for chosen in (project, ""):  # one project, all projects
            assert rows_of(sg, r["query"], chosen), f"{name}: no rows (project {chosen!r})"
        if r["type"] != "select":
            assert rows_of(sg, r["query"], "no-such-project") == [], f"{name} ignores the filter"

    outcomes = rows_of(sg, by_title("Decision outcomes: options offered, explored, chosen, "
                                    "and the runs that chose them"), project)  # fmt: skip
    assert [(r["decision"], r["option"], r["offered"], r["explored"], r["chosen"],
             r["run_success_pct"]) for r in outcomes] == [
        ("route", "search", 3, 3, 2, 100),
        ("route", "answer", 3, 1, 1, 0),
        ("route", "ask", 3, 0, 0, None),
    ]  # fmt: skip
    assert outcomes[0]["mean_run_ms"] > 0 and outcomes[2]["mean_run_ms"] is None

    choices = rows_of(sg, by_title("Choices made (decision / option)"), project)
    assert choices == [
        {"choice": "route / search", "chosen": 2},
        {"choice": "route / answer", "chosen": 1},
    ]

    hotspots = rows_of(sg, by_title("Failure hotspots: steps failing most"), project)
    assert [(r["step"], r["failures"], r["attempts"], r["runs_with_failures"])
            for r in hotspots] == [("fetch", 5, 7, 3), ("check", 3, 3, 3)]  # fmt: skip
    assert [r["failure_pct"] for r in hotspots] == [71.4, 100]

    (retries,) = rows_of(sg, by_title("Retry rates per step (RETRY_OF chains)"), project)
    assert retries == {
        "step": "fetch", "calls": 3, "retried": 3, "retry_pct": 100, "mean_attempts": 2.33,
        "recovered": 2, "exhausted": 1,
    }  # fmt: skip

    chains = rows_of(sg, by_title("Recent retry chains"), project)
    assert [(r["run"], r["step"], r["attempts"], r["outcome"]) for r in chains] == [
        (runs[2], "fetch", 3, "failed"),
        (runs[1], "fetch", 2, "completed"),
        (runs[0], "fetch", 2, "completed"),
    ]
    assert chains[0]["last_error"] and "attempt 3" in chains[0]["last_error"]

    branches = rows_of(sg, by_title("Branch comparison (per branch name, across runs)"), project)
    assert [(r["branch"], r["runs"], r["nodes"], r["failed_nodes"], r["failed_branches"])
            for r in branches] == [("careful", 3, 6, 3, 0), ("fast", 3, 3, 0, 0)]  # fmt: skip
    assert all(r["mean_duration_ms"] >= 0 for r in branches)

    (selector,) = {r["query"] for r in cypher_reports().values() if r["type"] == "select"}
    assert rows_of(sg, selector, "") == [{"value": project, "display": project}]


# -- Grafana ----------------------------------------------------------------------------


def prometheus_names(spec: InstrumentSpec) -> set[str]:
    """The series names the Collector's prometheus exporter gives an OTel instrument:
    dots to underscores, the unit as a suffix (annotations in braces dropped; ``1`` is
    ``ratio`` on gauges only), ``_total`` on counters, ``_bucket`` / ``_sum`` / ``_count``
    on histograms."""
    base = re.sub(r"[^a-zA-Z0-9_]", "_", spec.name)
    unit = re.sub(r"\{[^}]*\}", "", spec.unit)
    units = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "": ""}
    units["1"] = "ratio" if spec.kind == "gauge" else ""
    suffix = units[unit]
    if suffix and not base.endswith("_" + suffix):
        base += "_" + suffix
    if spec.kind == "counter":
        return {base + "_total"}
    if spec.kind == "histogram":
        return {base + "_bucket", base + "_sum", base + "_count"}
    return {base}


def span_metrics_names() -> tuple[set[str], set[str]]:
    """(metric names, label names) of the workflow RED metrics of otelcol.yaml."""
    connector = yaml.safe_load(COLLECTOR.read_text())["connectors"]["span_metrics"]
    namespace = connector["namespace"]
    unit = connector["histogram"]["unit"]
    metrics = prometheus_names(InstrumentSpec(f"{namespace}.calls", "counter", "", ""))
    metrics |= prometheus_names(InstrumentSpec(f"{namespace}.duration", "histogram", unit, ""))
    labels = {re.sub(r"[^a-zA-Z0-9_]", "_", d["name"]) for d in connector["dimensions"]}
    return metrics, labels


def test_prometheus_names_of_spangraph_metrics() -> None:
    names = set().union(*(prometheus_names(s) for s in INSTRUMENTS))
    assert names == {
        "spangraph_processor_queue_size",
        "spangraph_processor_items_sent_total",
        "spangraph_processor_items_dropped_total",
        "spangraph_processor_failed_batches_total",
        "spangraph_processor_retries_total",
        "spangraph_processor_send_duration_seconds_bucket",
        "spangraph_processor_send_duration_seconds_sum",
        "spangraph_processor_send_duration_seconds_count",
    }
    metrics, labels = span_metrics_names()
    assert metrics == {
        "spangraph_workflow_calls_total",
        "spangraph_workflow_duration_seconds_bucket",
        "spangraph_workflow_duration_seconds_sum",
        "spangraph_workflow_duration_seconds_count",
    }
    assert labels == {"spangraph_workflow_name", "spangraph_project_id"}


def grafana(name: str) -> dict[str, Any]:
    return json.loads((GRAFANA / name).read_text())


def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression: panel targets and template variable queries."""
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append(target["expr"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        out.append(query["query"] if isinstance(query, dict) else query)
    return out


def datasource_uid() -> str:
    provisioning = GRAFANA / "provisioning" / "datasources"
    (source,) = [
        d for p in provisioning.glob("*.yaml") for d in yaml.safe_load(p.read_text())["datasources"]
    ]
    return source["uid"]


@pytest.mark.parametrize("name", GRAFANA_DASHBOARDS)
def test_grafana_dashboard_format(name: str) -> None:
    dashboard = grafana(name)
    assert dashboard["uid"] and dashboard["title"]
    uid = datasource_uid()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid
            assert target["expr"].strip()
    for variable in dashboard["templating"]["list"]:
        assert variable["datasource"]["uid"] == uid


def test_health_dashboard_uses_the_metrics_spangraph_produces() -> None:
    known = set().union(*(prometheus_names(s) for s in INSTRUMENTS))
    used: set[str] = set()
    for expr in expressions(grafana("spangraph-health.json")):
        names = set(re.findall(r"\bspangraph_\w+", expr))
        assert names, f"no spangraph metric in {expr!r}"
        assert names <= known, f"unknown metric(s) {names - known} in {expr!r}"
        used |= names
    # every instrument is on the dashboard
    for spec in INSTRUMENTS:
        assert prometheus_names(spec) & used, f"{spec.name} is not on the dashboard"
    text = json.dumps(grafana("spangraph-health.json"))
    assert "histogram_quantile(0.5," in text and "histogram_quantile(0.99," in text


def test_workflow_red_dashboard_uses_the_span_metrics_of_the_collector() -> None:
    metrics, labels = span_metrics_names()
    used: set[str] = set()
    for expr in expressions(grafana("workflow-red.json")):
        names = set(re.findall(r"\bspangraph_\w+", expr))
        assert names & metrics, f"no workflow metric in {expr!r}"
        assert names <= metrics | labels, f"unknown name(s) {names - metrics - labels} in {expr!r}"
        used |= names
    assert used >= metrics - {"spangraph_workflow_duration_seconds_sum",
                              "spangraph_workflow_duration_seconds_count"}  # fmt: skip
    text = json.dumps(grafana("workflow-red.json"))
    assert 'status_code=\\"STATUS_CODE_ERROR\\"' in text  # errors: the span status


def test_promql_parses(tmp_path: Path) -> None:
    """Every expression is valid PromQL (Prometheus' own ``promtool``, where installed:
    Debian's ``prometheus`` package)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian package `prometheus`) is not installed")
    rules = []
    for name in GRAFANA_DASHBOARDS:
        for i, expr in enumerate(expressions(grafana(name))):
            if expr.startswith("label_values("):
                match = re.fullmatch(r"label_values\((.+), *(\w+)\)", expr)
                assert match, expr
                expr = match.group(1)
            concrete = (
                expr.replace("$__rate_interval", "1m")
                .replace("$__range", "1h")
                .replace("$__interval", "1m")
            )
            concrete = re.sub(r"\$\w+", ".*", concrete)
            rules.append({"record": f"check:{Path(name).stem.replace('-', '_')}:{i}",
                          "expr": concrete})  # fmt: skip
    rules_file = tmp_path / "grafana-promql-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    proc = subprocess.run(
        [promtool, "check", "rules", str(rules_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    config = ROOT / "dashboards" / "prometheus" / "prometheus.yml"
    proc = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
