"""`midtrain chat`: an interactive client of the routed chat completion endpoint.

Each user line goes out as an OpenAI chat completion request, to a running `midtrain serve` (`--url`) or to
the same request path in this process; tool calls in the reply run live in the chosen environment and their
results go back as `tool` messages, until the reply calls no tool.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

Complete = Callable[[dict[str, Any]], dict[str, Any]]


def in_process(service: Any) -> Complete:
    """Requests answered by a `completions.ChatService` in this process (what `midtrain serve` runs)."""
    from pipelines.completions import ChatRequest

    return lambda body: service.complete(service.prepare(ChatRequest.model_validate(body)))


def over_http(url: str, timeout: float = 600.0) -> Complete:
    """Requests sent to a running `midtrain serve` at `url` (e.g. http://127.0.0.1:8000)."""
    import httpx

    from pipelines.errors import BadInput

    client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout)

    def complete(body: dict[str, Any]) -> dict[str, Any]:
        try:
            response = client.post("/v1/chat/completions", json=body)
        except httpx.HTTPError as exc:
            raise BadInput(f"--url {url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise BadInput(f"--url {url}: {response.status_code} {response.text[:300]}")
        return response.json()

    return complete


def chat(
    complete: Complete,
    lines: Iterable[str],
    emit: Callable[[str], None],
    domain: str | None = None,
    max_tool_rounds: int = 4,
    max_new_tokens: int = 256,
    model: str = "midtrain",
) -> None:
    """Greedy replies; `/reset` starts over (a fresh environment too), `/quit` ends."""
    env, tools = _chat_env(domain)
    messages: list[dict[str, Any]] = []
    for line in lines:
        line = line.strip()
        if line in ("/quit", "/exit"):
            return
        if line == "/reset" or not line:
            messages = []
            env, tools = _chat_env(domain)
            continue
        messages.append({"role": "user", "content": line})
        for _ in range(max_tool_rounds + 1):
            body: dict[str, Any] = {
                "model": model,
                "messages": messages,
                "max_tokens": max_new_tokens,
                "temperature": 0,
            }
            if tools:
                body["tools"] = tools
            response = complete(body)
            message = response["choices"][0]["message"]
            route = response.get("midtrain", {})
            tag = f"{route.get('adapter', '?')} · {route.get('cluster', '?')} {route.get('score', 0.0):.2f}"
            emit(f"[{tag}] {message.get('content') or ''}".rstrip())
            messages.append({k: v for k, v in message.items() if k in ("role", "content", "tool_calls")})
            calls = message.get("tool_calls") or []
            if not calls or env is None:
                break
            for call in calls:
                name, arguments = call["function"]["name"], json.loads(call["function"]["arguments"])
                observation, _ = env._call_tool(name, arguments)
                emit(f"  tool {name}({json.dumps(arguments)}) → {observation[:200]}")
                messages.append({"role": "tool", "tool_call_id": call["id"], "content": observation})


def _chat_env(domain: str | None) -> tuple[Any, list[dict[str, Any]] | None]:
    if domain is None:
        return None, None
    from pipelines.serve import env_class

    env = env_class(domain)()
    env.reset()
    return env, env._tool_schemas()
