"""The monitoring files under deploy/: the Grafana dashboard is well formed and queries only metrics that
exist, and the example Prometheus configuration scrapes the workers and Flower."""

from __future__ import annotations

import itertools
import re
from typing import Any

import prometheus_client
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hfqueue.state.broker import CHUNK_TASK
from tests import dashboard as dash

pytestmark = pytest.mark.timeout(30)

DATASOURCE = "${datasource}"

# The worker's metric families as prometheus_client's text parser names them (counters lose _total).
WORKER_FAMILIES = {
    "hfq_rows", "hfq_tokens", "hfq_batches", "hfq_batch_rows", "hfq_batch_padding_efficiency",
    "hfq_batch_seconds", "hfq_queue_wait_seconds", "hfq_model_loads", "hfq_model_load_seconds",
    "hfq_model_cache_hits", "hfq_model_cache_evictions", "hfq_models_resident", "hfq_oom_splits", "hfq_exact_fallbacks", "hfq_rows_reused",
    "hfq_errors", "hfq_chunks", "hfq_gpu_memory_allocated_bytes", "hfq_gpu_memory_reserved_bytes",
    "hfq_gpu_memory_total_bytes", "process_resident_memory_bytes",
}


@pytest.fixture(scope="module")
def board() -> dict[str, Any]:
    return dash.load()


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load(dash.PROMETHEUS_CONFIG.read_text(encoding="utf-8"))


def flower_families() -> set[str]:
    """The metric families the installed Flower registers, read from the registry rather than its source."""
    from flower.events import get_prometheus_metrics

    get_prometheus_metrics()
    return {m.name for m in prometheus_client.REGISTRY.collect() if m.name.startswith("flower_")}


def balanced(expr: str) -> bool:
    """Whether the brackets of a PromQL expression pair up, outside string literals."""
    pairs = {")": "(", "]": "[", "}": "{"}
    stack: list[str] = []
    for char in re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr):
        if char in "([{":
            stack.append(char)
        elif char in pairs:
            if not stack or stack.pop() != pairs[char]:
                return False
    return not stack


def test_dashboard_parses_as_a_grafana_model(board: dict[str, Any]) -> None:
    # given the dashboard file, loaded as JSON by the fixture

    # then it is a dashboard Grafana imports by file provisioning and through the UI: a fixed uid, no
    # instance-specific id, no __inputs to fill in, and a current schema
    assert board["uid"] == "hfqueue" and board["title"]
    assert board.get("id") is None
    assert "__inputs" not in board
    assert board["schemaVersion"] >= 39
    assert [p["title"] for p in board["panels"] if p["type"] == "row"] == [
        "Throughput", "Batch efficiency", "Models", "Errors", "Memory"]


def test_template_variables(board: dict[str, Any]) -> None:
    # given the dashboard's template variables
    variables = {v["name"]: v for v in board["templating"]["list"]}

    # then the data source is a Prometheus variable, and worker, task and model are multi-value label
    # queries on hfq_rows_total through it, with All
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("worker", "task", "model"):
        variable = variables[name]
        assert variable["type"] == "query"
        assert variable["datasource"]["uid"] == DATASOURCE
        assert re.fullmatch(rf"label_values\(hfq_rows_total(\{{[^}}]*\}})?, {name}\)", variable["definition"])
        assert variable["query"]["query"] == variable["definition"]
        assert variable["multi"] and variable["includeAll"]


def test_panel_ids_are_unique(board: dict[str, Any]) -> None:
    # given every panel, rows included
    ids = [p["id"] for p in dash.panels(board)]

    # then no two share an id
    assert len(ids) == len(set(ids))


def test_panels_do_not_overlap_and_fit_the_grid(board: dict[str, Any]) -> None:
    # given the panels' grid rectangles
    boxes = {p["id"]: p["gridPos"] for p in dash.panels(board)}

    # then each lies within Grafana's 24 columns and no two share a cell
    for box in boxes.values():
        assert box["x"] >= 0 and box["y"] >= 0 and box["w"] > 0 and box["h"] > 0
        assert box["x"] + box["w"] <= 24
    for (a, p), (b, q) in itertools.combinations(boxes.items(), 2):
        apart = (p["x"] + p["w"] <= q["x"] or q["x"] + q["w"] <= p["x"]
                 or p["y"] + p["h"] <= q["y"] or q["y"] + q["h"] <= p["y"])
        assert apart, f"panels {a} and {b} overlap"


def test_every_panel_and_target_uses_the_datasource_variable(board: dict[str, Any]) -> None:
    # given the panels that query something, and all their targets
    pairs = list(dash.targets(board))
    assert pairs

    # then each names the templated data source, so choosing another Prometheus switches them all
    for panel, target in pairs:
        assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        assert target["datasource"] == {"type": "prometheus", "uid": DATASOURCE}, panel["title"]
        assert target["expr"], panel["title"]


def test_every_chart_has_a_description(board: dict[str, Any]) -> None:
    # given the panels other than rows
    charts = [p for p in dash.panels(board) if p["type"] != "row"]

    # then each says in a sentence what it shows
    for panel in charts:
        assert len(panel.get("description", "")) > 20, panel["title"]


def test_every_expr_has_balanced_brackets(board: dict[str, Any]) -> None:
    # given every PromQL expression of the dashboard
    exprs = dash.exprs(board)

    # then its parentheses, brackets and braces pair up
    for expr in exprs:
        assert balanced(expr), expr


def test_balanced_rejects_broken_exprs() -> None:
    # given expressions with a bracket missing or crossed, and one with brackets inside a label value
    # then only the well-formed ones pass
    assert balanced('sum(rate(a{b="(}"}[5m]))')
    assert not balanced("sum(rate(a[5m])")
    assert not balanced('sum(rate(a{b="c"[5m}]))')
    assert not balanced("sum(rate(a[5m])))")


