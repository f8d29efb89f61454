"""The ``hfq`` command: submit, follow, cancel and resume jobs, run workers, stop the embedded Redis.

Exit codes: 0 done, 1 the job failed or was cancelled, 2 bad input or settings, 3 the job finished
with some rows failed, 124 a wait timed out.

The parser is in :mod:`hfqueue.cli.parser`, the job commands in :mod:`hfqueue.cli.jobs`, the commands that run a
process in :mod:`hfqueue.cli.serve`.
"""

from __future__ import annotations

import json
import logging
import sys

from hfqueue.cli.jobs import EXIT_FAILED, EXIT_INPUT, EXIT_TIMEOUT
from hfqueue.cli.parser import build_parser
from hfqueue.core.config import load_settings
from hfqueue.errors import HfqError, JobFailedError, WaitTimeoutError


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hfq``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
        logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return int(args.func(args, settings) or 0)
    except WaitTimeoutError as exc:
        print(f"hfq: {exc}", file=sys.stderr)
        return EXIT_TIMEOUT
    except JobFailedError as exc:
        print(f"hfq: {exc}", file=sys.stderr)
        if getattr(args, "json", False) and exc.status is not None:
            print(json.dumps(exc.status.summary(), indent=2))
        return EXIT_FAILED
    except HfqError as exc:
        print(f"hfq: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        return 130
