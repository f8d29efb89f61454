"""The deployment files agree with the code: Dockerfile.gpu, docker compose (GPU and CPU) and deploy/k8s run `hfq`
commands the CLI accepts, name only real settings, and put ports and volumes where the settings say.

No Docker engine or cluster here: the files are parsed and checked, not run.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]

from hfqueue.config import Settings, load_settings
from hfqueue.errors import ConfigError
from hfqueue.jobs import PRIORITIES, Keys, priority_queue
from hfqueue.producer.cli import _parser

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).parents[2]
DOCKERFILE = ROOT / "Dockerfile.gpu"
COMPOSE, COMPOSE_CPU = ROOT / "docker-compose.yml", ROOT / "docker-compose.cpu.yml"
K8S_FILES = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
SETTINGS = {f"HFQ_{name.upper()}": field.default for name, field in Settings.model_fields.items()}
PATH_VARIABLES = ("HF_HOME", "HFQ_OUTPUT_ROOT", "HFQ_STATE_DIR")
# What .env would hold: compose refuses to start without the two passwords.
DOTENV = {"REDIS_PASSWORD": "redis-pw", "FLOWER_PASSWORD": "flower-pw"}


# --- reading the files ------------------------------------------------------------------------------------------

def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined and comments dropped, as Docker does."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or (not pending and not line.strip()):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        word, _, rest = (pending + line).strip().partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    return instructions


def _image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in _dockerfile():
        if word == "ENV":
            env.update(item.partition("=")[::2] for item in shlex.split(rest))
    return env


def _exec_form(word: str) -> list[str]:
    (rest,) = [rest for w, rest in _dockerfile() if w == word]
    if word == "HEALTHCHECK":
        rest = rest[rest.index("CMD ") + 4:]
    value = json.loads(rest)
    assert isinstance(value, list), f"{word} must use the exec (JSON) form, got {rest!r}"
    return value


RESET = object()  # docker compose's `!reset`: drop the key when merging
REPLACED = ("command", "entrypoint", "test")  # sequences an override replaces instead of extending


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)
_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _interpolate(text: str, env: dict[str, str]) -> str:
    def value(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        if env.get(name) or (name in env and not (op or "").startswith(":")):
            return env[name]
        assert not (op or "").endswith("?"), f"compose would refuse to start: {arg}"
        return arg if op else ""

    return _VARIABLE.sub(value, text)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge: mappings merge, sequences append, commands and health tests replace, `!reset` removes."""
    out = dict(base)
    for key, value in override.items():
        if value is RESET:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        elif isinstance(value, list) and isinstance(out.get(key), list) and key not in REPLACED:
            out[key] = out[key] + [v for v in value if v not in out[key]]
        else:
            out[key] = value
    return out


def _compose(variant: str) -> dict[str, Any]:
    project = yaml.load(_interpolate(COMPOSE.read_text(), DOTENV), _ComposeLoader)
    if variant == "cpu":
        project = _merge(project, yaml.load(_interpolate(COMPOSE_CPU.read_text(), DOTENV), _ComposeLoader))
    return project


