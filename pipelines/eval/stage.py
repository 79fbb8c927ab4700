"""Eval stage (`midtrain eval CONFIG`): base, SFT, RL and routed targets on BFCL and held-out live tasks.

Writes `runs/<name>/eval/`: `results.json` (publish and the report read it), `results.md` (targets × metrics),
`results.png` (grouped bars) and `predictions.jsonl` (every example's raw output, calls, verdict and error).

Decisions:
- One base model in memory for every target. Adapters are attached with PEFT on first use and chosen per row
  with `adapter_names` (`__base__` = no adapter), so a routed batch can mix adapters in one forward pass. When
  the routed target runs, the model comes from `serve.Router` (base + the bundle's adapters preloaded) and the
  SFT/RL adapters are added to it, so the base weights are loaded once. Arrow bundles mix adapters inside the
  model, so they keep their own model.
- Generation goes through one function, `GenerateFn` (prompt ids + adapter per row → new ids). The real one
  (`Engine`) decodes greedily in left-padded batches, drops each row at its end-of-turn token instead of
  carrying it to the batch's longest reply (`greedy_decode`), and prefills the system turn that a domain's
  held-out prompts share (every tool schema: most of their tokens) once per adapter. `eval.backend: vllm`
  swaps in vLLM's offline engine (`pipelines/vllm_engine.py`, every adapter a LoRA request) behind the same
  function, for models too large for HF decoding. Tests inject a stub here, so the scoring path runs
  deterministically without a model.
- Held-out tasks are the RL stage's (`pipelines.tasks.sampling.heldout_tasks`: same seed, same decontaminated
  pool), run live by the episode loop (`pipelines.episodes`) and scored on the tasks that need calls; irrelevance
  tasks (another domain's request asked where no tool fits) come from a derived seed and are scored apart, as
  is the recovery rate.
- Each target's prompts use the tokenizer saved with its adapter (the chat template it was trained with).
- Adapters (QLoRA-trained too) run on the unquantized base, as `serve.Router` and vLLM serve them.
- BFCL `overall` is the unweighted mean over categories, as BFCL summarises its subcategories.
- A target whose outputs do not exist is skipped with the reason; only "nothing can run" is an error.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.artifacts import EvalResults
from pipelines.chat import load_tokenizer, render_prompt
from pipelines.codecs import Codec, codec_for
from pipelines.envs.base import ToolEnv
from pipelines.envs.code_runner import admit_model_code_for
from pipelines.episodes import (
    Episode,
    budget_warnings,
    episode_outcomes,
    heldout_metrics,
    heldout_prediction,
    paired_interval,
    policies,
    run_episodes,
    trained_lengths,
)
from pipelines.errors import BadInput
from pipelines.eval import published
from pipelines.eval.bfcl import (
    BfclExample,
    decode_tool_calls,
    example_to_trace,
    load_category,
    score_example,
)
from pipelines.eval.results import plot_results, results_table, wilson_interval
from pipelines.inference import ARROW, Engine, GenerateFn, decode_reply
from pipelines.progress import Update, progress_bar
from pipelines.router import adapter_source, load_bundle, request_text
from pipelines.run_config import CHECKPOINT_TARGET, EvalSection, HeldoutSampling, RunConfig
from pipelines.schema import Message, Trace
from pipelines.tasks.sampling import (
    DomainTask,
    fixed_method_domains,
    heldout_irrelevance_tasks,
    heldout_spec,
    heldout_tasks,
)
from pipelines.thought import ThoughtSchema, load_thought_schema

log = logging.getLogger("midtrain.eval")

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
DEFAULT_TASKS_PER_DOMAIN = 20  # held-out tasks per domain when eval.heldout_limit and eval.limit are None


# -- targets -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    key: str  # "base", "sft/tool", "rl/tool", "routed": the keys of results.json
    adapter: str | None = None  # adapter folder (absolute) for sft/rl targets
    router_dir: Path | None = None  # the bundle, for the routed target


def discover_targets(config: RunConfig, kinds: Sequence[str]) -> tuple[list[Target], dict[str, str]]:
    """The targets of `kinds` whose outputs exist, and a reason for each one that does not."""
    targets: list[Target] = []
    skipped: dict[str, str] = {}
    for kind in dict.fromkeys(kinds):
        if kind == "base":
            targets.append(Target("base"))
        elif kind == "routed":
            found, reason = _routed_target(config.run_dir / "router")
            targets += [found] if found else []
            skipped |= {"routed": reason} if reason else {}
        elif CHECKPOINT_TARGET.fullmatch(kind):  # `sft/tool/checkpoint-40`: one point of a training curve
            problem = adapter_problem(config.run_dir / kind)
            targets += [Target(kind, str((config.run_dir / kind).resolve()))] if not problem else []
            skipped |= {kind: problem} if problem else {}
        else:
            group, _, name = kind.partition("/")
            adapters, reasons = _adapter_targets(config.run_dir / group, group)
            if name:  # one adapter by name: `sft/tool`
                adapters = [t for t in adapters if t.key == kind]
                reasons = {k: v for k, v in reasons.items() if k == kind}
                if not adapters and not reasons:
                    reasons = {
                        kind: f"{config.run_dir / kind} does not exist (run `midtrain {group} CONFIG`)"
                    }
            targets += [t for t in adapters if t not in targets]
            skipped |= reasons
    return targets, skipped


def outside_targets(config: RunConfig, refs: Sequence[str]) -> list[Target]:
    """`eval.adapters`: each fetched (a Hub repo) or taken as it is (a folder), and refused before any model
    loads when it is not an adapter or was trained on another base."""
    from pipelines.models import EMBEDDED_PREFIX
    from pipelines.publish import public_base_model

    model = config.model.name_or_path
    accepted = {model, model.removeprefix(EMBEDDED_PREFIX), public_base_model(config)}
    targets = []
    for ref in refs:
        folder = published.adapter_folder(ref)
        problem = adapter_problem(folder) or published.base_model_problem(folder, accepted)
        if problem:
            raise BadInput(f"eval.adapters: {ref}: {problem}")
        targets.append(Target(published.target_key(ref), str(folder)))
    return targets


def _adapter_targets(folder: Path, kind: str) -> tuple[list[Target], dict[str, str]]:
    if not folder.is_dir():
        return [], {kind: f"{folder} does not exist (run `midtrain {kind} CONFIG` first)"}
    targets, skipped = [], {}
    for adapter_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        missing = adapter_problem(adapter_dir)
        if missing:
            skipped[f"{kind}/{adapter_dir.name}"] = missing
        else:
            targets.append(Target(f"{kind}/{adapter_dir.name}", str(adapter_dir.resolve())))
    if not targets and not skipped:
        skipped[kind] = f"{folder} holds no adapter folders"
    return targets, skipped


def adapter_problem(adapter_dir: Path) -> str:
    """Why a folder is not a usable PEFT adapter ("" when it is)."""
    missing = [] if (adapter_dir / "adapter_config.json").is_file() else ["adapter_config.json"]
    if not any((adapter_dir / name).is_file() for name in ADAPTER_WEIGHTS):
        missing.append(" or ".join(ADAPTER_WEIGHTS))
    return f"{adapter_dir} is missing {', '.join(missing)} (training unfinished?)" if missing else ""


def _routed_target(router_dir: Path) -> tuple[Target | None, str]:
    if not (router_dir / "router.json").is_file():
        return None, f"{router_dir}/router.json does not exist (run `midtrain router train CONFIG` first)"
    try:
        _, meta = load_bundle(router_dir)
        for ref in meta.adapters.values():
            adapter_source(router_dir, ref)
    except BadInput as exc:
        return None, str(exc)
    return Target("routed", router_dir=router_dir), ""


class RouteTable:
    """Request text → adapter folder, from a router bundle (routing needs no language model)."""

    def __init__(self, router_dir: Path) -> None:
        self.router, meta = load_bundle(router_dir)
        self.arrow = meta.method == "arrow"
        self.sources = {name: adapter_source(router_dir, ref) for name, ref in meta.adapters.items()}

    def adapters(self, texts: list[str]) -> list[str | None]:
        if self.arrow:
            return [ARROW] * len(texts)
        return [self.sources.get(r.adapter) for r in self.router.route(texts)] if texts else []

    def tokenizer_source(self) -> str | None:
        """The first adapter's tokenizer, as `serve.Router` uses."""
        first = next(iter(self.sources.values()), None)
        return first if first and (Path(first) / "tokenizer_config.json").is_file() else None


