"""Reading the deployment files as the tools that run them would: Dockerfile instructions, docker compose with
its interpolation, overrides and `!reset`, and the Kubernetes manifests (for tests/unit/test_deploy_*.py)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from hfqueue.cli.parser import build_parser as _parser
from hfqueue.core.config import Settings, load_settings
from hfqueue.errors import ConfigError

ROOT = Path(__file__).parents[1]
DOCKERFILE = ROOT / "Dockerfile.gpu"
COMPOSE, COMPOSE_CPU = ROOT / "docker-compose.yml", ROOT / "docker-compose.cpu.yml"
K8S_FILES = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
SETTINGS = {f"HFQ_{name.upper()}": field.default for name, field in Settings.model_fields.items()}
PATH_VARIABLES = ("HF_HOME", "HFQ_OUTPUT_ROOT", "HFQ_STATE_DIR")
# What .env would hold: compose refuses to start without the two passwords.
DOTENV = {"REDIS_PASSWORD": "redis-pw", "FLOWER_PASSWORD": "flower-pw"}


def dockerfile() -> list[tuple[str, str]]:
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


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for word, rest in dockerfile():
        if word == "ENV":
            env.update(item.partition("=")[::2] for item in shlex.split(rest))
    return env


def exec_form(word: str) -> list[str]:
    (rest,) = [rest for w, rest in dockerfile() if w == word]
    if word == "HEALTHCHECK":
        rest = rest[rest.index("CMD ") + 4:]
    value = json.loads(rest)
    assert isinstance(value, list), f"{word} must use the exec (JSON) form, got {rest!r}"
    return value


RESET = object()  # docker compose's `!reset`: drop the key when merging
REPLACED = ("command", "entrypoint", "test")  # sequences an override replaces instead of extending


class ComposeLoader(yaml.SafeLoader):
    pass


ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)
VARIABLE = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(text: str, env: dict[str, str]) -> str:
    def value(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        if env.get(name) or (name in env and not (op or "").startswith(":")):
            return env[name]
        assert not (op or "").endswith("?"), f"compose would refuse to start: {arg}"
        return arg if op else ""

    return VARIABLE.sub(value, text)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Compose's merge: mappings merge, sequences append, commands and health tests replace, `!reset` removes."""
    out = dict(base)
    for key, value in override.items():
        if value is RESET:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        elif isinstance(value, list) and isinstance(out.get(key), list) and key not in REPLACED:
            out[key] = out[key] + [v for v in value if v not in out[key]]
        else:
            out[key] = value
    return out


def compose(variant: str) -> dict[str, Any]:
    project = yaml.load(interpolate(COMPOSE.read_text(), DOTENV), ComposeLoader)
    if variant == "cpu":
        project = merge(project, yaml.load(interpolate(COMPOSE_CPU.read_text(), DOTENV), ComposeLoader))
    return project


def hfq_services(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the image Dockerfile.gpu builds (its entrypoint is `hfq`)."""
    return {name: s for name, s in project["services"].items()
            if isinstance(s.get("build"), dict) and s["build"].get("dockerfile") == DOCKERFILE.name}


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """What the container sees: the image's ENV, then the service's environment."""
    env = service.get("environment") or {}
    assert isinstance(env, dict), "use the mapping form of `environment`"
    return {**image_env(), **{k: str(v) for k, v in env.items() if v is not None}}


def k8s() -> list[dict[str, Any]]:
    return [doc for path in K8S_FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_kind(kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in k8s() if d["kind"] == kind and name in (None, d["metadata"]["name"])]


def pods() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in k8s()
            if d["kind"] in ("Deployment", "StatefulSet")}


def hfq_containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(name, pod, c) for name, pod in pods().items() for c in pod["containers"] if "hfqueue" in c["image"]]


def container_env(container: dict[str, Any]) -> dict[str, str]:
    """What the container sees: the image's ENV, then its literal env values, $(VAR) filled in with a placeholder."""
    env = {e["name"]: re.sub(r"\$\((\w+)\)", "secret", e["value"]) for e in container.get("env", []) if "value" in e}
    return {**image_env(), **env}


def hfq_accepts(args: list[str], where: str) -> None:
    try:
        _parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{where}: the CLI refuses `hfq {shlex.join(args)}` (exit {exc.code}; its message is above)")


def valid_settings(env: dict[str, str], where: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
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
