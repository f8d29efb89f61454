"""Helpers for the monitoring tests: a monitored worker with Flower beside it, scrapes, and a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from hfqueue import Client, Settings
from tests.conftest import WorkerProcess, wait_serving

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


@dataclass
class Monitored:
    """A worker serving metrics, a Flower watching it, and a client on their queue."""

    settings: Settings
    client: Client
    worker: WorkerProcess
    worker_name: str
    flower_url: str
    auth: tuple[str, str]

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """One scrape of the worker's endpoint: (sample name, sorted labels) -> value."""
        return scrape(f"http://127.0.0.1:{self.settings.metrics_port}/metrics")

    def flower(self, path: str, auth: tuple[str, str] | None = None) -> requests.Response:
        """GET a Flower path with the test's credentials (or ``auth``)."""
        return requests.get(self.flower_url + path, auth=auth or self.auth, timeout=10)


def scrape(url: str, auth: tuple[str, str] | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Parse a Prometheus text exposition into samples."""
    text = requests.get(url, auth=auth, timeout=10).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def families(url: str, auth: tuple[str, str] | None = None) -> set[str]:
    """The metric family names an endpoint serves."""
    text = requests.get(url, auth=auth, timeout=10).text
    return {family.name for family in text_string_to_metric_families(text)}


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


def start_flower(env: dict[str, str], port: int, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``hfq flower`` on a loopback port, ready (its health check answers) when returned."""
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hfqueue", "flower", "--port", str(port), *args], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    wait_serving(f"http://127.0.0.1:{port}/healthcheck", proc, log, "flower")
    return proc


def in_terminal(args: list[str], env: dict[str, str], timeout: float = 90) -> tuple[int, str]:
    """Run ``hfq ARGS`` with a pseudo-terminal as its stdout (160 columns); its exit code and its output,
    escape sequences removed. ``env`` comes from ``settings_env``, which leaves out COLUMNS/LINES (they would
    override the terminal's size)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "hfqueue", *args], stdin=slave, stdout=slave, stderr=slave,
                            env={**env, "TERM": "xterm-256color"}, close_fds=True)
    os.close(slave)
    out, deadline = bytearray(), time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                out += data
            elif proc.poll() is not None:
                break
        else:
            proc.kill()
            raise AssertionError(f"hfq {' '.join(args)} still running after {timeout} s:\n{out.decode()[-2000:]}")
    finally:
        os.close(master)
    return proc.wait(10), ANSI.sub("", out.decode(errors="replace"))
