"""tallygate: a fast, multi-tenant, OpenAI-compatible LLM gateway that meters every request."""

__version__ = "0.1.0"
