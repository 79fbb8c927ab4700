"""Router: trains on the tiny setup, save/load gives identical predictions, threshold fallback, and mixed-batch
generation gives each row exactly its adapter's output."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.artifacts import RouterAccuracy
from pipelines.chat import load_tokenizer
from pipelines.errors import BadInput
from pipelines.router import BASE, load_bundle, request_text, run
from pipelines.run_config import RouterSection, RunConfig
from tests.helpers import (
    CALCULATOR_TOOLS,
    _trace,
    make_adapter,
    two_cluster_config,
    write_shards,
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("runs")
    run_dir = root / "tiny"
    write_shards(run_dir / "data")
    make_adapter(tiny_model_dir, run_dir / "sft" / "tool", seed=1)
    make_adapter(tiny_model_dir, run_dir / "sft" / "plan", seed=2)
    return run_dir


def _config(run_dir: Path, model: Path, method: str = "tfidf", threshold: float = 0.3) -> RunConfig:
    return two_cluster_config(
        run_dir,
        model,
        RouterSection(method=method, threshold=threshold, eval_fraction=0.25, generated_requests=0),
    )


@pytest.mark.parametrize("method", ["tfidf", "embedding"])
def test_router_trains_and_round_trips(run_dir: Path, tiny_model_dir: Path, method: str) -> None:
    report = run(_config(run_dir, tiny_model_dir, method)).accuracy
    assert report.accuracy >= 0.9 and report.n >= 10
    assert (run_dir / "router" / "confusion.png").stat().st_size > 1000
    router, meta = load_bundle(run_dir / "router")
    assert meta.adapters == {"plan": "../sft/plan", "tool": "../sft/tool"}
    texts = ["Convert 3 km to miles.", "First list the files, then read one and finally count the lines."]
    again, _ = load_bundle(run_dir / "router")
    np.testing.assert_array_equal(router.probabilities(texts), again.probabilities(texts))
    assert [r.cluster for r in router.route(texts)] == ["tool", "plan"]


def test_threshold_falls_back_to_base(run_dir: Path, tiny_model_dir: Path) -> None:
    run(_config(run_dir, tiny_model_dir, threshold=0.999))
    router, _ = load_bundle(run_dir / "router")
    route = router.route(["Convert 3 km to miles."])[0]
    assert route.cluster == "tool" and route.fallback and route.adapter == BASE


def test_request_text_includes_tool_names() -> None:
    assert request_text(_trace(0, "tool", "hi")) == "hi [tools] convert_units"


def test_too_few_adapters_is_bad_input(tmp_path: Path, tiny_model_dir: Path) -> None:
    from pipelines.errors import BadInput

    with pytest.raises(BadInput, match=r"router needs ≥ 2 trained cluster adapters"):
        run(_config(tmp_path / "empty", tiny_model_dir))


def test_mixed_batch_gives_each_row_its_adapter(run_dir: Path, tiny_model_dir: Path) -> None:
    from pipelines.serve import Router

    run(_config(run_dir, tiny_model_dir, threshold=0.0))
    router = Router(run_dir / "router")
    requests = [
        ([{"role": "user", "content": "Convert 3 km to miles."}], None),
        ([{"role": "user", "content": "First list the files, then read one, finally count."}], None),
        ([{"role": "user", "content": "Convert 7 km to miles."}], None),
    ]
    routes = [router.route(m[0]["content"]) for m, _ in requests]
    assert [r.adapter for r in routes] == ["tool", "plan", "tool"]
    mixed = [text for _, text in router.generate_batch(requests, max_new_tokens=8, routes=routes)]
    single = [
        router.generate(m, t, max_new_tokens=8, route=r)[1]
        for (m, t), r in zip(requests, routes, strict=True)
    ]
    assert mixed == single
    base = router.generate(requests[0][0], None, 8, route=routes[0].__class__("tool", 1.0, BASE, True))[1]
    assert base != single[0]  # the adapter really changes the output


def test_switch_leaves_the_state_peft_set_adapter_leaves(run_dir: Path, tiny_model_dir: Path) -> None:
    import torch

    from pipelines.inference import tuner_layers
    from pipelines.serve import Router

    run(_config(run_dir, tiny_model_dir, threshold=0.0))
    router = Router(run_dir / "router")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    for adapter in ("plan", "tool", "plan"):
        router.switch(adapter)
        ours = [layer.active_adapters for layer in tuner_layers(router.model)], router.model.active_adapters
        with torch.no_grad():
            logits = router.model(ids).logits
        router.model.set_adapter(adapter)  # PEFT's own switch, for reference
        peft = [layer.active_adapters for layer in tuner_layers(router.model)], router.model.active_adapters
        with torch.no_grad():
            reference = router.model(ids).logits
        assert ours == peft and torch.equal(logits, reference)
    router.switch("tool")
    with torch.no_grad():
        assert not torch.equal(router.model(ids).logits, logits)  # "plan" and "tool" really differ
    with pytest.raises(BadInput, match="unknown adapter"):
        router.switch("nope")


def test_route_and_chat_cli(run_dir: Path, tiny_model_dir: Path) -> None:
    run(_config(run_dir, tiny_model_dir, threshold=0.0))
    cli = [sys.executable, "-m", "pipelines.cli"]
    out = subprocess.run(
        [*cli, "route", str(run_dir / "router"), "Convert 3 km to miles."],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out)["cluster"] == "tool"
    with_env = subprocess.run(
        [*cli, "route", str(run_dir / "router"), "Convert 3 km to miles.", "--env", "calculator"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(with_env)["routed_text"].endswith("[tools] " + " ".join(CALCULATOR_TOOLS))
    chat = subprocess.run(
        [*cli, "chat", str(run_dir / "router"), "--max-new-tokens", "6"],
        input="Convert 3 km to miles.\n/quit\n",
        capture_output=True,
        text=True,
        check=True,
    )
    assert "[tool · tool" in chat.stdout


def test_vllm_export(run_dir: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    run(_config(run_dir, tiny_model_dir))
    out = tmp_path / "lora.json"
    cli = [
        sys.executable,
        "-m",
        "pipelines.cli",
        "router",
        "export",
        str(run_dir / "router"),
        "--vllm",
        str(out),
    ]
    printed = subprocess.run([*cli, "--port", "8123"], check=True, capture_output=True, text=True).stdout
    export = json.loads(out.read_text())
    assert {m["name"] for m in export["lora_modules"]} == {"tool", "plan"}
    assert all(Path(m["path"]).is_dir() for m in export["lora_modules"])
    assert printed.strip() == export["command"]
    args = shlex.split(printed)
    assert args[:3] == ["python", "-m", "vllm.entrypoints.openai.api_server"]
    assert "--enable-lora" in args and "--enable-auto-tool-choice" in args
    assert args[args.index("--max-lora-rank") + 1] == "8"  # the adapters' rank, not a fixed 64
    assert args[args.index("--max-loras") + 1] == "2"
    assert (
        args.count("--lora-modules") == 1
    )  # one flag, every module after it (repeated, vLLM keeps the last)
    assert args[args.index("--tool-call-parser") + 1] == "hermes"
    assert args[args.index("--port") + 1] == "8123" and args[args.index("--model") + 1] == str(tiny_model_dir)
    template = Path(args[args.index("--chat-template") + 1])
    assert template.read_text() == load_tokenizer(str(run_dir / "sft" / "tool")).chat_template
    assert export["command_gpu"].startswith(f"vllm serve {tiny_model_dir} --enable-lora")


def test_merge_trains_indistinguishable_cluster_as_target(tmp_path: Path, tiny_model_dir: Path) -> None:
    """`router.merge` {reflect: tool}: reflect requests train as tool, the map survives save/load, and the
    report shows where the merged cluster's requests went."""
    run_dir = tmp_path / "merged"
    write_shards(run_dir / "data", with_reflect=True)
    for name in ("tool", "plan", "reflect"):
        (run_dir / "sft" / name).mkdir(parents=True)
        (run_dir / "sft" / name / "adapter_config.json").write_text("{}")  # routing never loads weights
    config = _config(run_dir, tiny_model_dir)
    config.sft.clusters = ["tool", "plan", "reflect"]
    config.router.merge = {"reflect": "tool"}
    report = run(config).accuracy
    router, meta = load_bundle(run_dir / "router")
    assert meta.label_map == router.label_map == {"reflect": "tool"}
    assert router.labels == ["plan", "tool"] and set(router.adapters) == {"plan", "tool"}
    assert report.label_map == {"reflect": "tool"} and report.accuracy >= 0.9
    assert set(report.by_source["reflect/single"]) == {"tool"}
    assert RouterAccuracy.read(run_dir / "router") == report


