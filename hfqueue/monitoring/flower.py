"""Flower for operators: ``hfq flower`` with authentication on, and chunk tasks that read well in it.

Flower shows a task's ``argsrepr`` in place of its arguments, so each chunk task is sent with a one-line
description (:meth:`ChunkMessage.describe <hfqueue.core.messages.ChunkMessage.describe>`: job, chunk k of N,
rows, task, model) instead of its message: inline rows and paths inside the spec never reach the dashboard,
and an operator reads what a task is at a glance.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
from pathlib import Path

from hfqueue.core.config import Settings
from hfqueue.errors import ConfigError

logger = logging.getLogger(__name__)

PASSWORD_FILE = "flower-password"
# Flower's chunk runtime histogram stops at 10 s by default; chunks run for minutes.
RUNTIME_BUCKETS = "0.5,1,5,15,30,60,120,300,600,1200,1800,3600,7200"
# The tasks page shows no arguments by default: ours are the readable description, and the result the summary.
TASKS_COLUMNS = "name,args,state,result,received,runtime,worker,uuid"


def credentials(settings: Settings) -> tuple[str, str, Path | None]:
    """Flower's user and password, and the file a password was generated into just now (else None).

    ``HFQ_FLOWER_PASSWORD`` when set; otherwise a password generated once and kept, readable by this
    user only, in the state folder.
    """
    if settings.flower_password is not None:
        return settings.flower_user, settings.flower_password.get_secret_value(), None
    path = settings.state_dir / PASSWORD_FILE
    if path.exists():
        return settings.flower_user, path.read_text().strip(), None
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)  # letters, digits, - and _: nothing Flower's option parsing splits on
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return settings.flower_user, password, path


def is_loopback(address: str) -> bool:
    """Whether ``address`` is reachable from this host only."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def run_flower(settings: Settings, *, address: str, port: int, auth: bool = True) -> None:
    """Serve Flower against the configured broker until stopped (``hfq flower``).

    Basic auth is on unless ``auth`` is False, which only a loopback address allows. Flower's switch
    that opens its API to anyone (``FLOWER_UNAUTHENTICATED_API``) is removed from the environment.
    """
    from hfqueue.state.broker import broker_url, make_celery

    if not auth and not is_loopback(address):
        raise ConfigError(f"Flower without authentication may listen on loopback only, not {address!r}: drop "
                          "--no-auth, or set HFQ_FLOWER_ADDRESS=127.0.0.1", value=address)
    if os.environ.pop("FLOWER_UNAUTHENTICATED_API", None) is not None:
        logger.warning("ignoring FLOWER_UNAUTHENTICATED_API: hfq never serves Flower's API unauthenticated")
    app = make_celery(settings, broker_url(settings))
    # In-process arguments, not the command line: the password does not show in `ps`.
    argv = ["flower", f"--address={address}", f"--port={port}"]
    for option, default in (("task_runtime_metric_buckets", RUNTIME_BUCKETS), ("tasks_columns", TASKS_COLUMNS)):
        if f"FLOWER_{option.upper()}" not in os.environ:  # the operator's own choice wins
            argv.append(f"--{option}={default}")
    where = f"http://{address}:{port}/"
    if auth:
        user, password, generated = credentials(settings)
        argv.append(f"--basic_auth={user}:{password}")
        _metrics_behind_auth()
        if generated is not None:
            print(f"Flower at {where} — user {user!r}, password {password!r} (generated and kept in {generated}; "
                  "shown this once)", flush=True)
        else:
            kept = "HFQ_FLOWER_PASSWORD" if settings.flower_password else settings.state_dir / PASSWORD_FILE
            print(f"Flower at {where} — user {user!r}, password in {kept}", flush=True)
    else:
        print(f"Flower at {where} — no authentication (loopback only)", flush=True)
    app.start(argv)


def _metrics_behind_auth() -> None:
    """Flower 2 serves /metrics (worker names, task counts) to anyone; with auth on, it asks for it there too.

    Prometheus scrapes it with the same basic-auth credentials (deploy/prometheus/prometheus.yml).
    /healthcheck stays open for load balancers and container health checks.
    """
    from flower.views import monitor
    from tornado.web import authenticated

    if not getattr(monitor.Metrics.get, "_hfq_auth", False):
        get = authenticated(monitor.Metrics.get)
        get._hfq_auth = True  # type: ignore[attr-defined]
        monitor.Metrics.get = get  # type: ignore[method-assign]