# -- generation --------------------------------------------------------------------------------------------------
def _torch_dtype(name: str, device: str) -> Any:
    import torch

    if name == "auto":  # bf16 where the GPU has it; CPU generation is fastest (and exact) in float32
        return torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def _load_base(config: RunConfig, dtype: Any) -> Any:
    from transformers import AutoModelForCausalLM

    from pipelines.models import resolve_model

    ref = resolve_model(config.model.name_or_path, config.model.revision)
    return AutoModelForCausalLM.from_pretrained(ref, revision=config.model.revision, dtype=dtype)


def _serve_router(router_dir: Path, thought_schema: str) -> Any:
    from pipelines.serve import Router

    return Router(router_dir, thought_schema)


def generate_texts(
    generate: GenerateFn,
    tokenizer: Any,
    prompts: list[str],
    adapters: list[str | None],
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Replies in input order; prompts are batched by length so padding (and wasted compute) stays small."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    replies: list[str] = [""] * len(ids)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        outputs = generate([ids[i] for i in chunk], [adapters[i] for i in chunk], max_new_tokens)
        for i, new_ids in zip(chunk, outputs, strict=True):
            replies[i] = decode_reply(tokenizer, new_ids)
    return replies


# -- BFCL --------------------------------------------------------------------------------------------------------
def load_bfcl(section: EvalSection) -> list[BfclExample]:
    return [ex for category in section.bfcl_categories for ex in load_category(category, section.limit)]


def eval_bfcl(
    target: Target,
    examples: list[BfclExample],
    tokenizer: Any,
    schema: ThoughtSchema,
    generate: GenerateFn,
    adapters: list[str | None],
    section: EvalSection,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Per-category accuracy + overall for one target, and one prediction row per example."""
    prompts = [render_prompt(example_to_trace(ex), tokenizer, schema) for ex in examples]
    replies = generate_texts(
        generate, tokenizer, prompts, adapters, section.max_new_tokens, section.batch_size
    )
    codec = codec_for(tokenizer)
    rows = [
        bfcl_prediction(target.key, ex, reply, schema, codec)
        for ex, reply in zip(examples, replies, strict=True)
    ]
    return bfcl_metrics(examples, [row["ok"] for row in rows]), rows


def bfcl_prediction(
    target: str, example: BfclExample, reply: str, schema: ThoughtSchema, codec: Codec
) -> dict[str, Any]:
    parsed = codec.parse(reply, schema)
    decoded = decode_tool_calls(parsed.tool_calls, example.functions)
    ok, error = score_example(example, decoded)
    if not ok and parsed.errors:
        error = f"{error} (unparsed: {'; '.join(parsed.errors)})"
    return {
        "target": target,
        "suite": "bfcl",
        "category": example.category,
        "id": example.id,
        "raw": reply,
        "calls": decoded,
        "ok": ok,
        "error": error,
    }


def bfcl_metrics(examples: list[BfclExample], correct: list[bool]) -> dict[str, Any]:
    by_category: dict[str, list[bool]] = {}
    for example, ok in zip(examples, correct, strict=True):
        by_category.setdefault(example.category, []).append(ok)
    metrics: dict[str, Any] = {c: round(sum(v) / len(v), 6) for c, v in by_category.items()}
    metrics["overall"] = round(sum(metrics.values()) / len(metrics), 6) if metrics else None
    metrics["n"] = len(examples)
    metrics["ci95"] = {c: wilson_interval(v) for c, v in by_category.items()}
    return metrics


# -- held-out tasks ----------------------------------------------------------------------------------------------
@dataclass
class HeldoutSuite:
    """What the held-out suite runs: its tasks, the environment class of each task's `env_key`, or why none."""

    items: list[DomainTask]
    env_classes: dict[str, type]
    skipped: str = ""  # why there are no tasks, when there are none
    warning: str = ""  # tasks the SFT mix was never decontaminated against (HeldOut.contamination_warning)


def heldout_seed(config: RunConfig, section: EvalSection) -> int | None:
    """eval.heldout_seed, else rl.eval_seed: by default exactly the RL stage's held-out tasks, so its
    before/after numbers and these agree."""
    if section.heldout_seed is not None:
        return section.heldout_seed
    return config.rl.eval_seed if config.rl is not None else None


def load_heldout(config: RunConfig, section: EvalSection) -> HeldoutSuite:
    """The RL stage's held-out tasks per domain, plus irrelevance tasks from a derived seed; or, with
    `eval.tasks`, the task file's held-out rows."""
    if section.tasks is not None:
        return task_file_heldout(section)
    if not section.heldout_domains:
        return HeldoutSuite([], {}, "eval.heldout_domains is empty")
    domains = _domains(section.heldout_domains)
    if not domains:
        return HeldoutSuite([], {}, "no registered environment domain has fixed tool methods")
    per_domain = section.heldout_count or DEFAULT_TASKS_PER_DOMAIN
    seed, decontaminated_n = heldout_spec(
        config.data.recipe, heldout_seed(config, section), config.run_dir / "data"
    )
    held_out = heldout_tasks(domains, per_domain, seed, section.heldout_max_difficulty, decontaminated_n)
    warning = held_out.contamination_warning() or ""
    n_irrelevant = math.ceil(per_domain * section.heldout_irrelevance_fraction)
    irrelevant = heldout_irrelevance_tasks(domains, n_irrelevant, seed, section.heldout_max_difficulty)
    items, classes = held_out.items + irrelevant, {name: spec[0] for name, spec in domains.items()}
    if section.heldout_offered_tools == "task":
        from pipelines.rl.tool_views import with_tool_views

        items, views = with_tool_views(items, classes, section.heldout_distractor_tools)
        classes = {**classes, **views}
    return HeldoutSuite(items, classes, warning=warning)


def task_file_heldout(section: EvalSection) -> HeldoutSuite:
    """`eval.tasks`: its `heldout` rows (at most `section.heldout_count` per environment), each in its
    environment or the view of the tools it names."""
    from pipelines.envs.base import guarded
    from pipelines.rl.tool_views import with_task_tools
    from pipelines.tasks.task_file import load_task_file

    assert section.tasks is not None
    task_set = load_task_file(section.tasks, section.env)
    counts: Counter[str] = Counter()
    items = []
    limit = section.heldout_count
    for task in task_set.heldout:
        if limit is None or counts[task.domain] < limit:
            counts[task.domain] += 1
            items.append(DomainTask(task.domain, task))
    if not items:
        return HeldoutSuite([], {}, f"eval.tasks {section.tasks}: no `heldout` rows")
    classes = {name: guarded(cls) for name, cls in task_set.envs.items()}  # type: ignore[arg-type]  # classes are hashable: mypy#11470
    items, classes = with_task_tools(items, classes)
    return HeldoutSuite(items, classes)


def _domains(names: list[str]) -> dict[str, tuple[type, Any]]:
    try:
        return fixed_method_domains(names)
    except BadInput as exc:  # its message names rl.domains; here the key is ours
        raise BadInput(str(exc).replace("rl.domains", "eval.heldout_domains")) from None


def heldout_route_text(item: DomainTask, env_class: type[ToolEnv]) -> str:
    """What the router sees for a task: its request and the environment's tool names (as in training)."""
    trace = Trace(
        id=item.task.task_id,
        source="heldout",
        kind="tool",
        cluster="tool",
        tools=env_class._tool_schemas(),
        messages=[Message(role="user", content=item.task.request)],
    )
    return request_text(trace)


def eval_heldout(
    target: Target,
    heldout: HeldoutSuite,
    tokenizer: Any,
    schema: ThoughtSchema,
    generate: GenerateFn,
    adapters: list[str | None],
    section: EvalSection,
    on_done: Update | None = None,
    start: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Live episodes of every task, greedy or `eval.heldout_sampling`'s samples (sample-major), each sample's
    tasks grouped by adapter (`run_episodes` runs one adapter at a time); `on_done(completed=start + episodes
    finished)` as they finish."""
    groups: dict[str | None, list[int]] = {}
    for i, adapter in enumerate(adapters):
        groups.setdefault(adapter, []).append(i)
    decoders = policies(generate, section.heldout_sampling)
    finished: list[Episode] = []
    for policy in decoders:
        episodes: list[Episode | None] = [None] * len(heldout.items)
        finished_before = len(finished)  # episodes of the samples and groups already run
        for adapter, indices in groups.items():
            items = [heldout.items[i] for i in indices]

            def progress(done: int, before: int = finished_before) -> None:
                if on_done is not None:
                    on_done(completed=start + before + done)

            done = run_episodes(
                policy, tokenizer, items, heldout.env_classes, section.max_tool_rounds, section.rollout_tokens,
                section.batch_size, adapter=adapter, max_reply_tokens=section.max_new_tokens,
                on_progress=progress,
            )  # fmt: skip
            finished_before += len(indices)
            for i, episode in zip(indices, done, strict=True):
                episodes[i] = episode
        finished += [ep for ep in episodes if ep is not None]
    codec = codec_for(tokenizer)
    outcomes = episode_outcomes(finished, schema, codec)
    n, samples = len(heldout.items), len(decoders)
    rows = [
        heldout_prediction(target.key, ep, o, schema, codec) | ({"sample": i // n} if samples > 1 else {})
        for i, (ep, o) in enumerate(zip(finished, outcomes, strict=True))
    ]
    return heldout_metrics(finished, outcomes, schema, codec, samples), rows


# -- the stage ---------------------------------------------------------------------------------------------------
class Tokenizers:
    """Each target's tokenizer (its adapter's saved one, else the base's), loaded once per source."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._loaded: dict[str, Any] = {}

    def get(self, source: str | None) -> Any:
        key = source or ""
        if key not in self._loaded:
            model = self.config.model
            self._loaded[key] = (
                load_tokenizer(source)
                if source
                else load_tokenizer(
                    model.name_or_path, model.chat_template, model.revision, model.tool_format
                )
            )
        return self._loaded[key]

    def for_target(self, target: Target, routes: RouteTable | None) -> Any:
        if routes is not None:
            return self.get(routes.tokenizer_source())
        has_own = target.adapter and (Path(target.adapter) / "tokenizer_config.json").is_file()
        return self.get(target.adapter if has_own else None)


def run(config: RunConfig, generate: GenerateFn | None = None) -> EvalResults:
    """Evaluate every target on every suite; write results.json/.md/.png and predictions.jsonl."""
    section = config.eval or EvalSection()
    schema = load_thought_schema(config.model.thought_schema)
    targets, skipped = discover_targets(config, section.targets)
    targets += outside_targets(config, section.adapters)
    if not targets:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise BadInput(f"eval.targets {section.targets}: none can run ({reasons})")
    examples = load_bfcl(section)
    heldout = load_heldout(config, section)
    if heldout.skipped:
        skipped["heldout"] = heldout.skipped
    sandbox = admit_model_code_for(heldout.env_classes, config.sandbox, "eval")
    if not examples and not heldout.items:
        raise BadInput(
            "eval: nothing to evaluate (eval.bfcl_categories and the held-out suite are both empty)"
        )
    warnings = [heldout.warning] if heldout.warning else []
    warnings += [w for t in targets for w in budget_warnings_for(config, section, t, heldout, bool(examples))]
    for warning in warnings:
        log.warning("eval: %s", warning)
    tokenizers = Tokenizers(config)
    routes = {t.key: RouteTable(t.router_dir) for t in targets if t.router_dir is not None}
    if generate is None:
        generate = remembered(
            _generator(config, section, tokenizers.get(None), targets, list(routes.values()))
        )
    results: dict[str, Any] = {"model": config.model.name_or_path, "limit": section.limit, "targets": {}}
    predictions: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    try:
        for target in targets:
            start = time.perf_counter()
            suites, rows = eval_target(
                target, routes.get(target.key), tokenizers, examples, heldout, schema, generate, section
            )
            seconds[target.key] = round(time.perf_counter() - start, 2)
            results["targets"][target.key] = suites
            predictions += rows
            log.info("eval %s: %s in %.1fs", target.key, _headline(suites), seconds[target.key])
    finally:
        closing = getattr(generate, "close", None)  # the vLLM backend's scratch copies of the adapters
        if closing is not None:
            closing()
    results["changes"] = heldout_changes(results["targets"])
    results |= {"skipped": skipped, "seconds": seconds, "backend": section.backend, "warnings": warnings}
    results["published"] = {
        t.key: published.compare_with_card(
            Path(t.adapter), results["targets"][t.key].get("bfcl", {}), section.limit
        )
        for t in targets
        if t.key.startswith(published.KEY_PREFIX) and t.adapter
    }
    results |= {"sandbox": sandbox} if sandbox is not None else {}
    typed = EvalResults.model_validate(results)
    write_outputs(config.run_dir / "eval", typed, predictions)
    from pipelines.envs.external import close_environments

    close_environments()
    return typed


def heldout_changes(targets: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each `rl/<cluster>` target's held-out outcome change over `sft/<cluster>`, the adapter GRPO started from,
    paired per task (the same tasks; with sampling, each task's mean): the mean change and its 95% interval
    (`episodes.paired_interval`), so "RL helped" is read off one interval. Takes each suite's per-task outcomes
    out of the results: they are inputs to this, not metrics."""
    per_task = {
        key: suites.get("heldout", {}).pop("outcome_per_task", None) for key, suites in targets.items()
    }
    changes: dict[str, dict[str, Any]] = {}
    for key, after in per_task.items():
        group, _, name = key.partition("/")
        before = per_task.get(f"sft/{name}")
        interval = paired_interval(before, after) if group == "rl" else None
        if interval is None or not after or not before:
            continue
        mean = sum((a or 0.0) - (b or 0.0) for a, b in zip(after, before, strict=True)) / len(after)
        changes[key] = {
            "from": f"sft/{name}",
            "metric": "heldout/outcome",
            "change": round(mean, 4),
            "ci95": interval,
        }
    return changes


def budget_warnings_for(
    config: RunConfig, section: EvalSection, target: Target, heldout: HeldoutSuite, bfcl: bool
) -> list[str]:
    """`eval.rollout_tokens` and `eval.max_new_tokens` against what the target's SFT adapter was trained to
    write (an RL adapter or a kept checkpoint: the SFT adapter it comes from): a budget shorter than the model's
    own turns scores it as failing where it would have answered. The base, the routed ensemble and adapters from
    elsewhere carry no such lengths and are not checked."""
    group, _, name = target.key.partition("/")
    from_base = group == "rl" and config.rl is not None and config.rl.from_base
    if target.adapter is None or group not in ("sft", "rl") or from_base:
        return []
    lengths = trained_lengths(config.run_dir / "sft" / name.split("/")[0])  # a checkpoint: its adapter's
    # Built-in tasks need at most `heldout_max_difficulty` calls; a task file's rows say nothing of theirs.
    calls = None if section.tasks else section.heldout_max_difficulty
    return budget_warnings(
        lengths, target.key, calls,
        episode_budget=("eval.rollout_tokens", section.rollout_tokens) if heldout.items else None,
        reply_budget=("eval.max_new_tokens", section.max_new_tokens) if heldout.items or bfcl else None,
    )  # fmt: skip


def eval_target(
    target: Target,
    routes: RouteTable | None,
    tokenizers: Tokenizers,
    examples: list[BfclExample],
    heldout: HeldoutSuite,
    schema: ThoughtSchema,
    generate: GenerateFn,
    section: EvalSection,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Both suites for one target; the routed target asks the router which adapter serves each request."""
    tokenizer = tokenizers.for_target(target, routes)
    suites: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    total = len(examples) + len(heldout.items) * section.heldout_sampling.samples
    with progress_bar(f"eval {target.key}", total=total, unit="examples") as update:
        if examples:
            texts = [request_text(example_to_trace(ex)) for ex in examples] if routes else []
            adapters = routes.adapters(texts) if routes else [target.adapter] * len(examples)
            counted = _counting(generate, update)  # BFCL asks one reply per example
            suites["bfcl"], found = eval_bfcl(target, examples, tokenizer, schema, counted, adapters, section)
            rows += found
        if heldout.items:
            texts = (
                [heldout_route_text(it, heldout.env_classes[it.env_key]) for it in heldout.items]
                if routes
                else []
            )
            adapters = routes.adapters(texts) if routes else [target.adapter] * len(heldout.items)
            update(completed=len(examples), note="held-out episodes")
            suites["heldout"], found = eval_heldout(
                target, heldout, tokenizer, schema, generate, adapters, section, update, len(examples)
            )
            rows += found
    return suites, rows


class remembered:
    """A GenerateFn that answers a (prompt, adapter, budget) it has answered before from memory.

    Greedy decoding is a function of those three, and the routed target sends each request to an adapter (or the
    base) that is usually a target of the same run: its replies are the ones that target already got, so the
    routed target costs only its misses instead of a full pass (on the demo run with `sft/plan` and `rl/tool` as
    targets: 154.8 s → 0.1 s, the same scores). A reply computed in another batch can differ from a fresh one
    where padding or the batch's adapter mix moves a near-tie by float rounding; it is still that adapter's
    greedy reply to that prompt. The cache lives for one eval run."""

    def __init__(self, generate: GenerateFn) -> None:
        self.generate = generate
        self.replies: dict[tuple[tuple[int, ...], str | None, int], list[int]] = {}
        self.hits = 0

    @staticmethod
    def _adapter_key(adapter: str | None) -> str | None:
        return str(Path(adapter).resolve()) if adapter and Path(adapter).is_dir() else adapter

    def __call__(
        self, prompts: list[list[int]], adapters: list[str | None], max_new_tokens: int
    ) -> list[list[int]]:
        keys = [
            (tuple(p), self._adapter_key(a), max_new_tokens) for p, a in zip(prompts, adapters, strict=True)
        ]
        missing = [i for i, key in enumerate(keys) if key not in self.replies]
        if missing:
            fresh = self.generate(
                [prompts[i] for i in missing], [adapters[i] for i in missing], max_new_tokens
            )
            self.replies.update({keys[i]: reply for i, reply in zip(missing, fresh, strict=True)})
        self.hits += len(keys) - len(missing)
        return [list(self.replies[key]) for key in keys]

    def sampling(self, temperature: float, seed: int) -> GenerateFn:
        """Sampled replies are not remembered: the engine's draws depend on the calls before them."""
        return policies(self.generate, HeldoutSampling(samples=1, temperature=temperature, seed=seed))[0]

    def close(self) -> None:
        closing = getattr(self.generate, "close", None)
        if closing is not None:
            closing()


def _counting(generate: GenerateFn, update: Update) -> GenerateFn:
    def counted(prompts: list[list[int]], adapters: list[str | None], max_new_tokens: int) -> list[list[int]]:
        replies = generate(prompts, adapters, max_new_tokens)
        update(advance=len(prompts))
        return replies

    return counted


def _generator(
    config: RunConfig, section: EvalSection, tokenizer: Any, targets: list[Target], routes: list[RouteTable]
) -> GenerateFn:
    """The backend's GenerateFn: midtrain's engine, or vLLM's with every adapter a target may use."""
    if section.backend == "hf":
        return _engine(config, tokenizer, targets)
    from pipelines.codecs import codec_for
    from pipelines.models import resolve_model
    from pipelines.vllm_engine import VllmGenerate, require_vllm

    require_vllm("eval.backend")
    if any(r.arrow for r in routes):
        raise BadInput(
            "eval.backend vllm: the router is an Arrow model (per-token mixing of adapters, which only PEFT "
            "does); use eval.backend hf, or a tfidf/embedding router"
        )
    adapters = [t.adapter for t in targets if t.adapter] + [s for r in routes for s in r.sources.values()]
    base = resolve_model(config.model.name_or_path, config.model.revision)
    stops = codec_for(tokenizer).end_of_turn_ids(tokenizer)
    return VllmGenerate(base, adapters, stops, config.model.dtype, section.vllm_engine_args)


def _engine(config: RunConfig, tokenizer: Any, targets: list[Target]) -> Engine:
    """One base model for every target: the routed target's bundle brings it with its adapters preloaded, and
    SFT/RL adapters are attached to it on first use, so the base weights are loaded once."""
    import torch

    start = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = _torch_dtype(config.model.dtype, device)
    router_dir = next((t.router_dir for t in targets if t.router_dir is not None), None)
    router = _serve_router(router_dir, config.model.thought_schema) if router_dir else None
    if router is not None and router.requests.method != "arrow":
        model, adapters, arrow = router.model, {path: name for name, path in router.sources.items()}, None
    else:
        arrow = router.model.to(device, dtype) if router is not None else None
        model, adapters = _load_base(config, dtype), {}
    model.to(device, dtype).eval()
    engine = Engine.for_tokenizer(model, tokenizer, adapters=adapters, arrow_model=arrow)
    log.info("eval: base model loaded in %.1fs on %s", time.perf_counter() - start, device)
    return engine


def _headline(suites: dict[str, Any]) -> str:
    bfcl = suites.get("bfcl", {}).get("overall")
    outcome = suites.get("heldout", {}).get("outcome")
    return f"bfcl overall {bfcl}, held-out outcome {outcome}"


# -- outputs -----------------------------------------------------------------------------------------------------
def write_outputs(out_dir: Path, results: EvalResults, predictions: list[dict[str, Any]]) -> None:
    results.write(out_dir)
    with (out_dir / "predictions.jsonl").open("w", encoding="utf-8") as handle:
        for row in predictions:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    (out_dir / "results.md").write_text(results_table(results))
    plot_results(results, out_dir / "results.png")
