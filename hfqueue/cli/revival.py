"""Keeping the zero-setup default up: long-running processes bring a crashed embedded redis-server back.

A worker, ``hfq flower`` or ``hfq api`` started without ``HFQ_BROKER_URL`` runs a :class:`Revival` thread.
Each second it looks at the embedded server; when the server is gone (a crash, an out-of-memory kill), the
first process to notice starts it again under the server's lock, from its append-only file, at the same
address, and every connected process simply reconnects. When ``hfq down`` stopped it, they wait quietly for
an ``hfq`` command to start it again. Processes on a configured ``HFQ_BROKER_URL`` start nothing.

A server that came back from its append-only file may have lost its last second of writes (``appendfsync
everysec``): a chunk's count, a queued chunk's message. So a worker that sees a server run it has not
seen reconciled (a restart under it, or a server restored from disk before it started) resumes every open
job once per server run: chunks on disk are counted, chunks without a part are sent again (a copy that
finds its part written is skipped). The jobs then finish by themselves, every row exactly once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from hfqueue.core.config import Settings
from hfqueue.errors import HfqError
from hfqueue.state import embedded
from hfqueue.state.keys import Keys

logger = logging.getLogger(__name__)

INTERVAL = 1.0  # seconds between looks at the server


def restart_this_command(url: str) -> None:
    """What an ``hfq`` process does when the server came back at another address (its port was taken while it
    was down): say so, end its children (a worker's serving process, whose chunk runs again), and start the
    same command again in this process, which then connects to the new address."""
    logger.error("the embedded redis-server came back at %s, another address (its old port was taken): this "
                 "process starts again to connect there", url)
    for child in _children(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
    logging.shutdown()  # flush the log before the process image is replaced
    os.execv(sys.executable, [sys.executable, "-m", "hfqueue", *sys.argv[1:]])


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Revival(threading.Thread):
    """Watches the embedded redis-server of ``settings.state_dir`` that this process is connected to at ``url``.

    ``reconcile``: resume open jobs after a server run restored from its append-only file (workers do).
    ``on_moved``: called when the server came back at another address (its port was taken meanwhile).
    """

    def __init__(self, settings: Settings, url: str, *, reconcile: bool = False,
                 on_moved: Callable[[str], None] = restart_this_command, interval: float = INTERVAL) -> None:
        super().__init__(name="hfq-revival", daemon=True)
        self.settings, self.url, self.reconcile, self.on_moved = settings, url, reconcile, on_moved
        self.interval = interval
        self._stopping = threading.Event()  # not _stop: threading.Thread has a method of that name
        self._said: set[str] = set()  # what this outage has logged already: one line each, not one per second
        self._run_id: str | None = None
        self._redis: redis.Redis | None = None  # reconnects by itself to a server back at the same address
        self._client: Any = None

    def run(self) -> None:
        while True:
            try:
                self.step()
            except Exception:  # noqa: BLE001 - the watch must outlive any one failed look
                logger.exception("looking after the embedded redis-server failed; looking again")
            if self._stopping.wait(self.interval):
                return

    def stop(self) -> None:
        """End the thread after its current look."""
        self._stopping.set()

    def step(self) -> None:
        """One look: bring a crashed server back, note a restart, reconcile once per restored server run."""
        state_dir = self.settings.state_dir
        state = embedded.running(state_dir)
        if state is None:
            if embedded.stopped_by_operator(state_dir):
                self._once("down", logging.WARNING, "the embedded redis-server was stopped (hfq down); waiting for "
                           "it to be started again (any hfq command starts it)")
                return
            self._once("gone", logging.WARNING, "the embedded redis-server is gone (crashed or killed); starting it "
                       "again from its append-only file")
            try:
                if embedded.revive(state_dir) is None:
                    return
            except HfqError as exc:
                self._once("failed", logging.ERROR, f"cannot start the embedded redis-server again: {exc}; retrying")
                return
            state = embedded.running(state_dir)
            if state is None:
                return
        if state["url"] != self.url:
            self.stop()  # this process is done with the server: it reconciles nothing more
            self.on_moved(state["url"])
            return
        if self._said:
            logger.warning("the embedded redis-server is back at %s", self.url)
            self._said.clear()
        if self.reconcile:
            self._reconcile(state)

    def _once(self, what: str, level: int, message: str) -> None:
        if what not in self._said:
            self._said.add(what)
            logger.log(level, message)

    def _reconcile(self, state: dict[str, Any]) -> None:
        """Resume the open jobs once per server run that was restored from disk or restarted under us."""
        if self._redis is None:
            self._redis = redis.Redis.from_url(self.url, decode_responses=True, socket_timeout=5,
                                               socket_connect_timeout=2)
        r = self._redis
        run_id = str(r.info("server")["run_id"])
        restarted = self._run_id is not None and run_id != self._run_id
        first_look = self._run_id is None
        self._run_id = run_id
        if not (restarted or (first_look and state["restored"])):
            return
        # One process per server run does it; the key outlives any job it could concern.
        if not r.set(Keys.reconciled(run_id), os.getpid(), nx=True, ex=self.settings.job_ttl):
            return
        from hfqueue.client import Client
        from hfqueue.producer.recovery import recover_open_jobs

        if self._client is None:
            self._client = Client(self.settings)
        resumed = recover_open_jobs(self._client.sender, self._client.hooks)
        logger.warning("the embedded redis-server came back from its append-only file: %d open jobs reconciled "
                       "with their output folders", resumed)


def watch_embedded(settings: Settings, *, reconcile: bool = False,
                   on_moved: Callable[[str], None] = restart_this_command) -> Revival | None:
    """Start a :class:`Revival` thread when ``settings`` use the embedded server (no ``HFQ_BROKER_URL``); else None.

    Starts the server first when it is not running (this process needs it anyway).
    """
    if settings.broker_url:
        return None
    revival = Revival(settings, embedded.ensure_running(settings.state_dir), reconcile=reconcile, on_moved=on_moved)
    revival.start()
    return revival
