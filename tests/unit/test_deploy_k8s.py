"""deploy/k8s: complete objects in one namespace, commands the CLI accepts, one GPU per worker, Flower and
Redis where hfq looks for them, KEDA on every list that holds waiting work. Parsed, not applied."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from hfqueue.cli.parser import build_parser as _parser
from hfqueue.core.jobs import PRIORITIES, priority_queue
from hfqueue.state.keys import Keys
from tests.deploy_files import (
    K8S_FILES,
    PATH_VARIABLES,
    SETTINGS,
    container_env,
    hfq_accepts,
    hfq_containers,
    k8s,
    k8s_kind,
    pods,
    valid_settings,
)

pytestmark = pytest.mark.timeout(60)


def test_k8s_objects_are_complete_and_share_one_namespace() -> None:
    # given every object in deploy/k8s
    docs = k8s()
    assert {p.name for p in K8S_FILES} == {"redis.yaml", "secrets.example.yaml", "worker.yaml", "flower.yaml",
                                           "keda-scaledobject.yaml"}

    # then each names its API, kind and name, in the hfqueue namespace
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
        assert doc["metadata"]["namespace"] == "hfqueue", doc["metadata"]


def test_k8s_containers_run_commands_the_cli_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    # given the containers that run hfqueue's image
    containers = hfq_containers()
    assert {name for name, _, _ in containers} == {"hfq-worker", "flower"}

    for name, pod, container in containers:
        # then each keeps the hfq entrypoint and passes arguments the CLI accepts, and its exec probes too
        assert "command" not in container, name
        hfq_accepts(container["args"], f"k8s {name}")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            command = container.get(probe, {}).get("exec", {}).get("command")
            if command:
                assert command[0] == "hfq", (name, probe)
                hfq_accepts(command[1:], f"k8s {name} {probe}")
        # and its settings load, and it runs as the image's user
        valid_settings(container_env(container), f"k8s {name}", monkeypatch)
        assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"] is True


def test_k8s_worker_has_one_gpu_a_liveness_check_metrics_and_shared_results() -> None:
    # given the worker Deployment's pod
    pod = pods()["hfq-worker"]
    (container,) = pod["containers"]
    env = container_env(container)
    annotations = k8s_kind("Deployment", "hfq-worker")[0]["spec"]["template"]["metadata"]["annotations"]

    # then it asks for one GPU and runs one worker on it (no --gpus)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["args"] == ["worker"]
    assert container["livenessProbe"]["exec"]["command"] == ["hfq", "health", "--worker"]
    # and serves metrics on the port the settings give it, announced to Prometheus
    port = int(env.get("HFQ_METRICS_PORT", SETTINGS["HFQ_METRICS_PORT"]))
    assert {"name": "metrics", "containerPort": port} in container["ports"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == str(port)
    # and mounts the model cache, output root and state folder where the variables point
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert {env[v] for v in PATH_VARIABLES} <= set(mounts)
    # and the results are on a claim every worker and producer can mount at once
    volumes = {v["name"]: v for v in pod["volumes"]}
    claim = volumes[mounts[env["HFQ_OUTPUT_ROOT"]]]["persistentVolumeClaim"]["claimName"]
    assert k8s_kind("PersistentVolumeClaim", claim)[0]["spec"]["accessModes"] == ["ReadWriteMany"]
    # and a pod stopped mid-chunk may finish it: the grace period covers the chunk's hard time limit
    hard_limit = int(env.get("HFQ_CHUNK_TIME_LIMIT", SETTINGS["HFQ_CHUNK_TIME_LIMIT"]))
    assert pod["terminationGracePeriodSeconds"] >= hard_limit


def test_k8s_flower_listens_where_its_service_and_probe_point() -> None:
    # given Flower's pod and Service
    (container,) = pods()["flower"]["containers"]
    env = container_env(container)
    (service,) = k8s_kind("Service", "flower")
    args = _parser().parse_args(container["args"])

    # then the port it listens on (HFQ_FLOWER_PORT or --port) is the container port, the Service's and the probe's
    port = args.port or int(env.get("HFQ_FLOWER_PORT", SETTINGS["HFQ_FLOWER_PORT"]))
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert set(named.values()) == {port}
    assert {named.get(p["targetPort"], p["targetPort"]) for p in service["spec"]["ports"]} == {port}
    probe = container["readinessProbe"]["httpGet"]
    assert probe["path"] == "/healthcheck" and named.get(probe["port"], probe["port"]) == port
    # and it listens on the pod's interfaces, with the password from the Secret
    assert args.address == "0.0.0.0"
    password = {"secretKeyRef": {"name": "hfqueue", "key": "HFQ_FLOWER_PASSWORD"}}
    assert {"name": "HFQ_FLOWER_PASSWORD", "valueFrom": password} in container["env"]


def test_k8s_redis_keeps_and_never_evicts_the_queue_and_hfq_reaches_it() -> None:
    # given the Redis StatefulSet and its client Service
    (container,) = pods()["redis"]["containers"]
    args = " ".join(container["args"])
    (service,) = k8s_kind("Service", "redis")

    # then it keeps an append-only file, never evicts, and takes its password from the Secret
    assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    assert "--requirepass $(REDIS_PASSWORD)" in args
    password = {"secretKeyRef": {"name": "hfqueue", "key": "REDIS_PASSWORD"}}
    assert {"name": "REDIS_PASSWORD", "valueFrom": password} in container["env"]
    # and every hfq container's broker URL names that Service and port, with the password filled in from the Secret
    for name, _, hfq in hfq_containers():
        url = next(e["value"] for e in hfq["env"] if e["name"] == "HFQ_BROKER_URL")
        parts = urlsplit(url)
        assert (parts.hostname, parts.port, parts.password) == ("redis", service["spec"]["ports"][0]["port"],
                                                               "$(REDIS_PASSWORD)"), name
        order = [e["name"] for e in hfq["env"]]
        assert order.index("REDIS_PASSWORD") < order.index("HFQ_BROKER_URL"), \
            f"{name}: Kubernetes fills in $(REDIS_PASSWORD) only from a variable defined before it"


def test_k8s_secret_references_name_keys_the_example_secret_has() -> None:
    # given the example Secret and every reference to a Secret key
    (secret,) = k8s_kind("Secret")
    keys = {(secret["metadata"]["name"], k) for k in secret["stringData"]}
    refs = {(r["name"], r["key"]) for d in k8s() for r in _find(d, "secretKeyRef")}
    refs |= {(r["name"], r["key"]) for d in k8s() for refs_ in _find(d, "secretTargetRef") for r in refs_}

    # then each reference resolves
    assert refs and refs <= keys, refs - keys


def _find(node: Any, key: str) -> list[Any]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == key] + [x for v in node.values() for x in _find(v, key)]
    if isinstance(node, list):
        return [x for v in node for x in _find(v, key)]
    return []


def test_keda_scales_the_worker_on_every_list_that_holds_waiting_work() -> None:
    # given the ScaledObject, the worker's queue and the Redis Service
    (scaled,) = k8s_kind("ScaledObject")
    (container,) = pods()["hfq-worker"]["containers"]
    queue = container_env(container).get("HFQ_QUEUE", SETTINGS["HFQ_QUEUE"])
    (redis,) = k8s_kind("Service", "redis")
    fqdn = f"{redis['metadata']['name']}.{redis['metadata']['namespace']}.svc.cluster.local"
    triggers = scaled["spec"]["triggers"]

    # then it scales the worker Deployment, from zero
    assert scaled["spec"]["scaleTargetRef"]["name"] == "hfq-worker"
    assert scaled["spec"]["minReplicaCount"] == 0 < scaled["spec"]["maxReplicaCount"]
    # on the Celery queue of each priority and on the request lane (a list left out would wait for a pod forever)
    lists = {priority_queue(queue, p) for p in PRIORITIES} | {Keys.requests(queue)}
    assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(lists)
    auth = {a["metadata"]["name"] for a in k8s_kind("TriggerAuthentication")}
    for trigger in triggers:
        # reading the Redis the workers use, by a name that resolves from KEDA's namespace, with the password
        assert trigger["type"] == "redis" and int(trigger["metadata"]["listLength"]) > 0
        assert trigger["metadata"]["address"] == f"{fqdn}:{redis['spec']['ports'][0]['port']}"
        assert trigger["metadata"].get("databaseIndex", "0") == "0"
        assert trigger["authenticationRef"]["name"] in auth


def test_k8s_service_names_cannot_override_settings() -> None:
    # given the Services and the pods that run hfq
    services = [s["metadata"]["name"] for s in k8s_kind("Service")]

    # then no Service's link variables (<NAME>_PORT, <NAME>_SERVICE_HOST, ...) fall under an HFQ_* setting's name
    for name in services:
        prefix = name.upper().replace("-", "_") + "_"
        assert not [s for s in SETTINGS if s.startswith(prefix)], name
    # and hfq pods take no service link variables at all
    assert all(pod.get("enableServiceLinks") is False for _, pod, _ in hfq_containers())