def test_quantiles_aggregate_bucket_rates_by_le(board: dict[str, Any]) -> None:
    # given the expressions that compute a quantile
    quantiles = [e for e in dash.exprs(board) if "histogram_quantile" in e]
    assert quantiles

    # then each sums the rate of a _bucket series over $__rate_interval, keeping le
    for expr in quantiles:
        assert re.search(r"histogram_quantile\(0\.\d+, sum by \(le(, \w+)*\) \(rate\(\w+_bucket\{", expr), expr
        assert "[$__rate_interval]" in expr, expr


def test_queries_name_only_metrics_that_exist(board: dict[str, Any]) -> None:
    # given the metric families the dashboard reads
    queried = dash.queried_metrics(board)

    # then each is a worker metric or one the installed Flower really registers, and every worker
    # metric is charted
    flower = flower_families()
    assert {"flower_events", "flower_task_runtime_seconds", "flower_worker_online"} <= flower
    assert queried - WORKER_FAMILIES - flower == set()
    assert WORKER_FAMILIES - queried == set()


def test_flower_queries_select_the_chunk_task(board: dict[str, Any]) -> None:
    # given the expressions over Flower's per-task metrics
    flower = [e for e in dash.exprs(board) if "flower_events_total" in e or "flower_task_runtime" in e]
    assert flower

    # then each selects hfqueue's chunk task by its registered Celery name
    for expr in flower:
        names = set(re.findall(r'\btask="([^"]*)"', expr))
        assert names == {CHUNK_TASK}, expr


def test_prometheus_config_scrapes_workers_and_flower(prometheus_config: dict[str, Any]) -> None:
    # given the example Prometheus configuration, parsed as YAML by the fixture
    jobs = {job["job_name"]: job for job in prometheus_config["scrape_configs"]}

    # then it scrapes the workers on their metrics ports and Flower's /metrics with basic auth whose
    # password comes from a file
    assert set(jobs) == {"hfqueue-workers", "flower"}
    workers = [t for c in jobs["hfqueue-workers"]["static_configs"] for t in c["targets"]]
    assert workers and all(re.fullmatch(r"[\w.-]+:\d+", t) for t in workers)
    assert any(t.endswith(":9464") for t in workers)
    flower = jobs["flower"]
    assert flower["metrics_path"] == "/metrics"
    assert [t for c in flower["static_configs"] for t in c["targets"]] == ["flower:5555"]
    assert set(flower["basic_auth"]) == {"username", "password_file"}


def test_dashboard_job_filters_name_configured_jobs(board: dict[str, Any],
                                                    prometheus_config: dict[str, Any]) -> None:
    # given the job names the dashboard filters on
    filtered = {m for e in dash.exprs(board) for m in re.findall(r'\bjob="([^"]*)"', e)}
    assert filtered

    # then each is a job of the example configuration
    assert filtered <= {job["job_name"] for job in prometheus_config["scrape_configs"]}


def test_queried_metrics_maps_samples_to_family_names() -> None:
    # given a small dashboard with counters, histogram series, a gauge, functions, keywords, grouping
    # labels, label values that look like metric names, a Grafana variable and a collapsed row
    def panel(*exprs: str) -> dict[str, Any]:
        return {"type": "timeseries", "targets": [{"refId": "A", "expr": e} for e in exprs]}

    board = {"panels": [
        panel('sum by (task) (rate(hfq_rows_total{outcome="ok", task=~"$task"}[$__rate_interval]))',
              'histogram_quantile(0.95, sum by (le, model) (rate(hfq_batch_seconds_bucket[5m])))'),
        panel("rate(hfq_batch_seconds_sum[5m]) / rate(hfq_batch_seconds_count[5m])",
              'hfq_models_resident{worker=~"$worker"} > bool 0',
              "sum(flower_worker_online) or vector(0)"),
        {"type": "row", "collapsed": True, "panels": [
            panel('process_resident_memory_bytes{job="w"} * on (instance) group_left (worker) '
                  'max by (instance, worker) (up offset 1h)',
                  'flower_events_total{type="task-failed", task="hfq_fake_total"} * 1e3 unless ignoring (type) '
                  "max_over_time(hfq_gpu_memory_total_bytes[1h:5m])"),
        ]},
        {"type": "text"},
    ]}

    # when the queried metrics are read
    queried = dash.queried_metrics(board)

    # then each is named as the text parser names its family, and nothing else is taken for a metric
    assert queried == {"hfq_rows", "hfq_batch_seconds", "hfq_models_resident", "flower_worker_online",
                       "process_resident_memory_bytes", "up", "flower_events", "hfq_gpu_memory_total_bytes"}


def test_family_names_match_prometheus_clients_parser() -> None:
    # given an exposition with a counter, a histogram and a gauge, as prometheus_client writes them
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("t_rows_total", "rows", ["outcome"], registry=registry).labels("ok").inc()
    prometheus_client.Histogram("t_batch_seconds", "latency", registry=registry).observe(0.2)
    prometheus_client.Gauge("t_memory_bytes", "memory", registry=registry).set(1)
    text = prometheus_client.generate_latest(registry).decode()
    # (the parser reports a counter's and a histogram's _created samples as families of their own,
    # which no dashboard query reads)
    parsed = {f.name for f in text_string_to_metric_families(text) if not f.name.endswith("_created")}

    # when the sample names are mapped
    samples = {"t_rows_total", "t_batch_seconds_bucket", "t_batch_seconds_sum", "t_batch_seconds_count",
               "t_memory_bytes"}

    # then they land on the parser's family names
    assert {dash.family(s) for s in samples} == parsed == {"t_rows", "t_batch_seconds", "t_memory_bytes"}
