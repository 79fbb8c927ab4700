"""Builders shared by several test modules (test modules never import each other)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import TrainerCallback

from pipelines.chat import render_trace
from pipelines.codecs import codec_for
from pipelines.data.decontam import bfcl_questions
from pipelines.data.manifest import FORMAT
from pipelines.recipe import Recipe
from pipelines.run_config import RouterSection, RunConfig, SFTSection
from pipelines.schema import Trace
from pipelines.thought import load_thought_schema

ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}, "unit": {"enum": ["m", "km"]}},
            "required": ["a", "b"],
        },
    },
}


def valid_row() -> dict:
    return {
        "id": "t1",
        "source": "unit",
        "kind": "tool",
        "cluster": "tool",
        "tools": [ADD],
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "add 1 and 2", "_instance": "i1"},
            {"role": "user", "content": "add 3 and 4", "_instance": "i2"},
            {
                "role": "assistant",
                "thinking": [{"section": "plan", "text": "two adds"}],
                "tool_calls": [
                    {"id": "c1", "name": "add", "arguments": {"a": 1, "b": 2}, "_instance": "i1"},
                    {"id": "c2", "name": "add", "arguments": {"a": 3, "b": 4}, "_instance": "i2"},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "3", "_instance": "i1"},
            {"role": "tool", "tool_call_id": "c2", "content": "7", "_instance": "i2"},
            {"role": "assistant", "content": "i1: 3, i2: 7"},
        ],
        "meta": {"pattern": "instanced", "difficulty": 2},
    }


VOCAB = [
    "river",
    "mountain",
    "forest",
    "ocean",
    "desert",
    "valley",
    "canyon",
    "island",
    "harbor",
    "bridge",
    "tower",
    "castle",
    "garden",
    "meadow",
    "lantern",
    "compass",
    "engine",
    "signal",
    "window",
    "market",
    "letter",
    "parcel",
    "ticket",
    "invoice",
    "ledger",
    "column",
    "table",
    "record",
    "archive",
    "planet",
    "comet",
    "orbit",
    "rocket",
    "meteor",
    "galaxy",
    "nebula",
    "quartz",
    "marble",
    "granite",
    "copper",
    "silver",
    "cobalt",
    "amber",
    "violet",
]


def prose(seed: int, n_words: int = 120) -> str:
    rng = random.Random(seed)
    sentences = []
    while sum(len(s.split()) for s in sentences) < n_words:
        words = [rng.choice(VOCAB) for _ in range(rng.randint(6, 14))]
        sentences.append(" ".join(words).capitalize() + ".")
    return "\n".join(" ".join(sentences[i : i + 3]) for i in range(0, len(sentences), 3))


TOOL = [
    {
        "type": "function",
        "function": {"name": "convert_units", "parameters": {"type": "object", "properties": {}}},
    }
]


SINGLE = [
    "Convert {n} km to miles.",
    "How many grams is {n} pounds?",
    "What is {n} celsius in fahrenheit?",
    "Turn {n} hours into minutes please.",
    "Express {n} inches in centimeters.",
]


CALCULATOR_TOOLS = [
    "compute_statistics",
    "convert_units",
    "evaluate_expression",
    "list_memory",
    "percent_change",
    "store_value",
]


MULTI = [
    "First list the files in /docs, then read the largest one and finally count its lines ({n}).",
    "Step by step: create folder report{n}, move notes.txt into it, then show me the tree.",
    "Find employees hired after {n}, then raise their salary and finally list the updated rows.",
    "Plan this: look up event {n}, reschedule it to Friday, then add a todo for the follow-up.",
]


# -- the data build's planted corpus (test_data_build, test_data_scale) --------------------------------------
def tool_trace(trace_id: str, story: str, a: int, b: int, pattern: str = "single") -> dict:
    return {
        "id": trace_id,
        "source": "unit",
        "kind": "tool",
        "cluster": "tool",
        "tools": [ADD],
        "messages": [
            {"role": "user", "content": f"{story}\nPlease add {a} and {b}."},
            {
                "role": "assistant",
                "thinking": [{"section": "plan", "text": f"Add {a} and {b} with the tool."}],
                "tool_calls": [{"id": "c1", "name": "add", "arguments": {"a": a, "b": b}}],
            },
            {"role": "tool", "tool_call_id": "c1", "content": str(a + b)},
            {"role": "assistant", "content": f"The sum is {a + b}."},
        ],
        "meta": {"pattern": pattern, "difficulty": 1},
    }


def planted_tools() -> list[dict]:
    rng = random.Random(0)
    rows = [
        tool_trace(
            f"t{i}",
            prose(100 + i, 60),
            rng.randint(1, 999),
            rng.randint(1, 999),
            "sequential" if i % 3 == 0 else "single",
        )
        for i in range(80)
    ]
    bad = tool_trace("bad-call", prose(7, 40), 1, 2)
    bad["messages"][1]["tool_calls"][0]["name"] = "mul"
    dup = json.loads(json.dumps(rows[0]))
    dup["id"] = "dup-of-t0"
    dup["messages"][0]["content"] = "  " + dup["messages"][0]["content"].upper()
    near = json.loads(json.dumps(rows[1]))
    near["id"] = "near-t1"
    near["messages"][0]["content"] = near["messages"][0]["content"].replace(".", ", indeed.", 1)
    question = next(t for label, t in bfcl_questions() if "live_multiple" in label and len(t.split()) > 25)
    planted = tool_trace("bfcl-planted", f"{prose(8, 30)}\n{question}", 5, 6)
    too_long = tool_trace("too-long", prose(9, 3000), 3, 4)
    return [*rows, bad, dup, near, planted, too_long]


def planted_docs() -> list[dict]:
    docs = [{"id": f"doc{i}", "text": prose(500 + i, 200)} for i in range(60)]
    docs += [
        {"id": "short-doc", "text": "Too short to teach anything."},
        {"id": "repeat-doc", "text": "buy cheap watches online now\n" * 30 + prose(9, 40)},
        {"id": "symbol-doc", "text": "{}[]()<>=+-*/%&|^~!@#$ " * 40 + "words"},
        {"id": "digit-doc", "text": "3.14159 2.71828 1.41421 " * 40 + "pi"},
        {"id": "dup-doc", "text": docs[0]["text"].upper().replace("\n", "\n\n")},
        {"id": "near-doc", "text": docs[1]["text"] + " And one more word."},
    ]
    return docs


def _trace(i: int, cluster: str, text: str) -> Trace:
    return Trace(
        id=f"{cluster}-{i}",
        source="unit",
        kind="tool",
        cluster=cluster,
        tools=TOOL,
        messages=[{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}],
    )


def write_shards(data_dir: Path, n: int = 120, with_reflect: bool = False) -> None:
    """Shards in the data-stage contract layout (only the columns the router reads need real values).

    `with_reflect`: every third row is a `reflect` (recovery) trace whose request is drawn from the same
    single-call templates as `tool`, as in the generator, where the error only shows after the request.
    """
    rng = random.Random(0)
    data_dir.mkdir(parents=True)
    rows = []
    for i in range(n):
        cluster, templates = ("tool", SINGLE) if i % 2 else ("plan", MULTI)
        if with_reflect and i % 3 == 0:
            cluster, templates = "reflect", SINGLE
        trace = _trace(i, cluster, rng.choice(templates).format(n=rng.randint(1, 999)))
        rows.append(
            {
                "id": trace.id,
                "source": "unit",
                "category": "tool",
                "kind": "tool",
                "cluster": cluster,
                "pattern": "single",
                "difficulty": 1,
                "epoch": 0,
                "n_tokens": 1,
                "n_loss_tokens": 1,
                "input_ids": [1],
                "assistant_masks": [1],
                "trace": trace.to_json(),
            }
        )
    rows.append({**rows[0], "epoch": 1})  # an upsampled repeat must not be counted twice
    pq.write_table(pa.Table.from_pylist(rows[: n - 10]), data_dir / "train-00000.parquet")
    pq.write_table(pa.Table.from_pylist(rows[n - 10 :]), data_dir / "validation-00000.parquet")


def make_adapter(base_dir: Path, out: Path, seed: int, scale: float = 20.0) -> None:
    """A random LoRA adapter (`scale` 0: all zeros, the base's own outputs), saved with the tokenizer like the
    SFT stage does."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.mul_(scale)  # make each adapter change greedy outputs visibly
    peft_model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)