def test_merge_onto_unrouted_cluster_is_bad_input(run_dir: Path, tiny_model_dir: Path) -> None:
    from pipelines.errors import BadInput

    config = _config(run_dir, tiny_model_dir)
    config.router.merge = {"reflect": "code"}
    with pytest.raises(BadInput, match=r"router.merge: reflect → code: 'code' is not a routed cluster"):
        run(config)


def test_serving_text_is_the_training_text() -> None:
    """The router must see the same text shape at serving time as in training (request + tool names)."""
    from pipelines.serve import route_text

    trace = _trace(0, "tool", "Convert 3 km to miles.")
    messages = [m.model_dump() for m in trace.messages if m.role == "user"]
    assert route_text(messages, trace.tools) == request_text(trace)
    assert route_text(messages, None) == "Convert 3 km to miles."


def test_chat_executes_tool_calls_in_the_environment() -> None:
    """The chat client runs a reply's tool call live and sends the observation back as a `tool` message."""
    from pipelines.chat_client import chat

    call = {"id": "call_1", "type": "function", "function": {"name": "evaluate_expression",
                                                              "arguments": '{"expression": "37 * 12"}'}}  # fmt: skip
    replies = [{"role": "assistant", "content": None, "tool_calls": [call]},
               {"role": "assistant", "content": "37 * 12 = 444."}]  # fmt: skip
    seen: list[dict] = []

    def complete(body: dict) -> dict:
        seen.append(json.loads(json.dumps(body)))
        assert [t["function"]["name"] for t in body["tools"]] == CALCULATOR_TOOLS
        route = {"adapter": "tool", "cluster": "tool", "score": 0.9}
        return {"choices": [{"message": replies[len(seen) - 1]}], "midtrain": route}

    lines: list[str] = []
    chat(complete, ["What is 37 * 12?", "/quit"], lines.append, domain="calculator")
    assert lines[0] == "[tool · tool 0.90]"
    assert (
        lines[1].startswith('  tool evaluate_expression({"expression": "37 * 12"}) → ') and "444" in lines[1]
    )
    assert lines[2] == "[tool · tool 0.90] 37 * 12 = 444."
    tool_message = seen[1]["messages"][-1]
    assert tool_message["role"] == "tool" and tool_message["tool_call_id"] == "call_1"
    assert "444" in tool_message["content"] and seen[1]["messages"][-2]["tool_calls"] == [call]
    assert seen[0]["temperature"] == 0 and seen[0]["model"] == "midtrain"


