"""Held-out evaluation in live environments: greedy multi-turn rollouts, scored with the RL rewards.

The loop mirrors TRL's tool loop (generate → parse calls → run them in the env → append the results → generate
again, at most `max_iterations` rounds of tools, one token budget for the whole rollout), but greedy and
batched over episodes, so the numbers before and after RL are deterministic and cheap. As in TRL, a rollout's
tokens are built by concatenation (prompt + generated tokens + the template's tool-result suffix), never by
re-rendering the conversation, and each reply is parsed with TRL's own `parse_response` (the codec's response
template): rollouts come out in TRL's message shape, so `pipelines.rl.rewards` scores them exactly as it scores
training rollouts.

Used by the RL stage (`eval_before_after.json`) and reusable by the eval stage: `heldout_tasks` picks the
tasks, `evaluate_policy` runs any causal LM (+ adapter), `evaluate_adapter` loads one from disk first.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pipelines.chat import DEFAULT_SYSTEM_PROMPT, prompt_ids
from pipelines.codecs import Codec, codec_for
from pipelines.envs.base import ToolEnv
from pipelines.errors import BadInput
from pipelines.recipe import Recipe
from pipelines.rl import rewards
from pipelines.tasks.records import Task
from pipelines.thought import ThoughtSchema

log = logging.getLogger("midtrain.rl")
EVAL_FILE = "eval_before_after.json"


# -- environments ----------------------------------------------------------------------------------------------
@cache
def guarded(env_class: type[ToolEnv]) -> type[ToolEnv]:
    """`env_class` with a `reset` and `get_reward` that never raise, for rollouts that must not crash a run.

    TRL calls both unguarded (its tool calls it does guard). A failing reset leaves no task and `_reset_error`
    set, which the `outcome` reward counts as an `env_error` and scores 0. Same class name, so TRL's per-domain
    reward column keeps the domain's name; cached, so one class maps to one subclass.
    """

    def reset(self: ToolEnv, **row: Any) -> str | None:
        self._reset_error = None
        try:
            return env_class.reset(self, **row)
        except Exception as exc:
            self._reset_error = f"{type(exc).__name__}: {exc}"
            self._task = None
            return None

    def get_reward(self: ToolEnv) -> float:
        try:
            return float(env_class.get_reward(self))
        except Exception:
            return 0.0

    namespace = {"reset": reset, "get_reward": get_reward, "__doc__": env_class.__doc__}
    return type(env_class.__name__, (env_class,), {"__module__": env_class.__module__, **namespace})


# -- tasks -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DomainTask:
    """A task and the domain whose environment runs it (an irrelevance task runs in a domain it does not fit)."""

    domain: str
    task: Task
    environment: str = ""  # the `environment_factory` key running it; "" = the domain's full toolset

    @property
    def env_key(self) -> str:
        return self.environment or self.domain


def fixed_method_domains(names: Sequence[str]) -> dict[str, tuple[type[ToolEnv], Any]]:
    """`names` (or `all`) → {domain: (guarded EnvClass, sample_task)}, the domains whose tools are methods.

    TRL's `environment_factory` can only expose methods as tools; the API pool's per-task tools cannot be.
    """
    from pipelines.tasks.domains import DOMAINS

    fixed = {name: (guarded(env), sampler) for name, (env, sampler) in DOMAINS.items() if env._tool_methods()}
    if "all" in names:
        return fixed
    for name in names:
        if name not in DOMAINS:
            raise BadInput(f"rl.domains: unknown domain {name!r}; known: {', '.join(sorted(DOMAINS))}")
        if name not in fixed:
            raise BadInput(
                f"rl.domains: {name!r} has no fixed tool methods (its tools come with each task), so TRL's "
                f"environment_factory cannot expose them; use one of {', '.join(sorted(fixed))}"
            )
    return {name: fixed[name] for name in dict.fromkeys(names)}


def sample_domain_task(domain: str, sampler: Any, rng: random.Random, max_difficulty: int) -> Task:
    """A task needing at most `max_difficulty` calls: difficulties are tried in a random order, because not
    every domain can build every difficulty."""
    difficulties = list(range(1, max_difficulty + 1))
    rng.shuffle(difficulties)
    for difficulty in difficulties:
        try:
            return sampler(rng, difficulty)
        except BadInput:
            continue
    raise BadInput(f"domain {domain!r}: cannot build a task with at most {max_difficulty} calls")


def irrelevant_task(domain: str, foreign: Task, own: Task | None = None) -> Task:
    """Another domain's request, asked where no tool fits: the right move is to say so without calling.

    With `own` (a task of `domain`), the environment starts from that task's setup: a normal, populated state.
    """
    return Task(
        domain=domain,
        task_id=f"{domain}-irrelevant-{foreign.task_id}",
        request=foreign.request,
        setup=own.setup if own is not None else {},
        solution=[],
        answer=None,
        difficulty=0,
    )


def foreign_domains(domain: str, names: Sequence[str]) -> list[str]:
    """Domains whose requests `domain`'s tools certainly cannot serve (the generator's irrelevance table)."""
    from pipelines.tasks.generate import IRRELEVANT_TOOLSETS

    return [other for other in names if other != domain and domain in IRRELEVANT_TOOLSETS.get(other, ())]


def sample_tasks(
    domains: dict[str, tuple[type[ToolEnv], Any]],
    n: int,
    seed: int,
    max_difficulty: int,
    irrelevance_fraction: float = 0.0,
    exclude_ids: set[str] | frozenset[str] = frozenset(),
) -> list[DomainTask]:
    """`n` tasks round-robin over `domains`, deterministic in `seed`; ids in `exclude_ids` are never drawn."""
    rng = random.Random(seed)
    names = sorted(domains)
    out: list[DomainTask] = []
    seen = set(exclude_ids)
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            raise BadInput(f"could only sample {len(out)} of {n} distinct tasks from {names} (seed {seed})")
        domain = names[len(out) % len(names)]
        task = sample_domain_task(domain, domains[domain][1], rng, max_difficulty)
        foreign = foreign_domains(domain, names) if irrelevance_fraction else []
        if foreign and rng.random() < irrelevance_fraction:
            other = rng.choice(foreign)
            foreign_task = sample_domain_task(other, domains[other][1], rng, max_difficulty)
            task = irrelevant_task(domain, foreign_task, own=task)
        if task.task_id in seen:
            continue
        seen.add(task.task_id)
        out.append(DomainTask(domain, task))
    return out


def heldout_spec(recipe: Recipe, seed: int | None) -> tuple[int, int]:
    """(seed, decontaminated pool size) of held-out tasks. The recipe's `decontamination.heldout_seed` is the
    default, and its first `heldout_n` tasks are the ones the SFT mix was decontaminated against; any other seed
    has no decontaminated pool (0), which callers report."""
    own = recipe.decontamination
    if seed is None or seed == own.heldout_seed:
        return own.heldout_seed, own.heldout_n
    return seed, 0


@dataclass
class HeldOut:
    """Held-out tasks, and whether all of them lie inside the set the data stage decontaminated against."""

    items: list[DomainTask]
    seed: int
    pool_size: int  # tasks drawn from the environments' shared sampler to find enough per domain
    decontaminated: bool


def heldout_tasks(
    domains: dict[str, tuple[type[ToolEnv], Any]],
    per_domain: int,
    seed: int,
    max_difficulty: int,
    decontaminated_n: int,
) -> HeldOut:
    """`per_domain` tasks of each domain (at most `max_difficulty` calls) from `pipelines.envs.sample_tasks(["all"],
    n, seed)`: the very call the data stage decontaminates the SFT mix against (`heldout_seed`, `heldout_n`).

    That sampler's task i does not depend on n, so when the first `decontaminated_n` tasks hold too few of a
    domain the pool grows and the first tasks stay the same; `decontaminated` then says so.
    """
    from pipelines.tasks import sample_tasks as sample_shared

    pool_size = max(decontaminated_n, per_domain * len(domains))
    while True:
        chosen: dict[str, list[DomainTask]] = {name: [] for name in domains}
        last_index = -1
        for index, task in enumerate(sample_shared(["all"], pool_size, seed)):
            bucket = chosen.get(task.domain)
            if bucket is not None and len(bucket) < per_domain and task.difficulty <= max_difficulty:
                bucket.append(DomainTask(task.domain, task))
                last_index = index
        if all(len(bucket) == per_domain for bucket in chosen.values()):
            items = [item for name in sorted(chosen) for item in chosen[name]]
            return HeldOut(items, seed, pool_size, decontaminated=last_index < decontaminated_n)
        if pool_size > 64 * max(decontaminated_n, per_domain * len(domains)):
            short = {name: len(b) for name, b in chosen.items() if len(b) < per_domain}
            raise BadInput(f"held-out seed {seed}: too few tasks with <= {max_difficulty} calls for {short}")
        pool_size *= 2


def prompt_messages(task: Task) -> list[dict[str, str]]:
    """The conversation a task starts with (a task file's own messages, after the default system prompt unless
    they bring one); the tools come from the environment, as in TRL."""
    if task.messages:
        opening = [dict(m) for m in task.messages]
        return (
            opening
            if opening[0]["role"] == "system"
            else [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, *opening]
        )
    return [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": task.request}]


# -- the live loop ---------------------------------------------------------------------------------------------
@dataclass
class Episode:
    item: DomainTask
    env: ToolEnv
    tools: list[dict[str, Any]]
    conversation: list[dict[str, Any]]
    completion: list[dict[str, Any]] = field(default_factory=list)
    ids: list[int] = field(
        default_factory=list
    )  # prompt + generated + tool-result tokens, as TRL builds them
    prompt_tokens: int = 0
    used_tokens: int = 0  # generated and tool-result tokens so far (TRL's max_completion_length counts both)
    tool_rounds: int = 0
    truncated: bool = False  # the token budget ran out mid-reply
    done: bool = False


def start_episode(item: DomainTask, env_class: type[ToolEnv]) -> Episode:
    env = env_class()
    env.reset(task=item.task.to_json())
    tools = env._task_tools() if hasattr(env, "_task_tools") else env._tool_schemas()
    return Episode(item, env, tools, prompt_messages(item.task))


def assistant_message(
    tokenizer: Any, reply_ids: list[int], prompt_ids: list[int], tools: Any
) -> dict[str, Any]:
    """Reply tokens → TRL-shaped assistant message, through TRL's own `parse_response` (the function GRPO parses
    rollouts with): calls that parse move to `tool_calls`; a reply whose calls do not all parse stays in
    `content` as text, exactly as TRL leaves it, so the `format` reward sees the same thing in training and here.
    """
    from trl.chat_template_utils import parse_response

    return parse_response(tokenizer, list(reply_ids), prefix=list(prompt_ids), tools=tools)


def _until_end(ids: list[int], end_ids: set[int]) -> tuple[list[int], bool]:
    """The reply up to and including its first end-of-turn token, and whether it had one."""
    for i, token in enumerate(ids):
        if token in end_ids:
            return ids[: i + 1], True
    return ids, False


def run_calls(episode: Episode, calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Execute each call in the episode's env; an env that raises becomes an error observation, never a crash."""
    results = []
    for call in calls:
        name, arguments = call["function"]["name"], call["function"]["arguments"]
        try:
            observation, _ = episode.env._call_tool(name, arguments)
        except Exception as exc:
            observation = f"Error: {type(exc).__name__}: {exc}"
        results.append({"role": "tool", "name": name, "content": observation})
    return results


