"""`callbacks.logging.proxy_handler_instance`: tallygate's LiteLLM logger.

One `litellm_request` JSON line on stdout (Cloud Logging reads it) and one `litellm_usage`
ledger row per call, from the same record. config.yaml:

    litellm_settings:
      callbacks: ["callbacks.logging.proxy_handler_instance"]
"""

from tallygate.integrations.litellm import shared_logger

proxy_handler_instance = shared_logger()