@pytest.mark.integration
def test_generated_requests_come_from_the_recipe_sources_labelled_as_the_mix(tmp_path: Path) -> None:
    from pipelines.recipe import Recipe
    from pipelines.router import generated_examples

    recipe = Recipe.model_validate(
        {
            "name": "r",
            "total_tokens": 1000,
            "categories": {
                "tool": {
                    "share": 1.0,
                    "sources": [
                        {"name": "gen", "type": "generated", "domains": ["calculator", "calendar"], "n": 10,
                         "seed": 3, "cluster_by_pattern": {"single": "tool", "parallel": "tool",
                                                           "sequential": "plan", "clarify": "plan"}},
                    ],
                }
            },
        }
    )  # fmt: skip
    examples = generated_examples(recipe, ["tool", "plan"], 40, exclude=set())
    assert len(examples) >= 30 and {e.split for e in examples} == {"generated"}
    mapping = {"single": "tool", "parallel": "tool", "sequential": "plan", "clarify": "plan"}
    assert all(mapping.get(e.pattern, e.cluster) == e.cluster for e in examples)
    assert {e.cluster for e in examples} == {"tool", "plan"}
    assert all(e.pattern != "code" for e in examples)  # patterns of unrouted clusters are never drawn
    assert generated_examples(recipe, ["tool", "plan"], 40, exclude=set()) == examples  # seeded
    dropped = generated_examples(recipe, ["tool", "plan"], 40, exclude={examples[0].text})
    assert examples[0].text not in {e.text for e in dropped}
    only_tool = generated_examples(recipe, ["tool"], 20, exclude=set())
    assert only_tool and {e.cluster for e in only_tool} == {"tool"}


def test_router_trains_on_generated_requests_and_scores_on_the_mix(
    run_dir: Path, tiny_model_dir: Path
) -> None:
    config = _config(run_dir, tiny_model_dir)
    config.router.generated_requests = 150
    result = run(config).accuracy
    _, meta = load_bundle(run_dir / "router")
    assert meta.generated_examples > 100 and meta.train_examples > meta.generated_examples
    held_out = RouterAccuracy.read(run_dir / "router")
    assert held_out.n == result.n and "generated" not in {k.split("/")[0] for k in held_out.by_source}
