"""Dockerfile.gpu and its build context: a non-root hfq, dependencies cached before the code, the torch the
Makefile pins, volumes and ports where the settings point. Parsed, not built (no Docker engine here)."""

from __future__ import annotations

import json
import re

import pytest

from tests.deploy_files import DOCKERFILE, PATH_VARIABLES, ROOT, SETTINGS, dockerfile, exec_form, hfq_accepts, image_env

pytestmark = pytest.mark.timeout(60)


def test_the_image_runs_hfq_as_a_non_root_user_and_checks_the_worker() -> None:
    # given the Dockerfile's instructions
    instructions = dockerfile()

    # then the last USER is uid 1000 (hfq), not root
    user = [rest for word, rest in instructions if word == "USER"][-1].split(":")[0]
    assert user in ("1000", "hfq"), user
    assert re.search(r"useradd --uid 1000 .*\bhfq\b", DOCKERFILE.read_text())
    # and the entrypoint is hfq, the default command and the health check are commands the CLI accepts
    assert exec_form("ENTRYPOINT") == ["hfq"]
    assert exec_form("CMD") == ["worker", "--gpus", "all"]
    hfq_accepts(exec_form("CMD"), "Dockerfile.gpu CMD")
    health = exec_form("HEALTHCHECK")
    assert health == ["hfq", "health", "--worker"]
    hfq_accepts(health[1:], "Dockerfile.gpu HEALTHCHECK")


def test_the_image_installs_dependencies_before_it_copies_the_source() -> None:
    # given the Dockerfile's instructions, in order
    instructions = dockerfile()
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
    args = dict(rest.split("=", 1) for word, rest in dockerfile() if word == "ARG" and "=" in rest)

    # then they agree, and the GPU build comes from PyTorch's CUDA 12 index
    assert [args["TORCH_VERSION"]] == pin
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu12\d", args["TORCH_INDEX"]), args["TORCH_INDEX"]
    assert args["BASE_IMAGE"].startswith("nvidia/cuda:12.")


def test_the_image_declares_the_volumes_and_ports_its_settings_name() -> None:
    # given the image's environment, volumes and exposed ports
    env = image_env()
    volumes = {v for word, rest in dockerfile() if word == "VOLUME" for v in json.loads(rest)}
    exposed = {int(p) for word, rest in dockerfile() if word == "EXPOSE" for p in rest.split()}

    # then each data folder the variables name is a volume, and the metrics and Flower ports are exposed
    assert {env[name] for name in PATH_VARIABLES} <= volumes
    assert {SETTINGS["HFQ_METRICS_PORT"], SETTINGS["HFQ_FLOWER_PORT"]} <= exposed


def test_the_build_context_holds_only_what_the_image_copies() -> None:
    # given .dockerignore and the Dockerfile's COPY sources
    patterns = [p for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")]
    sources = {src.rstrip("/") for word, rest in dockerfile() if word == "COPY" for src in rest.split()[:-1]}

    # then everything is left out but those sources (so .env, .venv, .git, results and .hfq never reach a build)
    assert patterns[0] == "*"
    assert {p[1:].rstrip("/") for p in patterns if p.startswith("!")} == sources
    assert all((ROOT / src).exists() for src in sources), sources