def two_cluster_config(run_dir: Path, model: Path, router: RouterSection, **sections: Any) -> RunConfig:
    """A run with `tool` + `plan` SFT adapters and a router, plus whatever stage sections a test adds."""
    return RunConfig(
        name=run_dir.name,
        output_dir=str(run_dir.parent),
        model={"name_or_path": str(model)},
        data={"recipe": "data_recipes/agentic-v1.yaml"},
        sft=SFTSection(clusters=["tool", "plan"]),
        router=router,
        **sections,
    )


class CrashAt(TrainerCallback):
    """Simulates a killed run: raise right after the checkpoint of `step` is written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"simulated kill at step {self.step}")


# -- artifacts of a finished run, shaped exactly as the stages write them ------------------------------------
def share(tokens: int, value: float, target: float | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"tokens": tokens, "share": value}
    if target is not None:
        entry |= {"target_tokens": tokens, "target_share": target}
    return entry


def source(name: str, type_: str, revision: dict[str, Any], tokens_out: int, **fields: Any) -> dict[str, Any]:
    record = {
        "name": name,
        "type": type_,
        "category": "tool",
        "revision": revision,
        "rows_in": 3,
        "rows_clean": 3,
        "rows_out": 3,
        "unique_rows_out": 3,
        "eval_rows": 0,
        "tokens_in": tokens_out,
        "tokens_out": tokens_out,
        "target_tokens": tokens_out,
        "max_epochs": 4.0,
        "epochs_touched": 1,
        "epochs_used": 1.0,
        "rejects": {},
        "rejects_total": 0,
    }
    return record | fields


def manifest(
    sources: list[dict[str, Any]],
    categories: dict[str, dict[str, Any]],
    total_tokens: int,
    by_reason: dict[str, int] | None = None,
    recipe_name: str = "agentic-v1",
) -> dict[str, Any]:
    """A `midtrain data build` manifest.json with every section its readers check."""
    by_reason = by_reason or {}
    split = {"rows": 3, "unique_ids": 3, "tokens": total_tokens, "loss_tokens": total_tokens}
    return {
        "format": FORMAT,
        "recipe": {"name": recipe_name},
        "recipe_sha256": "0" * 64,
        "build": {
            "tokenizer": "embedded:smollm2-135m-instruct",
            "tokenizer_revision": None,
            "chat_template": "auto",
            "thought_schema": "think-plan-reflect",
        },
        "sources": sources,
        "mix": {
            "total_tokens_target": total_tokens,
            "total_tokens": total_tokens,
            "rebalanced": False,
            "notes": [],
            "categories": categories,
            "sources": {s["name"]: share(s["tokens_out"], 1.0) for s in sources},
            "clusters": {"tool": share(total_tokens, 1.0)},
        },
        "splits": {
            "train": split,
            "validation": split | {"rows": 0, "unique_ids": 0, "tokens": 0, "loss_tokens": 0},
        },
        "rejects": {"total": sum(by_reason.values()), "by_reason": by_reason},
        "files": {},
    }


# -- policies for the live loop (pipelines.episodes) ----------------------------------------------------------
class ScriptedPolicy:
    """A stand-in policy (a `GenerateFn`) that plays the reference solution of whichever task its prompt holds."""

    def __init__(self, tokenizer: Any, items: list[Any]) -> None:
        self.tokenizer = tokenizer
        self.items = items

    def _reply(self, prompt: str) -> str:
        item = next(i for i in self.items if i.task.request in prompt)
        turns = item.task.solution
        done = prompt.count("<tool_response>")  # calls answered so far
        calls_before = [sum(len(t) for t in turns[:k]) for k in range(len(turns) + 1)]
        if done in calls_before[:-1]:
            turn = turns[calls_before.index(done)]
            blocks = [json.dumps({"name": s.tool, "arguments": s.arguments}) for s in turn]
            return "".join(f"<tool_call>\n{b}\n</tool_call>\n" for b in blocks).strip() + "<|im_end|>"
        return f"<think><verify>done</verify></think>\n{item.task.final_template.format(answer=item.task.answer)}<|im_end|>"

    def __call__(
        self, prompts: list[list[int]], adapters: list, max_new_tokens: int, shared_prefixes: Any = None
    ) -> list[list[int]]:
        """A `GenerateFn`: each prompt's scripted reply, cut at the token budget (`shared_prefixes`, the rollout
        loop's KV hint, changes nothing here)."""
        replies = [self._reply(self.tokenizer.decode(ids)) for ids in prompts]
        return [self.tokenizer(r, add_special_tokens=False)["input_ids"][:max_new_tokens] for r in replies]


