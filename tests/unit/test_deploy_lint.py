"""The deployment files through the linters that run offline: yamllint, hadolint, kubernetes-validate (schemas
bundled) and check-jsonschema's copy of the Compose specification. No Docker engine or cluster is needed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))


def run(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / tool), *args], capture_output=True, text=True, timeout=100, cwd=ROOT)


def test_yaml_files_pass_yamllint() -> None:
    # given every YAML file of the deployment, when yamllint checks them (errors only; 120-column lines)
    files = ["docker-compose.yml", "docker-compose.cpu.yml", *map(str, K8S), "deploy/prometheus/prometheus.yml"]
    done = run("yamllint", "--no-warnings", "-d",
               "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}", *files)

    # then there is no error
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_dockerfile_passes_hadolint() -> None:
    # given the GPU image's Dockerfile, when hadolint checks it, then it finds nothing
    done = run("hadolint", "Dockerfile.gpu")
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_manifests_are_valid_objects() -> None:
    # given the manifests, when they are validated strictly against the bundled Kubernetes schemas
    done = run("kubernetes-validate", "--strict", *map(str, K8S))

    # then every built-in object passes (KEDA's custom resources have no bundled schema and are only noted)
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"passed for resource deployment/hfq-worker", done.stdout + done.stderr)


def test_compose_files_follow_the_compose_specification(tmp_path: Path) -> None:
    # given the compose file and the CPU override (whose `!reset` tag plain YAML parsers cannot read: null is what
    # the tag leaves)
    override = tmp_path / "docker-compose.cpu.yml"
    override.write_text((ROOT / "docker-compose.cpu.yml").read_text().replace("!reset null", "null"))

    # when both are checked against the Compose specification
    done = run("check-jsonschema", "--builtin-schema", "vendor.compose-spec", "docker-compose.yml", str(override))

    # then both follow it
    assert done.returncode == 0, done.stdout + done.stderr
