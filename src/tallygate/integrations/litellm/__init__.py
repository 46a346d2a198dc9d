"""tallygate's metering as LiteLLM proxy callbacks (docs/litellm.md).

- record.py   a UsageRecord from what LiteLLM hands a callback (no LiteLLM import)
- metering.py the pipeline, the ledger writer and the prices, started in LiteLLM's event
              loop on first use and flushed when the proxy shuts down
- logger.py   TallygateLogger, the CustomLogger subclass (imports LiteLLM: the `litellm` extra)

The proxy's config names `callbacks.logging.proxy_handler_instance` (deploy/litellm/callbacks/),
which is `shared_logger()`: one logger a process, whatever entry points a config names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .logger import TallygateLogger


def shared_logger() -> TallygateLogger:
    """The process's one TallygateLogger (LiteLLM imported on the first call)."""
    from .logger import shared

    return shared()
