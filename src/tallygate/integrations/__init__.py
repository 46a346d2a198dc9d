"""tallygate's metering inside other systems (today the LiteLLM proxy: litellm/).

Nothing here is imported by the gateway itself.
"""
