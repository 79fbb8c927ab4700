"""midtrain: config-driven pipeline that turns an open LLM into an agentic one."""

__version__ = "0.1.0"
