"""``hfq worker --gpus``: one worker process per GPU on a host, each pinned to its GPU, restarted if it dies.

Each GPU gets a whole ``hfq worker`` of its own (a Celery parent and its one serving child) with
``CUDA_VISIBLE_DEVICES`` set to that GPU, so the serving process sees one device and CUDA is never
shared between processes. Each worker gets its own metrics port (``HFQ_METRICS_PORT`` + its position)
and node name (``NAME-gpuN@HOST``). The supervisor touches no CUDA itself and only watches: a worker
that exits is started again after a back-off that grows while it keeps dying.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from hfqueue.core.config import Settings
from hfqueue.errors import ConfigError

logger = logging.getLogger(__name__)

HEALTHY_AFTER = 60.0  # seconds a worker must live for its back-off to start again from 1 s
MAX_BACKOFF = 60.0


def parse_gpus(spec: str) -> list[str]:
    """The GPUs ``--gpus`` names: ``all`` (the GPUs ``CUDA_VISIBLE_DEVICES`` leaves this process where it is set,
    else every GPU ``nvidia-smi`` lists), or indexes / UUIDs separated by commas.

    >>> parse_gpus("0,1")
    ['0', '1']
    """
    if spec.strip() == "all":
        return _visible_gpus()
    gpus = [g.strip() for g in spec.split(",") if g.strip()]
    bad = [g for g in gpus if not _is_gpu(g)]
    if not gpus or bad or len(set(gpus)) != len(gpus):
        raise ConfigError(f"--gpus takes `all` or distinct GPU indexes or UUIDs separated by commas (e.g. 0,1), "
                          f"got {spec!r}", value=spec)
    return gpus


def _is_gpu(entry: str) -> bool:
    """Whether ``entry`` names a GPU as CUDA_VISIBLE_DEVICES does: an index, or a GPU or MIG UUID."""
    return entry.isdigit() or entry.startswith(("GPU-", "MIG-"))


def _visible_gpus() -> list[str]:
    # A process confined to some GPUs (by Slurm, a scheduler or its user) keeps to them: nvidia-smi lists them all.
    # CUDA reads the list up to its first entry that is not a GPU ("-1" hides every one).
    confined = os.environ.get("CUDA_VISIBLE_DEVICES")
    if confined is not None:
        entries = [g.strip() for g in confined.split(",")]
        valid = next((i for i, g in enumerate(entries) if not _is_gpu(g)), len(entries))
        if valid == 0:
            raise ConfigError(f"--gpus all: CUDA_VISIBLE_DEVICES={confined!r} leaves this process no GPU; unset it "
                              "or name GPUs in it (e.g. 0,1), or run `hfq worker` without --gpus for a CPU worker",
                              value="all")
        return entries[:valid]
    try:
        listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                                text=True, timeout=30, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(f"--gpus all could not list the GPUs ({exc}); name them instead, e.g. --gpus 0,1",
                          value="all") from None
    if not listed:
        raise ConfigError("--gpus all: nvidia-smi lists no GPU on this host; run `hfq worker` without --gpus for "
                          "a CPU worker", value="all")
    return listed


@dataclass
class Slot:
    """One GPU's worker: its process, and how it has been dying."""

    gpu: str
    name: str
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0


class Supervisor:
    """Starts and watches one ``hfq worker`` per GPU until SIGTERM or SIGINT, which it passes on."""

    def __init__(self, settings: Settings, gpus: list[str], name: str | None = None,
                 loglevel: str | None = None) -> None:
        if settings.device_map is not None:
            # Each worker here sees one GPU; a device map exists to spread one model over several.
            raise ConfigError("`hfq worker --gpus` pins one worker to each GPU, and HFQ_DEVICE_MAP=auto spreads each "
                              "model over every GPU its worker sees: use one or the other. For models larger than one "
                              "GPU, run `hfq worker` without --gpus (it owns every visible GPU; narrow them with "
                              "CUDA_VISIBLE_DEVICES or HFQ_MAX_MEMORY); otherwise unset HFQ_DEVICE_MAP",
                              value=settings.device_map)
        host = socket.gethostname()
        base = name.split("@", 1)[0] if name else f"hfq-{os.getpid()}"
        # The workers inherit this process's environment (HFQ_* settings, HF_* variables) plus their GPU.
        inherited = dict(os.environ)
        self.loglevel = loglevel
        # GPU indexes as nvidia-smi numbers them (PCI bus order), not CUDA's default fastest-first order, which on a
        # host of mixed GPUs would pin worker gpu0 to another card than nvidia-smi's GPU 0; a set order is kept.
        inherited.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        self.slots = [Slot(gpu, f"{base}-gpu{gpu}@{host}", {
            **inherited, "CUDA_VISIBLE_DEVICES": gpu,
            "HFQ_METRICS_PORT": str(settings.metrics_port + i if settings.metrics_port else 0),
        }) for i, gpu in enumerate(gpus)]
        self.stopping = False

    def run(self) -> int:
        """Serve until told to stop; return 0 once every worker has exited, 2 when a worker refused its settings
        (exit 2: restarting would not mend them)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        for slot in self.slots:
            self._start(slot)
        refused = False
        while not self.stopping and not refused:
            for slot in self.slots:
                refused = self._watch(slot) or refused
            time.sleep(0.2)
        for slot in self.slots:  # warm shutdown: each finishes its running chunk
            if slot.proc is not None and slot.proc.poll() is None:
                slot.proc.send_signal(signal.SIGTERM)
        for slot in self.slots:
            if slot.proc is not None:
                slot.proc.wait()
                _kill_group(slot.proc)
        return 2 if refused else 0

    def _stop(self, signum: int, _frame: Any) -> None:
        logger.info("received %s: stopping %d workers", signal.Signals(signum).name, len(self.slots))
        self.stopping = True

    def _start(self, slot: Slot) -> None:
        argv = [sys.executable, "-m", "hfqueue", "worker", "--name", slot.name]
        if self.loglevel:
            argv += ["--loglevel", self.loglevel]
        # A session of its own: when the worker dies, its serving child goes with it (killpg), never orphaned.
        slot.proc = subprocess.Popen(argv, env=slot.env, start_new_session=True)
        slot.started = time.monotonic()
        logger.info("started worker %s (pid %d) on GPU %s", slot.name, slot.proc.pid, slot.gpu)

    def _watch(self, slot: Slot) -> bool:
        """Start a worker whose back-off is over, note one that exited; True when it refused its settings."""
        if slot.proc is None:
            if time.monotonic() >= slot.restart_at:
                self._start(slot)
            return False
        code = slot.proc.poll()
        if code is None:
            return False
        _kill_group(slot.proc)
        if code == 2:
            logger.error("worker %s refused its settings (exit 2); stopping the others", slot.name)
            slot.proc = None
            return True
        lived = time.monotonic() - slot.started
        slot.failures = 1 if lived >= HEALTHY_AFTER else slot.failures + 1
        delay = min(MAX_BACKOFF, 2.0 ** (slot.failures - 1))
        logger.warning("worker %s on GPU %s exited with %s after %.0f s; starting it again in %.0f s",
                       slot.name, slot.gpu, code, lived, delay)
        slot.proc, slot.restart_at = None, time.monotonic() + delay
        return False


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill what is left of a worker's process group (its serving child, when the parent died first)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