def _hfq_services(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the image Dockerfile.gpu builds (its entrypoint is `hfq`)."""
    return {name: s for name, s in project["services"].items()
            if isinstance(s.get("build"), dict) and s["build"].get("dockerfile") == DOCKERFILE.name}


def _service_env(service: dict[str, Any]) -> dict[str, str]:
    """What the container sees: the image's ENV, then the service's environment."""
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of `environment`"
    return {**_image_env(), **{k: str(v) for k, v in env.items() if v is not None}}


def _k8s() -> list[dict[str, Any]]:
    return [doc for path in K8S_FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


def _k8s_kind(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in _k8s() if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def _pods() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in _k8s()
            if d["kind"] in ("Deployment", "StatefulSet")}


def _hfq_containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(name, pod, c) for name, pod in _pods().items() for c in pod["containers"] if "hfqueue" in c["image"]]


def _container_env(container: dict[str, Any]) -> dict[str, str]:
    """What the container sees: the image's ENV, then its literal env values, $(VAR) filled in with a placeholder."""
    env = {e["name"]: re.sub(r"\$\((\w+)\)", "secret", e["value"]) for e in container.get("env", []) if "value" in e}
    return {**_image_env(), **env}


def _hfq_accepts(args: list[str], where: str) -> None:
    try:
        _parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{where}: the CLI refuses `hfq {shlex.join(args)}` (exit {exc.code}; its message is above)")


def _valid_settings(env: dict[str, str], where: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as m:
        for name in SETTINGS:
            m.delenv(name, raising=False)
        for name, value in env.items():
            if name.startswith("HFQ_"):
                m.setenv(name, value)
        try:
            return load_settings()
        except ConfigError as exc:  # its message names each bad variable
            pytest.fail(f"{where}: its HFQ_* environment is not valid: {exc}")


# --- Dockerfile.gpu ---------------------------------------------------------------------------------------------

def test_the_image_runs_hfq_as_a_non_root_user_and_checks_the_worker() -> None:
    # given the Dockerfile's instructions
    instructions = _dockerfile()

    # then the last USER is uid 1000 (hfq), not root
    user = [rest for word, rest in instructions if word == "USER"][-1].split(":")[0]
    assert user in ("1000", "hfq"), user
    assert re.search(r"useradd --uid 1000 .*\bhfq\b", DOCKERFILE.read_text())
    # and the entrypoint is hfq, the default command and the health check are commands the CLI accepts
    assert _exec_form("ENTRYPOINT") == ["hfq"]
    assert _exec_form("CMD") == ["worker", "--gpus", "all"]
    _hfq_accepts(_exec_form("CMD"), "Dockerfile.gpu CMD")
    health = _exec_form("HEALTHCHECK")
    assert health == ["hfq", "health", "--worker"]
    _hfq_accepts(health[1:], "Dockerfile.gpu HEALTHCHECK")


def test_the_image_installs_dependencies_before_it_copies_the_source() -> None:
    # given the Dockerfile's instructions, in order
    instructions = _dockerfile()
    index = {f"{w} {r}": i for i, (w, r) in enumerate(instructions)}
    copy_pyproject = next(i for key, i in index.items() if key.startswith("COPY pyproject.toml"))
    copy_source = next(i for key, i in index.items() if key.startswith("COPY hfqueue/"))
    pip_runs = [(i, r) for i, (w, r) in enumerate(instructions) if w == "RUN" and "pip install" in r]

    # then the dependencies are installed between copying pyproject.toml and copying the package
    assert any(copy_pyproject < i < copy_source and "--no-deps" not in r for i, r in pip_runs)
    # and the package itself is installed after it is copied, without dependencies
    assert any(i > copy_source and "--no-deps" in r for i, r in pip_runs)
    # and no layer keeps pip's cache or apt's lists
    for _, run in pip_runs:
        assert all("--no-cache-dir" in part for part in run.split("&&") if "pip install" in part), run
    for word, run in instructions:
        if word == "RUN" and "apt-get install" in run:
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run, run


def test_the_image_takes_the_torch_version_the_makefile_pins() -> None:
    # given the Makefile's torch pin and the Dockerfile's build arguments
    pin = re.findall(r"^TORCH_SPEC \?= torch==(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    args = dict(rest.split("=", 1) for word, rest in _dockerfile() if word == "ARG" and "=" in rest)

    # then they agree, and the GPU build comes from PyTorch's CUDA 12 index
    assert [args["TORCH_VERSION"]] == pin
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu12\d", args["TORCH_INDEX"]), args["TORCH_INDEX"]
    assert args["BASE_IMAGE"].startswith("nvidia/cuda:12.")


def test_the_image_declares_the_volumes_and_ports_its_settings_name() -> None:
    # given the image's environment, volumes and exposed ports
    env = _image_env()
    volumes = {v for word, rest in _dockerfile() if word == "VOLUME" for v in json.loads(rest)}
    exposed = {int(p) for word, rest in _dockerfile() if word == "EXPOSE" for p in rest.split()}

    # then each data folder the variables name is a volume, and the metrics and Flower ports are exposed
    assert {env[name] for name in PATH_VARIABLES} <= volumes
    assert {SETTINGS["HFQ_METRICS_PORT"], SETTINGS["HFQ_FLOWER_PORT"]} <= exposed


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    # given .dockerignore and the Dockerfile's COPY sources
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    sources = {src.rstrip("/") for word, rest in _dockerfile() if word == "COPY" for src in rest.split()[:-1]}

    # then everything is left out but those sources (so .env, .venv, .git, results and .hfq never reach a build)
    assert patterns[0] == "*"
    assert {p[1:].rstrip("/") for p in patterns if p.startswith("!")} == sources
    assert all((ROOT / src).exists() for src in sources), sources


# --- docker compose ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_compose_services_run_commands_the_cli_accepts(variant: str) -> None:
    # given the services that run hfqueue's image
    services = _hfq_services(_compose(variant))
    assert set(services) == {"worker", "flower", "producer"}

    # then each command (after the `hfq` entrypoint) and each hfq health check parses
    for name, service in services.items():
        assert "entrypoint" not in service, name
        _hfq_accepts(service.get("command", _exec_form("CMD")), f"{variant} compose service {name}")
        test = (service.get("healthcheck") or {}).get("test", [])
        if "hfq" in test:
            _hfq_accepts(test[test.index("hfq") + 1:], f"{variant} compose service {name} health check")
    assert services["worker"]["command"] == (["worker", "--gpus", "all"] if variant == "gpu" else ["worker"])
    assert services["flower"]["command"][0] == "flower" and services["producer"]["command"][0] == "run"


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
    for name, service in _hfq_services(_compose(variant)).items():
        env = _service_env(service)
        # then the settings load
        settings = _valid_settings(env, f"{variant} compose service {name}", monkeypatch)
        # and a volume is mounted at the model cache, the output root, the state folder and each input root
        targets = {Path(v.split(":")[1]) for v in service["volumes"]}
        wanted = {Path(env[v]) for v in PATH_VARIABLES} | set(settings.input_roots)
        assert wanted <= targets, (name, wanted - targets)


def test_compose_worker_exposes_its_metrics_port_and_flower_publishes_its_port_on_loopback() -> None:
    # given the GPU compose project
    services = _compose("gpu")["services"]

    # then the worker's metrics port (HFQ_METRICS_PORT, default 9464) is exposed to the project's network
    worker_env = _service_env(services["worker"])
    port = int(worker_env.get("HFQ_METRICS_PORT", SETTINGS["HFQ_METRICS_PORT"]))
    ranges = [[int(p) for p in str(e).split("-")] for e in services["worker"]["expose"]]
    assert any(r[0] <= port <= r[-1] for r in ranges), ranges
    # and Flower listens on every interface of its container, on the port the settings give it, published on the
    # host's loopback only
    flower = services["flower"]
    args = _parser().parse_args(flower["command"])
    flower_env = _service_env(flower)
    flower_port = args.port or int(flower_env.get("HFQ_FLOWER_PORT", SETTINGS["HFQ_FLOWER_PORT"]))
    assert (args.address or flower_env.get("HFQ_FLOWER_ADDRESS")) == "0.0.0.0"
    assert flower["ports"] == [f"127.0.0.1:{flower_port}:{flower_port}"]
    assert flower_env["HFQ_FLOWER_PASSWORD"] == DOTENV["FLOWER_PASSWORD"]


def test_compose_redis_keeps_and_never_evicts_the_queue_and_workers_reach_it() -> None:
    # given the redis service and the workers' broker URL
    services = _compose("gpu")["services"]
    redis = services["redis"]
    command = " ".join(redis["command"])
    url = urlsplit(_service_env(services["worker"])["HFQ_BROKER_URL"])

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
    services = _hfq_services(_compose(variant))
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
        assert devices == [] and _service_env(services["worker"])["HFQ_DEVICE"] == "cpu"
        assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu" and images == {"hfqueue:cpu"}
        assert not args["BASE_IMAGE"].startswith("nvidia/")


def test_compose_services_that_are_not_workers_replace_the_worker_health_check() -> None:
    # given the image's health check (a worker's) and the other hfq services
    services = _hfq_services(_compose("gpu"))

    # then Flower checks its own /healthcheck and the one-shot producer checks nothing, and runs once
    assert "/healthcheck" in " ".join(services["flower"]["healthcheck"]["test"])
    assert services["producer"]["healthcheck"] == {"disable": True}
    assert services["producer"]["restart"] == "no"
    assert "healthcheck" not in services["worker"]


def test_compose_example_job_reads_a_mounted_file_inside_the_input_roots(monkeypatch: pytest.MonkeyPatch) -> None:
    # given the producer's command, its bind mounts (source, target, mode) and its settings
    producer = _compose("gpu")["services"]["producer"]
    inputs_file = _parser().parse_args(producer["command"]).inputs_file
    binds = [v.split(":") for v in producer["volumes"] if v.startswith("./")]
    settings = _valid_settings(_service_env(producer), "compose producer", monkeypatch)

    # then the file lies under an input root, in a read-only bind mount of a folder of this repository
    assert any(inputs_file.is_relative_to(root) for root in settings.input_roots)
    ((source, target, mode),) = [b for b in binds if inputs_file.is_relative_to(b[1])]
    assert mode == "ro"
    rows = (ROOT / source / inputs_file.relative_to(target)).read_text().splitlines()
    assert len([row for row in rows if row.strip()]) == 20


def test_every_variable_compose_reads_from_dotenv_is_in_the_example() -> None:
    # given the variables the compose files interpolate and the keys .env.example lists
    used = {m.group(1) for f in (COMPOSE, COMPOSE_CPU) for m in _VARIABLE.finditer(f.read_text())}
    used |= {k for s in _compose("gpu")["services"].values() for k, v in (s.get("environment") or {}).items()
             if v is None}
    listed = {line.split("=", 1)[0].lstrip("# ") for line in (ROOT / ".env.example").read_text().splitlines()
              if "=" in line and not line.startswith("# ")}

    # then each is documented there
    assert used <= listed, used - listed
    assert {"REDIS_PASSWORD", "FLOWER_PASSWORD", "HF_TOKEN"} <= listed


# --- Kubernetes -------------------------------------------------------------------------------------------------

def test_k8s_objects_are_complete_and_share_one_namespace() -> None:
    # given every object in deploy/k8s
    docs = _k8s()
    assert {p.name for p in K8S_FILES} == {"redis.yaml", "secrets.example.yaml", "worker.yaml", "flower.yaml",
                                           "keda-scaledobject.yaml"}

    # then each names its API, kind and name, in the hfqueue namespace
    for doc in docs:
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
        assert doc["metadata"]["namespace"] == "hfqueue", doc["metadata"]


def test_k8s_containers_run_commands_the_cli_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    # given the containers that run hfqueue's image
    containers = _hfq_containers()
    assert {name for name, _, _ in containers} == {"hfq-worker", "flower"}

    for name, pod, container in containers:
        # then each keeps the hfq entrypoint and passes arguments the CLI accepts, and its exec probes too
        assert "command" not in container, name
        _hfq_accepts(container["args"], f"k8s {name}")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            command = container.get(probe, {}).get("exec", {}).get("command")
            if command:
                assert command[0] == "hfq", (name, probe)
                _hfq_accepts(command[1:], f"k8s {name} {probe}")
        # and its settings load, and it runs as the image's user
        _valid_settings(_container_env(container), f"k8s {name}", monkeypatch)
        assert pod["securityContext"]["runAsUser"] == 1000 and pod["securityContext"]["runAsNonRoot"] is True


def test_k8s_worker_has_one_gpu_a_liveness_check_metrics_and_shared_results() -> None:
    # given the worker Deployment's pod
    pod = _pods()["hfq-worker"]
    (container,) = pod["containers"]
    env = _container_env(container)
    annotations = _k8s_kind("Deployment", "hfq-worker")[0]["spec"]["template"]["metadata"]["annotations"]

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
    assert _k8s_kind("PersistentVolumeClaim", claim)[0]["spec"]["accessModes"] == ["ReadWriteMany"]
    # and a pod stopped mid-chunk may finish it: the grace period covers the chunk's hard time limit
    hard_limit = int(env.get("HFQ_CHUNK_TIME_LIMIT", SETTINGS["HFQ_CHUNK_TIME_LIMIT"]))
    assert pod["terminationGracePeriodSeconds"] >= hard_limit


def test_k8s_flower_listens_where_its_service_and_probe_point() -> None:
    # given Flower's pod and Service
    (container,) = _pods()["flower"]["containers"]
    env = _container_env(container)
    (service,) = _k8s_kind("Service", "flower")
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
    (container,) = _pods()["redis"]["containers"]
    args = " ".join(container["args"])
    (service,) = _k8s_kind("Service", "redis")

    # then it keeps an append-only file, never evicts, and takes its password from the Secret
    assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    assert "--requirepass $(REDIS_PASSWORD)" in args
    password = {"secretKeyRef": {"name": "hfqueue", "key": "REDIS_PASSWORD"}}
    assert {"name": "REDIS_PASSWORD", "valueFrom": password} in container["env"]
    # and every hfq container's broker URL names that Service and port, with the password filled in from the Secret
    for name, _, hfq in _hfq_containers():
        url = next(e["value"] for e in hfq["env"] if e["name"] == "HFQ_BROKER_URL")
        parts = urlsplit(url)
        assert (parts.hostname, parts.port, parts.password) == ("redis", service["spec"]["ports"][0]["port"],
                                                               "$(REDIS_PASSWORD)"), name
        order = [e["name"] for e in hfq["env"]]
        assert order.index("REDIS_PASSWORD") < order.index("HFQ_BROKER_URL"), \
            f"{name}: Kubernetes fills in $(REDIS_PASSWORD) only from a variable defined before it"


def test_k8s_secret_references_name_keys_the_example_secret_has() -> None:
    # given the example Secret and every reference to a Secret key
    (secret,) = _k8s_kind("Secret")
    keys = {(secret["metadata"]["name"], k) for k in secret["stringData"]}
    refs = {(r["name"], r["key"]) for d in _k8s() for r in _find(d, "secretKeyRef")}
    refs |= {(r["name"], r["key"]) for d in _k8s() for refs_ in _find(d, "secretTargetRef") for r in refs_}

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
    (scaled,) = _k8s_kind("ScaledObject")
    (container,) = _pods()["hfq-worker"]["containers"]
    queue = _container_env(container).get("HFQ_QUEUE", SETTINGS["HFQ_QUEUE"])
    (redis,) = _k8s_kind("Service", "redis")
    fqdn = f"{redis['metadata']['name']}.{redis['metadata']['namespace']}.svc.cluster.local"
    triggers = scaled["spec"]["triggers"]

    # then it scales the worker Deployment, from zero
    assert scaled["spec"]["scaleTargetRef"]["name"] == "hfq-worker"
    assert scaled["spec"]["minReplicaCount"] == 0 < scaled["spec"]["maxReplicaCount"]
    # on the Celery queue of each priority and on the request lane (a list left out would wait for a pod forever)
    lists = {priority_queue(queue, p) for p in PRIORITIES} | {Keys.requests(queue)}
    assert sorted(t["metadata"]["listName"] for t in triggers) == sorted(lists)
    auth = {a["metadata"]["name"] for a in _k8s_kind("TriggerAuthentication")}
    for trigger in triggers:
        # reading the Redis the workers use, by a name that resolves from KEDA's namespace, with the password
        assert trigger["type"] == "redis" and int(trigger["metadata"]["listLength"]) > 0
        assert trigger["metadata"]["address"] == f"{fqdn}:{redis['spec']['ports'][0]['port']}"
        assert trigger["metadata"].get("databaseIndex", "0") == "0"
        assert trigger["authenticationRef"]["name"] in auth


def test_k8s_service_names_cannot_override_settings() -> None:
    # given the Services and the pods that run hfq
    services = [s["metadata"]["name"] for s in _k8s_kind("Service")]

    # then no Service's link variables (<NAME>_PORT, <NAME>_SERVICE_HOST, ...) fall under an HFQ_* setting's name
    for name in services:
        prefix = name.upper().replace("-", "_") + "_"
        assert not [s for s in SETTINGS if s.startswith(prefix)], name
    # and hfq pods take no service link variables at all
    assert all(pod.get("enableServiceLinks") is False for _, pod, _ in _hfq_containers())