# -- SFT mixes (the data-stage contract layout) and configs -------------------------------------------------
CITIES = ["Paris", "Lima", "Oslo", "Cairo", "Quito", "Hanoi", "Perth", "Dakar"]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name."}},
            "required": ["city"],
        },
    },
}


def _tool_trace(i: int, cluster: str) -> Trace:
    """A weather lookup; the thinking section matches the cluster so clusters differ in what they teach."""
    city = CITIES[i % len(CITIES)]
    section = {"plan": "plan", "reflect": "reflect"}.get(cluster, "observe")
    return Trace.model_validate(
        {
            "id": f"{cluster}-{i}",
            "source": "handwritten",
            "kind": "tool",
            "cluster": cluster,
            "tools": [WEATHER_TOOL],
            "messages": [
                {"role": "user", "content": f"Is it warm in {city} today? Case {i}."},
                {
                    "role": "assistant",
                    "thinking": [{"section": section, "text": f"Look up {city} first, then answer."}],
                    "tool_calls": [{"id": f"c{i}", "name": "get_weather", "arguments": {"city": city}}],
                },
                {"role": "tool", "tool_call_id": f"c{i}", "content": f'{{"temp_c": {10 + 3 * i}}}'},
                {"role": "assistant", "content": f"{city} is at {10 + 3 * i} degrees C" + "." * (i % 5)},
            ],
            "meta": {"pattern": "single", "difficulty": 1},
        }
    )


