"""Process-wide runtime set-up from settings: logging and the torch thread count.

Called once by the CLI and the app's lifespan, never at import. It loads no model.
"""

from __future__ import annotations

import logging

from service.settings import Settings


def configure_logging(level: str = "info") -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def configure_torch(settings: Settings) -> None:
    """Apply the thread count; torch's default (all cores) stands when it is unset."""
    import torch

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
