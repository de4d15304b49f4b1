"""``python -m eval``: the eval package's command line (what ``ragtune data`` and ``ragtune eval`` run)."""

import os

from eval.cli import main

main(prog_name=os.environ.get("RAGTUNE_PROG", "python -m eval"))
