"""docker compose (GPU, and the CPU override): commands the CLI accepts, real settings, Redis that keeps the
queue, ports and volumes where the settings point. Parsed, not run."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from hfqueue.cli.parser import build_parser as _parser
from tests.deploy_files import (
    COMPOSE,
    COMPOSE_CPU,
    DOCKERFILE,
    DOTENV,
    K8S_FILES,
    PATH_VARIABLES,
    ROOT,
    SETTINGS,
    VARIABLE,
    compose,
    exec_form,
    hfq_accepts,
    hfq_services,
    service_env,
    valid_settings,
)

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_compose_services_run_commands_the_cli_accepts(variant: str) -> None:
    # given the services that run hfqueue's image
    services = hfq_services(compose(variant))
    assert set(services) == {"worker", "flower", "api", "producer"}

    # then each command (after the `hfq` entrypoint) and each hfq health check parses
    for name, service in services.items():
        assert "entrypoint" not in service, name
        hfq_accepts(service.get("command", exec_form("CMD")), f"{variant} compose service {name}")
        test = (service.get("healthcheck") or {}).get("test", [])
        if "hfq" in test:
            hfq_accepts(test[test.index("hfq") + 1:], f"{variant} compose service {name} health check")
    assert services["worker"]["command"] == (["worker", "--gpus", "all"] if variant == "gpu" else ["worker"])
    assert services["flower"]["command"][0] == "flower" and services["producer"]["command"][0] == "run"
    assert services["api"]["command"][0] == "api"


def test_every_hfq_variable_the_deployment_files_name_is_a_setting() -> None:
    # given every HFQ_* name anywhere in the deployment files, comments included
    files = [DOCKERFILE, COMPOSE, COMPOSE_CPU, ROOT / ".env.example", *K8S_FILES]
    named = {(m.group(0), f.name) for f in files for m in re.finditer(r"\bHFQ_[A-Z][A-Z0-9_]*\b", f.read_text())}

    # then each is HFQ_ + a field of Settings (pydantic-settings ignores a misspelt one silently)
    assert named
    assert sorted(pair for pair in named if pair[0] not in SETTINGS) == []


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_compose_settings_are_valid_and_volumes_sit_where_they_point(variant: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # given each hfq service's environment as its container sees it
    for name, service in hfq_services(compose(variant)).items():
        env = service_env(service)
        # then the settings load
        settings = valid_settings(env, f"{variant} compose service {name}", monkeypatch)
        # and a volume is mounted at the model cache, the output root, the state folder and each input root
        targets = {Path(v.split(":")[1]) for v in service["volumes"]}
        wanted = {Path(env[v]) for v in PATH_VARIABLES} | set(settings.input_roots)
        assert wanted <= targets, (name, wanted - targets)


def test_compose_worker_exposes_its_metrics_port_and_flower_publishes_its_port_on_loopback() -> None:
    # given the GPU compose project
    services = compose("gpu")["services"]

    # then the worker's metrics port (HFQ_METRICS_PORT, default 9464) is exposed to the project's network
    worker_env = service_env(services["worker"])
    port = int(worker_env.get("HFQ_METRICS_PORT", SETTINGS["HFQ_METRICS_PORT"]))
    ranges = [[int(p) for p in str(e).split("-")] for e in services["worker"]["expose"]]
    assert any(r[0] <= port <= r[-1] for r in ranges), ranges
    # and Flower listens on every interface of its container, on the port the settings give it, published on the
    # host's loopback only
    flower = services["flower"]
    args = _parser().parse_args(flower["command"])
    flower_env = service_env(flower)
    flower_port = args.port or int(flower_env.get("HFQ_FLOWER_PORT", SETTINGS["HFQ_FLOWER_PORT"]))
    assert (args.address or flower_env.get("HFQ_FLOWER_ADDRESS")) == "0.0.0.0"
    assert flower["ports"] == [f"127.0.0.1:{flower_port}:{flower_port}"]
    assert flower_env["HFQ_FLOWER_PASSWORD"] == DOTENV["FLOWER_PASSWORD"]


def test_compose_redis_keeps_and_never_evicts_the_queue_and_workers_reach_it() -> None:
    # given the redis service and the workers' broker URL
    services = compose("gpu")["services"]
    redis = services["redis"]
    command = " ".join(redis["command"])
    url = urlsplit(service_env(services["worker"])["HFQ_BROKER_URL"])

    # then Redis keeps an append-only file, never evicts, and asks for the password the URL carries
    assert "--appendonly yes" in command and "--maxmemory-policy noeviction" in command
    assert f"--requirepass {DOTENV['REDIS_PASSWORD']}" in command
    assert (url.hostname, url.port, url.password) == ("redis", 6379, DOTENV["REDIS_PASSWORD"])
    # and its health check takes the password from the environment, not the command line
    assert redis["environment"]["REDISCLI_AUTH"] == DOTENV["REDIS_PASSWORD"]
    assert " -a " not in " ".join(redis["healthcheck"]["test"]) and "PONG" in " ".join(redis["healthcheck"]["test"])
    # and every hfq service waits for it (the producer through the worker)
    assert all(services[n]["depends_on"]["redis"]["condition"] == "service_healthy" for n in ("worker", "flower"))
    assert services["producer"]["depends_on"]["worker"]["condition"] == "service_healthy"


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_compose_gpu_reservation_and_torch_build_follow_the_variant(variant: str) -> None:
    # given the services of one variant
    services = hfq_services(compose(variant))
    builds = {json.dumps(s["build"], sort_keys=True) for s in services.values()}
    images = {s["image"] for s in services.values()}

    # then all hfq services share one build and one image tag (none runs the other variant's image)
    assert len(builds) == 1 and len(images) == 1
    args = services["worker"]["build"].get("args", {})
    devices = services["worker"].get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    if variant == "gpu":
        # and the GPU worker reserves every GPU through the NVIDIA driver, with the image's CUDA torch
        assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
        assert args == {} and images == {"hfqueue:gpu"}
    else:
        # and the CPU worker reserves none, runs on the CPU, with PyTorch's CPU build on plain Ubuntu
        assert devices == [] and service_env(services["worker"])["HFQ_DEVICE"] == "cpu"
        assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu" and images == {"hfqueue:cpu"}
        assert not args["BASE_IMAGE"].startswith("nvidia/")


def test_compose_services_that_are_not_workers_replace_the_worker_health_check() -> None:
    # given the image's health check (a worker's) and the other hfq services
    services = hfq_services(compose("gpu"))

    # then Flower checks its own /healthcheck and the one-shot producer checks nothing, and runs once
    assert "/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])
    assert services["producer"]["healthcheck"] == {"disable": True}
    assert services["producer"]["restart"] == "no"
    assert "healthcheck" not in services["worker"]


def test_compose_example_job_reads_a_mounted_file_inside_the_input_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    # given the producer's command, its bind mounts (source, target, mode) and its settings
    producer = compose("gpu")["services"]["producer"]
    inputs_file = _parser().parse_args(producer["command"]).inputs_file
    binds = [v.split(":") for v in producer["volumes"] if v.startswith("./")]
    settings = valid_settings(service_env(producer), "compose producer", monkeypatch)

    # then the file lies under an input root, in a read-only bind mount of a folder of this repository
    assert any(inputs_file.is_relative_to(root) for root in settings.input_roots)
    ((source, target, mode),) = [b for b in binds if inputs_file.is_relative_to(b[1])]
    assert mode == "ro"
    rows = (ROOT / source / inputs_file.relative_to(target)).read_text().splitlines()
    assert len([row for row in rows if row.strip()]) == 20


def test_every_variable_compose_reads_from_dotenv_is_in_the_example() -> None:
    # given the variables the compose files interpolate and the keys .env.example lists
    used = {m.group(1) for f in (COMPOSE, COMPOSE_CPU) for m in VARIABLE.finditer(f.read_text())}
    used |= {k for s in compose("gpu")["services"].values() for k, v in (s.get("environment") or {}).items()
             if v is None}
    listed = {line.split("=", 1)[0].lstrip("# ") for line in (ROOT / ".env.example").read_text().splitlines()
              if "=" in line and not line.startswith("# ")}

    # then each is documented there
    assert used <= listed, used - listed
    assert {"REDIS_PASSWORD", "FLOWER_PASSWORD", "HF_TOKEN"} <= listed
