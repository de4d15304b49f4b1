"""Keep the hybrid dense share fitted to the live index, in the background.

Every ``interval`` seconds a daemon thread asks the index whether a fit is due
(``Retriever.fusion_fit_due``: never fitted for its vector space, or a quarter bigger or
smaller since) and, when no re-embedding is running, fits the share per query language on
pseudo-queries (``Retriever.fit_fusion``; about 400 query encodings, seconds on a CPU).
Searches go on meanwhile and pick the new shares up at once. Knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger(__name__)


class FusionFitter:
    def __init__(self, state: Any, interval: float = 60.0) -> None:
        self._state = state
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fits = 0
        self.last: dict[str, Any] | None = None  # the last fit's report, or its error

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="fusion-fit", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def run_once(self) -> bool:
        """Fit now if a fit is due; whether one ran."""
        retriever = self._state.retriever
        if retriever is None or self._state.reindexer.status().state == "running":
            return False
        if not retriever.fusion_fit_due:
            return False
        try:
            self.last = retriever.fit_fusion()
        except Exception as exc:  # noqa: BLE001 - the defaults stay; tried again next round
            log.exception("fitting the hybrid share failed; the defaults stay")
            self.last = {"error": f"{type(exc).__name__}: {exc}"}
            return False
        self.fits += 1
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()
