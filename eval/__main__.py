"""``python -m eval``: the eval package's command line, run by ``ragtune data`` and ``eval``."""

import os

from eval.cli import main

main(prog_name=os.environ.get("RAGTUNE_PROG", "python -m eval"))