def _chat_trace(i: int, cluster: str) -> Trace:
    """A tool-less exchange (a clarification): a trace row of ~70 tokens instead of ~300 with a tool schema."""
    return Trace.model_validate(
        {
            "id": f"{cluster}-chat-{i}",
            "source": "handwritten",
            "kind": "tool",
            "cluster": cluster,
            "messages": [
                {"role": "user", "content": f"Book a table for {i + 2}."},
                {
                    "role": "assistant",
                    "thinking": [{"section": "plan", "text": "The restaurant and time are missing; ask."}],
                    "content": "Which restaurant, and at what time?",
                },
            ],
            "meta": {"pattern": "clarify", "difficulty": 0},
        }
    )


def _doc_trace(i: int, n_words: int | None = None, cluster: str = "text") -> Trace:
    words = " ".join(f"word{j}" for j in range(n_words or 5 + 7 * i))
    return Trace(
        id=f"{cluster}-{i}", source="handwritten", kind="text", cluster=cluster, text=f"Doc {i}: {words}."
    )


def mix_traces(per_cluster: int = 4, clusters: tuple[str, ...] = ("plan", "tool", "reflect")) -> list[Trace]:
    traces = [_tool_trace(i, c) for c in clusters for i in range(per_cluster)]
    return traces + [_doc_trace(i) for i in range(per_cluster)]


def note_traces(n: int = 8) -> list[Trace]:
    """Short docs of 36-57 tokens: at max_length 64 no two share a packed row, so each is one row."""
    return [_doc_trace(i, 12 + i, cluster="notes") for i in range(n)]