def _generate(
    model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, end_ids: list[int]
) -> list[list[int]]:
    """Greedy continuation of each prompt (left-padded batch), stopping at an end-of-turn token; new tokens only."""
    import torch

    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    device = next(model.parameters()).device
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=end_ids,
            use_cache=True,
        )
    return [row[width:].tolist() for row in out]


def _step(model: Any, tokenizer: Any, codec: Codec, batch: list[Episode], budget: int, limit: int) -> None:
    """One round for a batch of live episodes: generate, parse, run the calls, append the results."""
    for ep in batch:
        if not ep.ids:
            ep.ids = prompt_ids(tokenizer, ep.conversation, ep.tools or None)
            ep.prompt_tokens = len(ep.ids)
    room = [budget - (len(ep.ids) - ep.prompt_tokens) for ep in batch]
    end_ids = codec.end_of_turn_ids(tokenizer)
    outputs = _generate(model, tokenizer, [ep.ids for ep in batch], max(1, max(room)), end_ids)
    for ep, new_ids, left in zip(batch, outputs, room, strict=True):
        reply, ended = _until_end(new_ids[: max(0, left)], set(end_ids))
        message = assistant_message(tokenizer, reply, ep.ids, ep.tools or None)
        ep.completion.append(message)
        ep.conversation.append(message)
        ep.ids = ep.ids + reply
        calls = message.get("tool_calls") or []
        ep.truncated = not ended
        if not ended or not calls or ep.tool_rounds >= limit:
            ep.done = True  # answered, out of tokens, or out of tool rounds (a runaway: calls left pending)
            continue
        results = run_calls(ep, calls)
        suffix = tokenizer(codec.tool_suffix(tokenizer, results), add_special_tokens=False)["input_ids"]
        if len(ep.ids) + len(suffix) - ep.prompt_tokens > budget:
            ep.done = True  # as TRL: results that would overrun the budget are dropped and the rollout ends
            continue
        ep.completion.extend(results)
        ep.conversation.extend(results)
        ep.ids = ep.ids + suffix
        ep.tool_rounds += 1


