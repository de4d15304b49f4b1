"""The ``ragtune`` command line, one module per command group, all on one click group.

``serve``, ``config`` and ``models`` (``serving``); ``ask`` (``ask``); ``ingest``, ``search`` and
``reindex`` (``index``); ``tune`` (``tune``); ``adapters`` (``adapters``); ``feedback``
(``feedback``); ``data`` and ``eval`` (``forward``: run in a child process, so the service never
imports ``eval``).
"""

from service.cli import adapters, ask, feedback, forward, index, serving, tune  # noqa: F401
from service.cli.common import main

__all__ = ["main"]
