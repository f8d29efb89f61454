"""A real ``hfq api`` process on a free loopback port, for the HTTP API's tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hfqueue import Settings
from hfqueue.core.apikeys import hash_key, new_key
from hfqueue.state.embedded import free_port
from tests.conftest import settings_env, wait_serving


@dataclass
class ApiServer:
    """A running ``hfq api``: its base URL, the keys it accepts by name, its log and settings."""

    url: str
    keys: dict[str, str]
    log: Path
    settings: Settings
    proc: subprocess.Popen[bytes]

    def headers(self, name: str) -> dict[str, str]:
        """The Authorization header of the key named ``name``."""
        return {"Authorization": f"Bearer {self.keys[name]}"}

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL)."""
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_api(settings: Settings, folder: Path, names: tuple[str, ...] = ("alice", "bob"), **limits: float) -> ApiServer:
    """Start ``hfq api`` for ``settings`` with one fresh key per name, ready when returned."""
    keys = {name: new_key() for name in names}
    settings = settings.model_copy(update={"api_keys": {n: hash_key(k) for n, k in keys.items()},
                                           "api_files_dir": folder / "files", **limits})
    port = free_port()
    log = folder / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hfqueue", "api", "--port", str(port)],
                                env=settings_env(settings), stdout=out, stderr=subprocess.STDOUT)
    server = ApiServer(f"http://127.0.0.1:{port}", keys, log, settings, proc)
    wait_serving(f"{server.url}/health", proc, log, "hfq api", timeout=30)
    return server


def api_fixture(name: str, idle: bool) -> object:
    """A module-scoped fixture ``name``: an API server on the session's queue (``idle``: on a queue no worker
    serves, so its jobs stay queued)."""

    def fixture(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
        own = settings.model_copy(update={"queue": f"api-idle-{time.monotonic_ns()}"}) if idle else settings
        server = start_api(own, tmp_path_factory.mktemp(name), api_max_body_mb=1.0, api_max_upload_mb=1.0)
        yield server
        server.stop()

    return pytest.fixture(scope="module", name=name)(fixture)
