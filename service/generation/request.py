"""One generation request: its prompt and limits, and the text the engine streams into it.

Callers hold it to stream, wait or cancel; the engine fills it. A request the engine could not
finish ends with ``GenerationFailed``. Knows nothing of batching.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


class GenerationFailed(RuntimeError):
    """A request the engine could not finish. Its message is one line that names no server
    internals; the engine logs the cause with its traceback."""


@dataclass
class GenerationRequest:
    """One request: its prompt, limits, and the stream of text it produces."""

    prompt_ids: list[int]
    max_new_tokens: int
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.0
    seed: int | None = None
    adapter: str | None = None
    deltas: queue.Queue[str | None] = field(default_factory=queue.Queue)
    text: str = ""
    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    queued_at: float = field(default_factory=time.perf_counter)
    started_at: float | None = None  # when its prompt was prefilled (it boarded a batch)
    finished_at: float | None = None
    # the engine's own state for this request, set at submit
    sampler: Any = field(default=None, repr=False)  # its torch.Generator
    text_stream: Any = field(default=None, repr=False)  # its sampling.TextStream
    on_finish: Any = field(default=None, repr=False)  # called with the request as it ends

    def cancel(self) -> None:
        self.cancelled.set()

    def stream(self, timeout: float | None = None) -> Iterator[str]:
        """Text deltas as they are generated; ends when the job finishes."""
        while True:
            delta = self.deltas.get(timeout=timeout)
            if delta is None:
                if self.error is not None:
                    raise self.error
                return
            yield delta

    def wait(self, timeout: float | None = None) -> GenerationRequest:
        if not self.done.wait(timeout):
            raise TimeoutError("generation did not finish in time")
        if self.error is not None:
            raise self.error
        return self
