"""`make test-teacher`: the embedded SmolLM2-135M-Instruct as the teacher over the MCP shop, served by a
real OpenAI-compatible server. Not part of `make test` (minutes of CPU generation); skipped unless
MIDTRAIN_INTEGRATION=1.

The server is `transformers serve` on a copy of the embedded model with the project's tool-capable chat
template (or on the model folder MIDTRAIN_TEACHER_DIR names), or any endpoint named by MIDTRAIN_TEACHER_URL and
MIDTRAIN_TEACHER_MODEL (vLLM's CPU server,
llama.cpp's server): the teacher speaks plain OpenAI chat completions, so the test is the same.

A 135M teacher writes mostly rejects. What this checks is that a real model's replies (not the random test
model's) go through the whole loop: calls parsed from its text and executed in the MCP server, every episode
ending as a verified trace or a reject with a reason, and the counts printed for the report.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from pipelines.schema import Trace
from pipelines.tasks.llm_teacher import TeacherSettings, teacher_traces
from pipelines.tasks.task_file import load_task_file
from pipelines.thought import load_thought_schema
from tests.openai_server import serve

pytestmark = pytest.mark.skipif(
    os.environ.get("MIDTRAIN_INTEGRATION") != "1", reason="integration test: run `make test-teacher`"
)
ROOT = Path(__file__).resolve().parents[1]
KNOWN_REASONS = {"thought_schema", "format", "structure", "execution", "outcome", "max_turns", "teacher_error",
                 "env_error"}  # fmt: skip


def served_copy(embedded_model_dir: Path, tmp_path: Path) -> Path:
    """The embedded weights (linked) with the tokenizer midtrain trains with: the Qwen2.5 tool template."""
    from pipelines.chat import load_tokenizer

    folder = tmp_path / "smollm2-served"
    folder.mkdir()
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        (folder / name).symlink_to(embedded_model_dir / name)
    load_tokenizer(str(embedded_model_dir)).save_pretrained(folder)
    return folder


def test_the_embedded_model_as_teacher_over_the_mcp_shop(embedded_model_dir: Path, tmp_path: Path) -> None:
    external = os.environ.get("MIDTRAIN_TEACHER_URL")
    # MIDTRAIN_TEACHER_DIR: serve another model folder, e.g. a trained `tool` adapter merged into the embedded
    # model (`midtrain export`), which writes the thought schema: its reasoning now comes back through the server
    # (session 13: 8 episodes rejected at turn 1 for a second `</think>`, 2 lost to the server's 500s below;
    # session 18, an 80-step demo `tool` adapter: its calls parse and run in all 10 episodes, but it repeats its
    # first call each turn and writes the third with no reasoning, 10 `thought_schema` rejects; none reached the
    # judge yet, so reflexion waits for a stronger teacher).
    chosen = os.environ.get("MIDTRAIN_TEACHER_DIR")
    folder = None if external else Path(chosen) if chosen else served_copy(embedded_model_dir, tmp_path)
    task_set = load_task_file(ROOT / "configs/tasks/shop.jsonl", "configs/envs/shop.yaml")
    with serve(folder) if folder else _external(external) as url:
        model = os.environ.get("MIDTRAIN_TEACHER_MODEL") or str(folder)
        # One reflexion retry: an episode that fails only the judge's outcome check is sent back to the served
        # model with the judge's reason as an observation.
        settings = TeacherSettings(base_url=url, model=model, temperature=0.7, max_tokens=160, max_turns=3,
                                   concurrency=2, reflexion_retries=1)  # fmt: skip
        run = teacher_traces(task_set.train, task_set.envs, settings, tmp_path / "cache.jsonl",
                             load_thought_schema("think-plan-reflect"), samples_per_task=2)  # fmt: skip
    traces = [r for r in run.results if isinstance(r, Trace)]
    reasons = Counter(r["reason"] for r in run.results if isinstance(r, dict))
    recovered = [t for t in traces if "reflexion" in t.meta]
    retried_rejects = [
        r for r in run.results if isinstance(r, dict) and "(after 1 reflexion retry)" in r["detail"]
    ]
    print(json.dumps({"episodes": len(run.results), "verified": len(traces), "rejects": dict(reasons),
                      "requests": run.requests, "reflexion": {"retried": len(recovered) + len(retried_rejects),
                                                              "recovered": len(recovered)},
                      "reject_details": [f"{r['reason']}: {r['detail'][:240]}" for r in run.results
                                         if isinstance(r, dict)]}))  # fmt: skip
    assert len(run.results) == 2 * len(task_set.train) and run.requests >= len(run.results)
    assert set(reasons) <= KNOWN_REASONS
    # The server answered every request. Except: `transformers serve` answers 500 to a reply whose call JSON does
    # not parse (its `_normalize_tool_call` expects an object; transformers 5.19), which a trained folder served
    # with MIDTRAIN_TEACHER_DIR can write (2 of 16 requests for the curve run's merged `tool` adapter).
    assert "teacher_error" not in reasons or chosen is not None
    for trace in recovered:  # a fix after the judge's words: the feedback is in the trace, before the fix
        assert trace.meta["pattern"] == "recovery" and trace.meta["reflexion"]["retries"] == 1
        feedback = trace.meta["reflexion"]["feedback"][0]
        assert feedback and any(feedback in (m.content or "") for m in trace.messages)


class _external:
    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> str:
        return self.url

    def __exit__(self, *exc: object) -> None:
        return None