def _rows(traces: list[Trace], tokenizer: Any) -> dict[str, list]:
    schema = load_thought_schema("think-plan-reflect")
    cols: dict[str, list] = {k: [] for k in ("id", "source", "category", "kind", "cluster", "pattern")}
    cols |= {k: [] for k in ("difficulty", "epoch", "n_tokens", "n_loss_tokens", "input_ids")}
    cols |= {"assistant_masks": [], "trace": []}
    for trace in traces:
        rendered = render_trace(trace, tokenizer, schema)
        values = {
            "id": trace.id,
            "source": trace.source,
            "category": trace.kind,
            "kind": trace.kind,
            "cluster": trace.cluster,
            "pattern": trace.meta.get("pattern", ""),
            "difficulty": trace.meta.get("difficulty", 0),
            "epoch": 0,
            "n_tokens": len(rendered.input_ids),
            "n_loss_tokens": rendered.n_loss_tokens,
            "input_ids": rendered.input_ids,
            "assistant_masks": rendered.assistant_masks,
            "trace": trace.to_json(),
        }
        for key, value in values.items():
            cols[key].append(value)
    return cols


MIX_SCHEMA = pa.schema(
    [
        *[(k, pa.string()) for k in ("id", "source", "category", "kind", "cluster", "pattern")],
        *[(k, pa.int32()) for k in ("difficulty", "epoch", "n_tokens", "n_loss_tokens")],
        ("input_ids", pa.list_(pa.int32())),
        ("assistant_masks", pa.list_(pa.int8())),
        ("trace", pa.string()),
    ]
)


def write_mix(data_dir: Path, tokenizer: Any, train: list[Trace], held_out: list[Trace] = ()) -> Path:
    """A mix in the data-stage layout: train-00000/00001 shards, validation-00000, manifest.json."""
    data_dir.mkdir(parents=True, exist_ok=True)
    half = (len(train) + 1) // 2
    shards = {"train-00000": train[:half], "train-00001": train[half:], "validation-00000": list(held_out)}
    for name, traces in shards.items():
        if traces:
            pq.write_table(
                pa.table(_rows(traces, tokenizer), schema=MIX_SCHEMA), data_dir / f"{name}.parquet"
            )
    # The format the rows were rendered in, as the data stage records it (the SFT stage checks it).
    rendered = {"tool_format": codec_for(tokenizer).name}
    manifest = {"recipe": {"name": "test"}, "shards": list(shards), "tokenizer": rendered}
    (data_dir / "manifest.json").write_text(json.dumps(manifest))
    return data_dir


RECIPE = Recipe.model_validate(
    {
        "name": "t",
        "total_tokens": 1000,
        "categories": {"text": {"share": 1.0, "sources": [{"name": "p", "type": "pydoc_text"}]}},
    }
)


def sft_config(tmp_path: Path, model_dir: Path, **sft: Any) -> RunConfig:
    """A run config on `model_dir`, no wandb; `sft` keys override the section (nested dicts merge)."""
    section: dict[str, Any] = {
        "clusters": ["plan", "tool"],
        "replay_fraction": 0.2,
        "quantization": {"mode": "none"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
        "train": {
            "max_steps": 4,
            "per_device_train_batch_size": 1,
            "learning_rate": 1e-3,
            "max_length": 320,
            "save_steps": 2,
            "gradient_checkpointing": False,
        },
    }
    for key, value in sft.items():
        section[key] = {**section.get(key, {}), **value} if isinstance(value, dict) else value
    return RunConfig.model_validate(
        {
            "name": "t",
            "output_dir": str(tmp_path / "runs"),
            "model": {"name_or_path": str(model_dir)},
            "data": {"recipe": RECIPE},
            "sft": section,
            "tracking": {"report_to": ["none"]},
        }
    )


def rl_config(tmp_path: Path, model_dir: Path, **rl: Any) -> RunConfig:
    section = {
        "clusters": ["tool"],
        "domains": ["all"],
        "n_tasks": 4,
        "eval_tasks_per_domain": 1,
        "num_generations": 2,
        "max_completion_length": 16,
        "max_tool_calling_iterations": 2,
        "irrelevance_fraction": 0.5,
        "quantization": {"mode": "none"},
        "train": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3,
                  "gradient_checkpointing": False},
    }  # fmt: skip
    section.update(rl)
    return RunConfig.model_validate(
        {
            "name": "rltest",
            "output_dir": str(tmp_path / "runs"),
            "model": {"name_or_path": str(model_dir)},
            "data": {"recipe": "data_recipes/agentic-v1.yaml"},
            "rl": section,
            "tracking": {"report_to": ["none"]},
        }
    )


