"""A real OpenAI-compatible server for the teacher tests: `transformers serve` (FastAPI + uvicorn, the
transformers release midtrain already runs) serving a local model folder on a free loopback port.

Why this server in the main suite: it needs only `fastapi` and `openai` on top of the locked environment, starts
in seconds and serves the tiny test model at test speed. vLLM's CPU build and llama.cpp's server are the
production choices (same API); they need their own venv and a compile or a multi-GB install, too heavy for a
15-minute suite on 2 cores. It parses replies with the folder's response template (`tokenizer.response_template`,
which every tokenizer midtrain saves carries), else its Qwen-family fallback, else not at all: calls then come back
as `<tool_call>` text, which the teacher parses itself (as for any server without a parser).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(model_dir: Path, startup_s: float = 240.0) -> Iterator[str]:
    """Yield the `/v1` base URL of a server for `model_dir`; the server is stopped (and reaped) after."""
    port = free_port()
    binary = Path(sys.executable).with_name("transformers")
    command = [str(binary), "serve", str(model_dir), "--host", "127.0.0.1", "--port", str(port), "--device",
               "cpu", "--dtype", "float32", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    log = (model_dir.parent / f"serve-{port}.log").open("w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {process.returncode}; see {log.name}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve not healthy after {startup_s:.0f}s; see {log.name}")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
