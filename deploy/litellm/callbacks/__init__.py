"""The module paths the deployment guide names, for the LiteLLM proxy's config.yaml.

LiteLLM resolves `callbacks.logging.proxy_handler_instance` to this folder's logging.py,
next to the config file. Both modules are thin: the metering is tallygate's
(tallygate.integrations.litellm), installed in the image with the `litellm` extra.
"""