def run_episodes(
    model: Any,
    tokenizer: Any,
    items: Sequence[DomainTask],
    env_classes: dict[str, type[ToolEnv]],
    max_iterations: int,
    max_completion_length: int,
    batch_size: int = 8,
) -> list[Episode]:
    """Greedy live rollouts of every task; the model is put in eval mode for the loop and restored after."""
    was_training = getattr(model, "training", False)
    model.eval()
    codec = codec_for(tokenizer)
    episodes = [start_episode(item, env_classes[item.env_key]) for item in items]
    try:
        while live := [ep for ep in episodes if not ep.done]:
            for start in range(0, len(live), batch_size):
                _step(
                    model,
                    tokenizer,
                    codec,
                    live[start : start + batch_size],
                    max_completion_length,
                    max_iterations,
                )
    finally:
        if was_training:
            model.train()
    return episodes


# -- scores ----------------------------------------------------------------------------------------------------
def score_episodes(
    episodes: Sequence[Episode], schema: ThoughtSchema, codec: Codec, tool_call_scale: float = 1.0
) -> dict[str, Any]:
    """Mean outcome reward, format rate, call accuracy (every reference call made exactly, nothing else), each
    reward's mean, outcome per domain, and failure counts."""
    failures = rewards.FailureCounts()
    funcs, _ = rewards.build_reward_funcs(
        dict.fromkeys(rewards.REWARD_NAMES, 1.0), codec, schema, failures, tool_call_scale
    )
    completions = [ep.completion for ep in episodes]
    tasks = [ep.item.task.to_json() for ep in episodes]
    envs = [ep.env for ep in episodes]
    truncated = [ep.truncated for ep in episodes]
    per_reward = {
        rewards.reward_name(f): f(completions=completions, task=tasks, environments=envs, truncated=truncated)
        for f in funcs
    }
    exact = [
        _exact_calls(ep, codec, per_reward["tool_call"][i], tool_call_scale) for i, ep in enumerate(episodes)
    ]
    by_domain: dict[str, list[float]] = {}
    for ep, value in zip(episodes, per_reward["outcome"], strict=True):
        by_domain.setdefault(ep.item.domain, []).append(value or 0.0)
    return {
        "n_tasks": len(episodes),
        "outcome": _mean(per_reward["outcome"]),
        "format_rate": _mean(per_reward["format"]),
        "call_accuracy": _mean(exact),
        "rewards": {name: _mean(values) for name, values in per_reward.items()},
        "outcome_by_domain": {d: _mean(v) for d, v in sorted(by_domain.items())},
        "mean_tool_calls": _mean(
            [float(rewards.parse_rollout(ep.completion, codec).attempted) for ep in episodes]
        ),
        "failures": failures.as_dict(),
    }


