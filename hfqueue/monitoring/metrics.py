"""Prometheus metrics of one model-serving process, served over HTTP on ``HFQ_METRICS_PORT``.

Labels are bounded: ``task``, ``model`` and ``worker`` (the Celery node name), never a job id, so the
number of series grows with the models a deployment runs, not with the jobs it serves. Each serving
process has its own registry and endpoint; Prometheus adds ``instance``.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from hfqueue.core.devices import gpu_memory
from hfqueue.core.hooks import Hooks

logger = logging.getLogger(__name__)

_MODEL = ("task", "model", "worker")
_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_RATIO_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
_LOAD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class PrometheusHooks(Hooks):
    """Counts what the serving process does into its own registry (see the README's metrics table)."""

    def __init__(self, worker: str, device: str) -> None:
        self.worker = worker
        disable_created_metrics()  # a *_created series per counter doubles the series for nothing a dashboard uses
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...
        PlatformCollector(registry=r)
        self.rows = Counter("hfq_rows", "Rows run, by outcome (ok: an output; failed: to the error file)",
                            [*_MODEL, "outcome"], registry=r)
        self.truncated = Counter("hfq_rows_truncated", "Rows cut to the model's input limit (they gave outputs)",
                                 _MODEL, registry=r)
        self.reused = Counter("hfq_rows_reused", "Rows copied from the result cache instead of computed", _MODEL,
                              registry=r)
        self.tokens = Counter("hfq_tokens", "Tokens through forward passes: real, and padded (what the pass cost)",
                              [*_MODEL, "kind"], registry=r)
        self.batches = Counter("hfq_batches", "Forward passes run", _MODEL, registry=r)
        self.batch_rows = Histogram("hfq_batch_rows", "Rows in one forward pass", _MODEL, buckets=_ROWS_BUCKETS,
                                    registry=r)
        self.efficiency = Histogram("hfq_batch_padding_efficiency", "Real tokens / padded tokens of one forward pass",
                                    _MODEL, buckets=_RATIO_BUCKETS, registry=r)
        self.latency = Histogram("hfq_batch_seconds", "Seconds one forward pass took", _MODEL,
                                 buckets=_LATENCY_BUCKETS, registry=r)
        self.wait = Histogram("hfq_queue_wait_seconds", "Seconds from sending a chunk or lane entry to its start",
                              [*_MODEL, "route"], buckets=_WAIT_BUCKETS, registry=r)
        self.loads = Counter("hfq_model_loads", "Models loaded into the cache", _MODEL, registry=r)
        self.load_seconds = Histogram("hfq_model_load_seconds", "Seconds a model load took", _MODEL,
                                      buckets=_LOAD_BUCKETS, registry=r)
        self.hits = Counter("hfq_model_cache_hits", "Model lookups served by a resident model", _MODEL, registry=r)
        self.evictions = Counter("hfq_model_cache_evictions", "Models evicted from the cache", _MODEL, registry=r)
        self.resident = Gauge("hfq_models_resident", "Models resident in the serving process", ["worker"],
                              registry=r)
        self.ooms = Counter("hfq_oom_splits", "Batches split after running out of device memory", _MODEL, registry=r)
        self.exact = Counter("hfq_exact_fallbacks", "Reduced-precision batches that came out NaN or inf and ran again "
                             "in float32", _MODEL, registry=r)
        self.errors = Counter("hfq_errors", "Errors, by kind (row: one row to the error file; chunk: a whole chunk "
                              "failed; job: a job failed as a whole)", [*_MODEL, "kind"], registry=r)
        self.chunks = Counter("hfq_chunks", "Chunks whose outcome this process wrote", [*_MODEL, "outcome"],
                              registry=r)
        self.resident.labels(worker).set(0)
        if device.startswith("cuda"):
            r.register(GpuMemoryCollector(worker))

    def batch_done(self, task: str, model: str, *, rows: int, real_tokens: int, padded_tokens: int,
                   seconds: float) -> None:
        labels = (task, model, self.worker)
        self.tokens.labels(*labels, "real").inc(real_tokens)
        self.tokens.labels(*labels, "padded").inc(padded_tokens)
        self.batches.labels(*labels).inc()
        self.batch_rows.labels(*labels).observe(rows)
        self.efficiency.labels(*labels).observe(real_tokens / padded_tokens if padded_tokens else 1.0)
        self.latency.labels(*labels).observe(seconds)

    def oom_split(self, task: str, model: str) -> None:
        self.ooms.labels(task, model, self.worker).inc()

    def exact_fallback(self, task: str, model: str) -> None:
        self.exact.labels(task, model, self.worker).inc()

    def rows_reused(self, task: str, model: str, *, rows: int) -> None:
        self.reused.labels(task, model, self.worker).inc(rows)

    def rows_done(self, task: str, model: str, *, ok: int, failed: int, truncated: int = 0) -> None:
        self.truncated.labels(task, model, self.worker).inc(truncated)
        self.rows.labels(task, model, self.worker, "ok").inc(ok)
        self.rows.labels(task, model, self.worker, "failed").inc(failed)
        self.errors.labels(task, model, self.worker, "row").inc(failed)

    def queue_wait(self, task: str, model: str, *, route: str, seconds: float) -> None:
        self.wait.labels(task, model, self.worker, route).observe(max(0.0, seconds))

    def chunk_done(self, task: str, model: str, *, outcome: str) -> None:
        self.chunks.labels(task, model, self.worker, outcome).inc()
        if outcome == "failed":
            self.errors.labels(task, model, self.worker, "chunk").inc()

    def job_failed(self, task: str, model: str) -> None:
        self.errors.labels(task, model, self.worker, "job").inc()

    def model_loaded(self, task: str, model: str, *, seconds: float) -> None:
        self.loads.labels(task, model, self.worker).inc()
        self.load_seconds.labels(task, model, self.worker).observe(seconds)

    def cache_hit(self, task: str, model: str) -> None:
        self.hits.labels(task, model, self.worker).inc()

    def model_evicted(self, task: str, model: str) -> None:
        self.evictions.labels(task, model, self.worker).inc()

    def models_resident(self, count: int) -> None:
        self.resident.labels(self.worker).set(count)

    def exposition(self) -> bytes:
        """The metrics in Prometheus' text format, as the endpoint serves them."""
        return generate_latest(self.registry)

    def serving_started(self, *, address: str, port: int) -> str | None:
        """Serve the registry at ``http://address:port/metrics`` from a daemon thread; its URL (the host's name for
        a wildcard address), or None when ``port`` is 0 or taken: the worker then serves on without metrics."""
        if not port:
            return None
        try:
            server, _ = start_http_server(port, addr=address, registry=self.registry)
        except OSError as exc:  # checked free at start-up; taken since: serve without metrics, loudly
            logger.error("cannot serve metrics on port %d: %s", port, exc)
            return None
        host = socket.gethostname() if address in ("0.0.0.0", "::") else address
        url = f"http://{host}:{server.server_port}/metrics"
        logger.info("metrics on %s", url)
        return url


class GpuMemoryCollector(Collector):
    """GPU memory of the devices this process has used, read at scrape time (CUDA workers only)."""

    def __init__(self, worker: str) -> None:
        self.worker = worker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        families = {name: GaugeMetricFamily(f"hfq_gpu_memory_{name}_bytes", f"GPU memory {name} (bytes)",
                                            labels=["worker", "device"])
                    for name in ("allocated", "reserved", "total")}
        for row in gpu_memory():
            for name, family in families.items():
                family.add_metric([self.worker, row["device"]], row[name])
        yield from families.values()

