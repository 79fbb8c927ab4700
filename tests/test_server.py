"""`midtrain serve --backend peft` as a real server process, talked to with the `openai` client: each request is
routed (header, body, log), tool calls come back OpenAI-shaped, streaming gives the same answer, bad requests
get OpenAI-shaped errors; `midtrain chat --url` is a client of it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.serving import (
    BOOKING_QUESTION,
    TOOLS,
    WEATHER_QUESTION,
    free_port,
    midtrain_cli,
    routed_run,
    start,
    stop,
    tool_calling_tiny_base,
)


@pytest.fixture(scope="module")
def tool_calling_base(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tokenizer) -> Path:
    root = tmp_path_factory.mktemp("serve")
    return tool_calling_tiny_base(tiny_model_dir, root / "tool-calling-tiny", tokenizer)


@pytest.fixture(scope="module")
def run_dir(tool_calling_base: Path, tokenizer) -> Path:
    return routed_run(tool_calling_base.parent, tool_calling_base, tokenizer)


@pytest.fixture(scope="module")
def server(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    port = free_port()
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    command = [*midtrain_cli(), "serve", str(run_dir / "router"), "--port", str(port), "--max-tokens", "96"]
    process = start(command, f"http://127.0.0.1:{port}/health", log, timeout=180)
    yield f"http://127.0.0.1:{port}", log
    stop(process)


@pytest.fixture(scope="module")
def client(server: Any) -> Any:
    from openai import OpenAI

    return OpenAI(base_url=f"{server[0]}/v1", api_key="unused", max_retries=0)


def _ask(client: Any, question: str, **kwargs: Any) -> tuple[Any, Any]:
    """(headers, ChatCompletion) of one greedy request."""
    raw = client.chat.completions.with_raw_response.create(
        model=kwargs.pop("model", "midtrain"),
        messages=[{"role": "user", "content": question}],
        temperature=0,
        **kwargs,
    )
    return raw.headers, raw.parse()


def test_models_lists_the_router_the_adapters_and_the_base(client: Any) -> None:
    assert [m.id for m in client.models.list().data] == ["midtrain", "plan", "tool", "base"]


def test_each_request_is_routed_and_tool_calls_come_back_parsed(client: Any, server: Any) -> None:
    headers, weather = _ask(client, WEATHER_QUESTION, tools=TOOLS)
    assert headers["x-midtrain-adapter"] == "tool" and headers["x-midtrain-routed"] == "true"
    assert 0.5 < float(headers["x-midtrain-route-score"]) <= 1.0
    choice = weather.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    assert weather.usage.prompt_tokens > 100 and weather.usage.completion_tokens > 10

    headers, booking = _ask(client, BOOKING_QUESTION)
    assert headers["x-midtrain-adapter"] == "plan" and booking.choices[0].message.tool_calls is None
    assert booking.choices[0].message.content and booking.model_extra["midtrain"]["adapter"] == "plan"
    log = server[1].read_text()
    assert "route: adapter=tool cluster=tool" in log and "route: adapter=plan cluster=plan" in log


def test_the_adapter_answers_and_naming_one_skips_the_router(client: Any) -> None:
    """The same weather request forced onto `plan` (a different adapter) writes no get_weather call."""
    headers, forced = _ask(client, WEATHER_QUESTION, tools=TOOLS, model="plan")
    assert headers["x-midtrain-adapter"] == "plan" and headers["x-midtrain-routed"] == "false"
    assert not forced.choices[0].message.tool_calls


def test_greedy_reply_equals_the_in_process_router(client: Any, run_dir: Path) -> None:
    from pipelines.serve import Router

    router = Router(run_dir / "router")
    route, text = router.generate([{"role": "user", "content": WEATHER_QUESTION}], TOOLS, max_new_tokens=96)
    reply = router.codec.parse(text, router.schema)
    _, served = _ask(client, WEATHER_QUESTION, tools=TOOLS, max_tokens=96)
    calls = [
        (c.function.name, json.loads(c.function.arguments)) for c in served.choices[0].message.tool_calls
    ]
    assert route.adapter == "tool" and calls == [(c["name"], c["arguments"]) for c in reply.tool_calls]
    assert served.choices[0].message.content == (text.split("<tool_call>", 1)[0].strip() or None)


def test_streaming_gives_the_same_answer(client: Any) -> None:
    _, whole = _ask(client, WEATHER_QUESTION, tools=TOOLS)
    chunks = list(
        client.chat.completions.create(
            model="midtrain",
            messages=[{"role": "user", "content": WEATHER_QUESTION}],
            tools=TOOLS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [t for c in chunks if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert content.strip() == (whole.choices[0].message.content or "")
    assert [(t.function.name, t.function.arguments) for t in calls] == [
        (t.function.name, t.function.arguments) for t in whole.choices[0].message.tool_calls
    ]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # really streamed


def test_bad_requests_get_openai_errors(client: Any) -> None:
    import openai

    with pytest.raises(openai.NotFoundError, match="does not exist"):
        _ask(client, WEATHER_QUESTION, model="gpt-4o")
    with pytest.raises(openai.BadRequestError, match="tool_choice"):
        _ask(client, WEATHER_QUESTION, tools=TOOLS, tool_choice="required")
    with pytest.raises(openai.BadRequestError, match="messages"):
        client.chat.completions.create(model="midtrain", messages=[])


def test_chat_is_a_client_of_the_server(server: Any, run_dir: Path) -> None:
    out = subprocess.run(
        [*midtrain_cli(), "chat", str(run_dir / "router"), "--url", server[0], "--max-new-tokens", "24"],
        input=f"{BOOKING_QUESTION}\n/quit\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("[plan · plan ")


def test_vllm_backend_needs_an_upstream(run_dir: Path) -> None:
    result = subprocess.run(
        [*midtrain_cli(), "serve", str(run_dir / "router"), "--backend", "vllm"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "--backend vllm needs --upstream URL" in result.stderr
    port = free_port()  # nothing listens there
    result = subprocess.run(
        [*midtrain_cli(), "serve", str(run_dir / "router"), "--backend", "vllm", "--upstream",
         f"http://127.0.0.1:{port}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2 and "no vLLM server answers /v1/models" in result.stderr


def test_transformers_serve_returns_the_reasoning_of_a_folder_midtrain_wrote(tool_calling_base: Path) -> None:
    """A model folder midtrain writes (adapter tokenizers, `midtrain export`) carries its response template;
    `transformers serve` parses replies with it and returns only the fields it knows. With TRL's name for the
    reasoning field the whole `<think>` block vanished from the reply (the teacher loop then rejected every turn
    of a trained adapter as "no reasoning"): the reasoning must come back, with the call."""
    from openai import OpenAI

    from pipelines.chat import DEFAULT_SYSTEM_PROMPT
    from tests.openai_server import serve

    with serve(tool_calling_base) as url:
        reply = OpenAI(base_url=url, api_key="unused", max_retries=0).chat.completions.create(
            model=str(tool_calling_base), tools=TOOLS,
            messages=[{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": WEATHER_QUESTION}],
            temperature=0, max_tokens=64,
        )  # fmt: skip
    message = reply.choices[0].message
    assert "<observe>Look up Oslo first, then answer.</observe>" in (message.model_extra or {}).get(
        "reasoning_content", ""
    ), message
    (call,) = message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