def _exact_calls(episode: Episode, codec: Codec, tool_call_value: float | None, scale: float) -> float:
    if tool_call_value is None:  # no reference calls: exact means no call at all
        return 1.0 if rewards.parse_rollout(episode.completion, codec).attempted == 0 else 0.0
    return 1.0 if tool_call_value >= scale - 1e-9 else 0.0


def _mean(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present) / len(present), 6) if present else None


def evaluate_policy(
    model: Any,
    tokenizer: Any,
    items: Sequence[DomainTask],
    env_classes: dict[str, type[ToolEnv]],
    schema: ThoughtSchema,
    max_iterations: int,
    max_completion_length: int,
    tool_call_scale: float = 1.0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Run and score `items` with `model`; also returns each task's id, outcome and rollout for inspection."""
    episodes = run_episodes(
        model, tokenizer, items, env_classes, max_iterations, max_completion_length, batch_size
    )
    metrics = score_episodes(episodes, schema, codec_for(tokenizer), tool_call_scale)
    metrics["episodes"] = [
        {"task_id": ep.item.task.task_id, "domain": ep.item.domain, "completion": ep.completion}
        for ep in episodes
    ]
    return metrics


def before_after(before: dict[str, Any], after: dict[str, Any], held_out: HeldOut) -> dict[str, Any]:
    """The `eval_before_after.json` payload: which tasks, both evaluations (rollouts included), each change."""
    keys = ("outcome", "format_rate", "call_accuracy", "mean_tool_calls")
    delta = {k: _diff(after.get(k), before.get(k)) for k in keys}
    delta["rewards"] = {k: _diff(after["rewards"].get(k), v) for k, v in before["rewards"].items()}
    tasks = {
        "seed": held_out.seed,
        "pool_size": held_out.pool_size,
        "decontaminated": held_out.decontaminated,
        "task_ids": [item.task.task_id for item in held_out.items],
    }
    return {"heldout": tasks, "before": before, "after": after, "delta": delta}


def _diff(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else round(after - before, 6)


def evaluate_adapter(
    model_ref: str,
    adapter_dir: str | Path | None,
    items: Sequence[DomainTask],
    schema: ThoughtSchema,
    max_iterations: int = 4,
    max_completion_length: int = 256,
) -> dict[str, Any]:
    """Load a base model (+ a PEFT adapter folder, whose saved tokenizer is used) and evaluate it on `items`."""
    import torch
    from transformers import AutoModelForCausalLM

    from pipelines.chat import load_tokenizer
    from pipelines.models import fetch_model
    from pipelines.tasks.domains import DOMAINS

    path = fetch_model(model_ref)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = load_tokenizer(str(adapter_dir or path))
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    env_classes = {item.domain: guarded(DOMAINS[item.domain][0]) for item in items}
    return evaluate_policy(
        model, tokenizer, items, env_classes, schema, max_iterations, max_completion_length
    )
