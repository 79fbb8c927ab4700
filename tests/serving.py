"""Shared by the serving tests: a run folder whose adapters answer a weather request with a tool call, a
router trained on that run's mix, and starting/stopping real server processes on free local ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from pipelines.router import run as train_router
from pipelines.run_config import RouterSection
from tests.helpers import WEATHER_TOOL, _chat_trace, _tool_trace, make_adapter, two_cluster_config, write_mix

WEATHER_QUESTION = "Is it warm in Oslo today? Case 2."  # the user turn of `_tool_trace(2, "tool")`
BOOKING_QUESTION = "Book a table for 3."
TOOLS = [WEATHER_TOOL]


def mix_traces() -> list[Any]:
    """Weather look-ups (cluster `tool`, with a get_weather call) and clarifications (cluster `plan`)."""
    return [_tool_trace(i, "tool") for i in range(4)] + [_chat_trace(i, "plan") for i in range(4)]


def tool_calling_tiny_base(tiny_model_dir: Path, out: Path, tokenizer: Any, steps: int = 200) -> Path:
    """The 2-layer tiny model, fully trained on the weather trace's assistant tokens until it writes its
    get_weather call (a random 2-layer model writes no tool call, and LoRA alone on it learns too slowly for a
    test). The loss is computed at the assistant positions only, so the 49k-word output layer costs little."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.chat import render_trace
    from pipelines.thought import load_thought_schema

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    row = render_trace(_tool_trace(2, "tool"), tokenizer, load_thought_schema("think-plan-reflect"))
    ids = torch.tensor([row.input_ids])
    positions = torch.tensor([i for i in range(len(row.input_ids) - 1) if row.assistant_masks[i + 1]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        hidden = model.model(input_ids=ids).last_hidden_state[0, positions]
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden), ids[0, positions + 1])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def routed_run(root: Path, base_dir: Path, tokenizer: Any, adapters: dict[str, Path] | None = None) -> Path:
    """runs/<name> with the mix, `tool` and `plan` adapters and a tfidf router trained on the mix.

    `adapters`: trained adapter folders to copy in; by default `tool` is a fresh LoRA (the base's own tool
    calls) and `plan` a random one that changes the output, so which adapter answered shows in the text."""
    import shutil

    run_dir = root / "served"
    write_mix(run_dir / "data", tokenizer, mix_traces())
    if adapters:
        for name, folder in adapters.items():
            shutil.copytree(folder, run_dir / "sft" / name)
    else:
        make_adapter(base_dir, run_dir / "sft" / "tool", seed=1, scale=0.0)
        make_adapter(base_dir, run_dir / "sft" / "plan", seed=2)
    section = RouterSection(method="tfidf", threshold=0.0, eval_fraction=0.25, generated_requests=0)
    train_router(two_cluster_config(run_dir, base_dir, section))
    return run_dir


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(command: list[str] | str, url: str, log: Path, timeout: float, env: dict | None = None) -> Any:
    """Start a server process (its own process group) and wait until `url` answers 200; raise with the
    log's tail if it exits or the time runs out."""
    handle = log.open("w")
    process = subprocess.Popen(
        command,
        shell=isinstance(command, str),
        stdout=handle,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        executable="/bin/bash" if isinstance(command, str) else None,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop(process)
    raise RuntimeError(f"server not up after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(process: Any) -> None:
    """End the server and everything it started (its process group)."""
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def midtrain_cli() -> list[str]:
    return [sys.executable, "-m", "pipelines.cli"]
