"""``python -m hfqueue`` is the ``hfq`` command."""

import sys

from hfqueue.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
