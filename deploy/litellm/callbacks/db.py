"""`callbacks.db.log_event`: the ledger row of a call, as the deployment guide names it.

The same logger as `callbacks.logging.proxy_handler_instance`: the row and the log line come
from one record, and a call handed over by both entry points is metered once. As a custom
callback function it goes in both lists (a failure is a row too):

    litellm_settings:
      success_callback: ["callbacks.db.log_event"]
      failure_callback: ["callbacks.db.log_event"]

`callbacks: ["callbacks.logging.proxy_handler_instance"]` alone does the same.
"""

from tallygate.integrations.litellm import shared_logger

_logger = shared_logger()


async def log_event(kwargs, completion_response, start_time, end_time):
    """LiteLLM's custom callback signature; a failure carries `exception` in kwargs."""
    if kwargs.get("exception") is not None:
        await _logger.async_log_failure_event(kwargs, completion_response, start_time, end_time)
    else:
        await _logger.async_log_success_event(kwargs, completion_response, start_time, end_time)
