"""Builders shared by several test modules (test modules never import each other)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import TrainerCallback

from pipelines.data.manifest import FORMAT
from pipelines.run_config import RouterSection, RunConfig, SFTSection
from pipelines.schema import Trace

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


def make_adapter(base_dir: Path, out: Path, seed: int) -> None:
    """A random (non-zero) LoRA adapter, saved with the tokenizer like the SFT stage does."""
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
                param.mul_(20.0)  # make each adapter change greedy outputs visibly
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
