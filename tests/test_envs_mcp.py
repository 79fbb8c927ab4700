"""MCP environments against a real server: the fixture shop (tests/fixtures/mcp_shop_server.py, the SDK's
MCPServer) started as a subprocess over stdio. Tools listed and rendered for TRL, called from rollouts (our
live loop and TRL's GRPO loop), a crash mid-rollout, a hung call, two rollouts isolated, the reset hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import episodes
from pipelines.envs.base import guarded
from pipelines.envs.external import EnvFailure
from pipelines.envs.spec import McpEnvSpec, env_class, load_env, resolve_env
from pipelines.errors import BadInput
from pipelines.tasks import sampling
from pipelines.tasks.task_file import load_task_file
from pipelines.thought import load_thought_schema

ROOT = Path(__file__).resolve().parents[1]
SERVER = ["{python}", str(ROOT / "tests" / "fixtures" / "mcp_shop_server.py")]
SCHEMA = load_thought_schema("think-plan-reflect")


def shop(name: str = "shop", **fields) -> McpEnvSpec:
    return McpEnvSpec(type="mcp", name=name, command=SERVER, timeout_s=fields.pop("timeout_s", 20), **fields)


def write_tasks(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


CART_TASK = {
    "id": "cart-1",
    "prompt": "Put two apples in my cart and tell me the total.",
    "expected_calls": [{"name": "add_to_cart", "arguments": {"product_id": "apple", "quantity": 2}}],
    "answer": "1.0",
    "state": {"tool": "get_cart", "contains": '"total": 1.0'},
    "split": "heldout",
}


# -- specs -----------------------------------------------------------------------------------------------------
def test_env_references_resolve_and_bad_blocks_name_file_and_line(tmp_path: Path) -> None:
    assert resolve_env("calculator").name == "calculator"
    spec = resolve_env(str(ROOT / "configs" / "envs" / "shop.yaml"))
    assert spec.name == "shop" and spec.cwd == str(ROOT) and spec.reset == "restart"
    bad = tmp_path / "bad.yaml"
    bad.write_text("type: mcp\ncommand: [x]\nurl: http://127.0.0.1:1/mcp\n")
    with pytest.raises(BadInput, match=r"bad\.yaml.*exactly one of `command`"):
        resolve_env(str(bad))
    bad.write_text("type: mcp\ncomand: [x]\n")
    with pytest.raises(BadInput, match=r"bad\.yaml:2: comand: unknown key \(did you mean 'command'\?\)"):
        resolve_env(str(bad))
    bad.write_text("type: websocket\n")
    with pytest.raises(BadInput, match=r"bad\.yaml:1: type: expected one of builtin, python, mcp"):
        resolve_env(str(bad))
    with pytest.raises(BadInput, match="unknown built-in domain 'nope'"):
        load_env("nope")


# -- tools -----------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_server_tools_become_methods_trl_renders_with_the_server_schema() -> None:
    from transformers.utils import get_json_schema

    cls = env_class(shop())
    assert cls._tool_methods() == [
        "add_to_cart",
        "clear_cart",
        "get_cart",
        "quote_shipping",
        "search_products",
    ]
    quote = get_json_schema(cls.quote_shipping)["function"]  # what TRL puts in the prompt
    assert quote == {
        "name": "quote_shipping",
        "description": "Price of shipping a parcel.",
        "parameters": {
            "type": "object",
            "properties": {
                "weight_kg": {"type": "number",
                              "description": 'Parcel weight in kilograms. Constraints: {"exclusiveMinimum": 0}.'},
                "speed": {"type": "string", "enum": ["standard", "express"], "description": "Delivery speed"},
            },
            "required": ["weight_kg", "speed"],
        },
    }  # fmt: skip
    add = get_json_schema(cls.add_to_cart)["function"]["parameters"]
    assert add["required"] == ["product_id"] and add["properties"]["quantity"]["type"] == "integer"
    assert (
        cls._tool_defs["add_to_cart"].input_schema["properties"]["quantity"]["default"] == 1
    )  # the server's own
    subset = env_class(shop("shop-subset", tools=["get_cart"]))
    assert subset._tool_methods() == ["get_cart"]
    with pytest.raises(BadInput, match=r"tools \['fly'\] are not offered by the server"):
        env_class(shop("shop-fly", tools=["fly"]))


@pytest.mark.integration
def test_cli_env_show_and_call() -> None:
    from pipelines.envs.tool_cli import call_tool

    def midtrain(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True,
                              cwd=ROOT, timeout=240)  # fmt: skip

    shown = midtrain("env", "show", "configs/envs/shop.yaml", "--json")
    assert shown.returncode == 0, shown.stderr
    tools = {t["name"]: t for t in json.loads(shown.stdout)["tools"]}
    assert tools["quote_shipping"]["input_schema"]["properties"]["speed"]["enum"] == ["standard", "express"]
    bad = midtrain(
        "env", "call", "configs/envs/shop.yaml", "quote_shipping", '{"weight_kg": 2, "speed": "fast"}'
    )
    assert bad.returncode == 2 and "'fast' is not one of ['standard', 'express']" in bad.stderr
    # In process, the same function the command runs:
    result = call_tool("configs/envs/shop.yaml", "quote_shipping", '{"weight_kg": 2, "speed": "express"}')
    assert json.loads(result) == {"speed": "express", "weight_kg": 2.0, "price": 10.0}
    with pytest.raises(BadInput, match="has no tool 'fly'"):
        call_tool("configs/envs/shop.yaml", "fly", "{}")
    with pytest.raises(BadInput, match="no product with id 'nope'"):  # the server's own refusal: exit 2 too
        call_tool("configs/envs/shop.yaml", "add_to_cart", '{"product_id": "nope"}')


# -- rollouts --------------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_a_rollout_calls_the_server_and_the_task_judge_scores_it(tmp_path: Path, tokenizer) -> None:
    from tests.helpers import ScriptedPolicy

    tasks = load_task_file(write_tasks(tmp_path / "t.jsonl", [CART_TASK]), shop())
    [task] = tasks.heldout
    classes = {"shop": guarded(tasks.envs["shop"])}
    items = [sampling.DomainTask("shop", task)]
    result = episodes.evaluate_policy(
        ScriptedPolicy(tokenizer, items), tokenizer, items, classes, SCHEMA, 3, 2048
    )
    completion = result["episodes"][0]["completion"]
    assert completion[1]["role"] == "tool" and json.loads(completion[1]["content"])["total"] == 1.0
    assert (result["outcome"], result["call_accuracy"], result["format_rate"]) == (1.0, 1.0, 1.0)


@pytest.mark.integration
def test_a_server_crash_mid_rollout_fails_that_rollout_with_its_reason(tmp_path: Path, tokenizer) -> None:
    from tests.helpers import ScriptedPolicy

    two_calls = {**CART_TASK, "id": "cart-2", "prompt": "Add an apple, then a mug.", "state": None,
                 "answer": None, "expected_calls": [{"name": "add_to_cart", "arguments": {"product_id": "apple"}},
                                                    {"name": "add_to_cart", "arguments": {"product_id": "mug"}}]}  # fmt: skip
    tasks = load_task_file(
        write_tasks(tmp_path / "t.jsonl", [two_calls]), shop("crashy", env={"SHOP_CRASH_ON_CALL": "2"})
    )
    classes = {"crashy": guarded(tasks.envs["crashy"])}
    items = [sampling.DomainTask("crashy", tasks.heldout[0])]
    started = time.perf_counter()
    result = episodes.evaluate_policy(
        ScriptedPolicy(tokenizer, items), tokenizer, items, classes, SCHEMA, 4, 2048
    )
    assert time.perf_counter() - started < 60
    completion = result["episodes"][0]["completion"]
    tool_texts = [m["content"] for m in completion if m["role"] == "tool"]
    assert "apple" in tool_texts[0] and "crashing on call 2" in tool_texts[1]  # the server's last words
    assert result["outcome"] == 0.0 and result["failures"]["env_crash"] == 1


@pytest.mark.integration
def test_two_rollouts_get_two_servers_and_reset_starts_afresh() -> None:
    cls = env_class(shop())
    first, second = cls(), cls()
    first.reset()
    second.reset()
    first._call_tool("add_to_cart", {"product_id": "apple"})
    second._call_tool("add_to_cart", {"product_id": "kettle", "quantity": 2})
    cart = json.loads(first._call_tool("get_cart", {})[0])
    assert [line["product_id"] for line in cart["lines"]] == ["apple"]
    assert json.loads(second._call_tool("get_cart", {})[0])["total"] == 60.0
    first.reset()  # `reset: restart`: a new process, an empty cart
    assert json.loads(first._call_tool("get_cart", {})[0])["lines"] == []
    for env in (first, second):
        env._close()


@pytest.mark.integration
def test_the_reset_tool_keeps_one_session_and_restores_the_state() -> None:
    cls = env_class(shop("shop-hook", reset={"tool": "clear_cart"}))
    env = cls()
    env.reset()
    connection = env._backend.connection
    env._call_tool("add_to_cart", {"product_id": "mug"})
    env.reset()
    assert env._backend.connection is connection  # same server process
    assert json.loads(env._call_tool("get_cart", {})[0])["lines"] == []
    env._close()
    assert connection.closed


@pytest.mark.integration
def test_a_hung_call_times_out_as_an_environment_failure() -> None:
    cls = env_class(shop("shop-slow", env={"SHOP_SLEEP_ON_CALL": "1:30"}, timeout_s=1.5))
    env = cls()
    env.reset()
    started = time.perf_counter()
    with pytest.raises(EnvFailure):
        env.get_cart()
    assert time.perf_counter() - started < 15
    assert env._env_failure and env.get_reward() == 0.0
    text, is_error = env._call_tool("get_cart", {})  # the rollout stays failed, fast
    assert is_error and "failed earlier in this rollout" in text
    env._close()


def test_one_grpo_step_with_the_mcp_env(tmp_path: Path, tiny_model_dir: Path, monkeypatch) -> None:
    """TRL's own loop: the env class's generated methods are the tools TRL offers and calls."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from pipelines.models import project_chat_template
    from pipelines.rl.train import prompt_rows_for_tasks

    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    tasks = load_task_file(write_tasks(tmp_path / "t.jsonl", [{**CART_TASK, "split": "train"}]), shop())
    items = [sampling.DomainTask("shop", t) for t in tasks.train * 2]
    rows = prompt_rows_for_tasks(items, {"shop": tasks.envs["shop"]})
    resets = []
    base = guarded(tasks.envs["shop"])

    class Counting(base):  # type: ignore[misc, valid-type]
        def reset(self, **row):
            resets.append(os.getpid())
            return super().reset(**row)

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = project_chat_template()
    args = GRPOConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2,
                      num_generations=2, max_completion_length=8, max_tool_calling_iterations=1,
                      gradient_checkpointing=False, use_cpu=True, report_to=[], save_strategy="no", seed=0)  # fmt: skip
    trainer = GRPOTrainer(model=str(tiny_model_dir), processing_class=tokenizer, args=args,
                          train_dataset=Dataset.from_list(rows), reward_funcs=[lambda completions, **k: [0.0] * len(completions)],
                          environment_factory={"shop": Counting})  # fmt: skip
    assert {t.__name__ for t in trainer.tools} == set(tasks.envs["shop"]._tool_methods())
    assert trainer.train().global_step == 1
    assert len(resets) == 2


@pytest.mark.integration
def test_streamable_http_transport(tmp_path: Path) -> None:
    """`{type: mcp, url: …}`: the same server over streamable HTTP, one MCP session per rollout."""
    import httpx

    from tests.openai_server import free_port

    port = free_port()
    log = (tmp_path / "http.log").open("w")
    process = subprocess.Popen(
        [sys.executable, SERVER[1], "--http", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        spec = McpEnvSpec(type="mcp", name="shop-http", url=f"http://127.0.0.1:{port}/mcp", timeout_s=20)
        cls = env_class(spec)
        assert "quote_shipping" in cls._tool_methods()
        env = cls()
        env.reset()
        assert (
            json.loads(env._call_tool("quote_shipping", {"weight_kg": 1, "speed": "standard"})[0])["price"]
            == 2.0
        )
        env._close()
    finally:
        process.terminate()
        process.wait(timeout=20)
        log.close()
