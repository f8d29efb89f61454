"""Reading the Grafana dashboard (deploy/grafana/hfqueue.json): its panels, PromQL queries and the metrics
they name, for the unit tests of the dashboard and for integration tests that scrape real endpoints.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "hfqueue.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

# Sample suffixes that prometheus_client's parser folds into one family: a histogram's _bucket, _sum and
# _count samples, and a counter's _total.
_SUFFIXES = ("_bucket", "_sum", "_count", "_total")

# Parts of a PromQL expression that hold no metric name, removed before looking for names: string
# literals (label values, which may contain anything), label matchers, range and subquery brackets,
# grouping label lists, offsets, and Grafana variables outside strings.
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?\S+")
_VARIABLE = re.compile(r"\$\{?\w+\}?")
_TOKEN = re.compile(r"(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|0x[0-9a-fA-F]+)"
                    r"|(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)(?P<call>\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right",
             "offset", "inf", "nan"}


def load(path: Path = DASHBOARD) -> dict[str, Any]:
    """The dashboard's JSON model."""
    with path.open(encoding="utf-8") as f:
        return json.load(f)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def targets(dashboard: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Every ``(panel, target)`` pair."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


def exprs(dashboard: dict[str, Any]) -> list[str]:
    """The PromQL expression of every target that has one."""
    return [target["expr"] for _, target in targets(dashboard) if target.get("expr")]


def expr_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression selects, as written (``hfq_rows_total``).

    >>> sorted(expr_metrics('sum by (le) (rate(a_bucket{x="y"}[5m])) / on (i) b'))
    ['a_bucket', 'b']
    """
    text = _STRING.sub('""', expr)
    text = re.sub(r"#[^\n]*", "", text)
    text = _MATCHERS.sub(" ", text)
    # Nested brackets (a subquery over a range) come off from the inside out.
    while _RANGE.search(text):
        text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    names = set()
    for token in _TOKEN.finditer(text):
        name = token.group("name")
        # A name followed by "(" is a function or an aggregation, not a metric.
        if name and not token.group("call") and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def family(metric: str) -> str:
    """The family name prometheus_client's text parser reports for a sample name.

    >>> family("hfq_rows_total"), family("hfq_batch_seconds_bucket"), family("hfq_models_resident")
    ('hfq_rows', 'hfq_batch_seconds', 'hfq_models_resident')
    """
    for suffix in _SUFFIXES:
        if metric.endswith(suffix) and len(metric) > len(suffix):
            return metric[: -len(suffix)]
    return metric


def queried_metrics(dashboard: dict[str, Any]) -> set[str]:
    """The metric family names the dashboard's queries read, as
    ``prometheus_client.parser.text_string_to_metric_families`` names them: ``hfq_rows_total`` gives
    ``hfq_rows`` and ``hfq_batch_seconds_bucket`` gives ``hfq_batch_seconds``.

    The suffixes are mapped by name alone, so a gauge whose own name ends in ``_total`` or ``_count``
    would be mapped too; none of the metrics hfqueue or Flower export is such a gauge.

    >>> queried_metrics({"panels": [{"targets": [{"expr": "rate(hfq_rows_total[1m])"}]}]})
    {'hfq_rows'}
    """
    return {family(name) for expr in exprs(dashboard) for name in expr_metrics(expr)}
