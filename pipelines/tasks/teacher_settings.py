"""The `teacher:` block of a recipe's `type: teacher` source (kept apart from pipelines/tasks/llm_teacher.py, which loads
the chat stack: configs validate without it)."""

from __future__ import annotations

from pydantic import Field

from pipelines.config import OmitsNewKeysAtDefault


class TeacherSettings(OmitsNewKeysAtDefault):
    """The `teacher:` block: which model writes the traces, and how."""

    omitted_at_default = ("reflexion_retries",)

    base_url: str = Field(description="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1.")
    model: str
    api_key_env: str | None = Field(None, description="Environment variable holding the API key (if any).")
    temperature: float = Field(0.7, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int = Field(512, ge=1, description="Per reply.")
    max_turns: int = Field(
        6, ge=1, description="Assistant turns per episode; an episode still calling then is rejected."
    )
    concurrency: int = Field(4, ge=1, description="Episodes in flight (each with its own environment).")
    timeout_s: float = Field(300.0, gt=0, description="Per request.")
    retries: int = Field(2, ge=0, description="Retries of a request that failed to connect or got a 5xx.")
    reflexion_retries: int = Field(
        0,
        ge=0,
        description="An episode the task's judge fails is retried with the judge's reason (which call or check "
        "was wrong, never the expected values) as a user turn, up to this many times; a success becomes a "
        "`recovery` trace: the failed attempt, the feedback, the fix.",
    )