def tiny_model(tok: Any, out: Path) -> Path:
    """A 2-layer random Llama-shaped model over `tok` (a family tokenizer: its vocabulary, special tokens and
    template), saved with the tokenizer: a model folder any stage can load."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(
        out, safe_serialization=True
    )
    tok.save_pretrained(out)
    return out


# -- the tiny `midtrain run` of the e2e tests ------------------------------------------------------------------
E2E_CLUSTER_BY_PATTERN = {
    "single": "tool",
    "parallel": "tool",
    "instanced": "tool",
    "sequential": "plan",
    "clarify": "plan",
    "irrelevance": "plan",
    "recovery": "tool",
    "code": "tool",
}

# Every stage at its smallest: 1 SFT step per cluster, 1 GRPO step, 1 BFCL question and 1 held-out task.
E2E_RUN: dict[str, Any] = {
    "sft": {
        "clusters": ["tool", "plan"],
        "replay_fraction": 0.0,
        "quantization": {"mode": "none"},
        "lora": {"r": 4, "alpha": 8},
        "train": {
            "max_steps": 1,
            "per_device_train_batch_size": 1,
            "max_length": 2048,
            "save_steps": 100,
            "gradient_checkpointing": False,
        },
    },
    "rl": {
        "clusters": ["tool"],
        "domains": ["calculator"],
        "offered_tools": "task",
        "distractor_tools": 1,
        "n_tasks": 2,
        "max_difficulty": 1,
        "max_tool_calling_iterations": 1,
        "eval_tasks_per_domain": 1,
        "num_generations": 2,
        "max_completion_length": 16,
        "quantization": {"mode": "none"},
        "train": {"max_steps": 1, "per_device_train_batch_size": 2, "gradient_checkpointing": False},
    },
    "router": {"method": "tfidf", "threshold": 0.3, "generated_requests": 20},
    "eval": {
        "limit": 1,
        "bfcl_categories": ["simple_python"],
        "heldout_domains": ["calculator"],
        "max_new_tokens": 8,
        "rollout_tokens": 16,
        "max_tool_rounds": 1,
    },
    "publish": {"enabled": False},
    "tracking": {"report_to": ["none"]},
}


def e2e_recipe(name: str, total_tokens: int, generated: int, text_share: float = 0.0) -> dict[str, Any]:
    """Generated calculator traces, plus stdlib pydoc text when `text_share` is set."""
    categories: dict[str, Any] = {
        "tool": {
            "share": round(1.0 - text_share, 6),
            "sources": [
                {
                    "name": "gen",
                    "type": "generated",
                    "domains": ["calculator"],
                    "n": generated,
                    "seed": 0,
                    "cluster_by_pattern": E2E_CLUSTER_BY_PATTERN,
                }
            ],
        }
    }
    if text_share:
        pydoc = {"name": "pydoc", "type": "pydoc_text", "cluster": "text", "max_chunk_chars": 3000}
        categories["text"] = {"share": text_share, "sources": [pydoc]}
    return {
        "name": name,
        "seed": 0,
        "total_tokens": total_tokens,
        "eval_fraction": 0.1,
        "max_seq_len": 2048,
        "categories": categories,
        "decontamination": {"sets": []},
    }


def _merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        out[key] = (
            _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def write_e2e_run(
    folder: Path, model: Path, name: str, recipe: dict[str, Any], **changes: dict[str, Any]
) -> Path:
    """`recipe.yaml` and `run.yaml` written into `folder` as a user writes them; `changes` are merged key by key
    into `E2E_RUN`'s sections. Returns the run config's path, for `midtrain run`."""
    import yaml

    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    config = {
        "name": name,
        "output_dir": str(folder / "runs"),
        "model": {"name_or_path": str(model)},
        "data": {"recipe": str(folder / "recipe.yaml")},
        **_merged(E2E_RUN, changes),
    }
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def sigint_as_from_a_terminal() -> None:
    """`preexec_fn` for a child the test interrupts with SIGINT: SIGINT at its default action, as a terminal starts
    a command. A suite started as a background job (`cmd &` in a script, nohup) runs with SIGINT ignored, children
    inherit that, and Python installs no KeyboardInterrupt handler then: the Ctrl-C under test would never land."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
